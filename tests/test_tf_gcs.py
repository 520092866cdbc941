"""``trainer.data`` reads ``gs://`` shards with TensorFlow's own GCS file system, and falls back to
the fsspec generator where TensorFlow cannot reach the store (an emulator endpoint).

TensorFlow's GCS client always talks to www.googleapis.com / storage.googleapis.com, so the
native test points it (``https_proxy``, ``CURL_CA_BUNDLE``, a test token) at an intercepting
proxy (``tests.tls_proxy``) that relays to a fake-gcs-server answering as storage.googleapis.com.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.trainer_fixtures import make_tiny_dataset

GOOGLE_HOSTS = ["www.googleapis.com", "storage.googleapis.com"]

READ = """
import json, sys
import numpy as np
from bigearthnet_beam.trainer import data
urls, out = json.loads(sys.argv[1]), sys.argv[2]
assert data.native_reads(urls), "gs:// should be native here"
got = {}
for img, tgt, ids in data.record_dataset(urls, "none").batch(4).map(
        lambda s: data.parse_batch(s, image_dtype="float32", with_ids=True)):
    for i, pid in enumerate(ids.numpy()):
        got[pid.decode()] = img[i].numpy()
np.savez(out, **got)
"""


def _expected(tiny):
    return {pid: np.concatenate([a["s2"], a["s1"]], -1) for pid, a in tiny.arrays["train"].items()}


@pytest.mark.slow
def test_tf_data_reads_gs_natively_and_falls_back_to_the_generator_for_an_emulator(tmp_path, monkeypatch):
    from bigearthnet_beam.trainer import data
    from bigearthnet_beam.transforms.storage import Storage
    from tests.servers import fake_gcs
    from tests.tls_proxy import intercepting_proxy

    tiny = make_tiny_dataset(tmp_path / "tiny", n_train=7, n_val=0, n_test=0, shards=3)
    with fake_gcs(public_host="storage.googleapis.com") as endpoint:
        st = Storage(gcs_endpoint_url=endpoint, gcs_token="anon")
        st.filesystem("gs://").mkdir("tfnative")
        st.upload_tree(tiny.path, "gs://tfnative/tiny")
        ds = data.open_dataset("gs://tfnative/tiny", st)
        urls = ds.shards["train"]
        # an emulator endpoint: TensorFlow cannot reach it, the generator reads the shards
        assert not data.native_reads(urls, st)
        fallback = {}
        for img, _, ids in data.make_dataset(ds, "train", batch_size=4, with_ids=True):
            fallback.update({p.decode(): img[i].numpy() for i, p in enumerate(ids.numpy())})
        port = int(endpoint.rsplit(":", 1)[1])
        with intercepting_proxy(("127.0.0.1", port), GOOGLE_HOSTS) as proxy:
            env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
            env.update(
                https_proxy=proxy.url,
                HTTPS_PROXY=proxy.url,
                CURL_CA_BUNDLE=proxy.ca_bundle,
                GOOGLE_AUTH_TOKEN_FOR_TESTING="benbeam-test-token",
                NO_GCE_CHECK="true",
                PYTHONPATH=os.getcwd(),
                TF_CPP_MIN_LOG_LEVEL="2",
            )
            out = str(tmp_path / "native.npz")
            r = subprocess.run(
                [sys.executable, "-c", READ, json.dumps(urls), out],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert r.returncode == 0, r.stderr[-3000:]
            assert "storage.googleapis.com" in proxy.connects  # the bytes came through TensorFlow's GCS client
    native = dict(np.load(out))
    want = _expected(tiny)
    assert sorted(native) == sorted(fallback) == sorted(want)
    for pid, arr in want.items():
        np.testing.assert_array_equal(native[pid], arr)
        np.testing.assert_array_equal(fallback[pid], arr)


def test_native_reads_only_where_tensorflow_reads_the_scheme(monkeypatch):
    from bigearthnet_beam.trainer import data
    from bigearthnet_beam.transforms.storage import Storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:9")  # a Storage value never reads it
    assert data.native_reads(["/data/train/train-00000-of-00001.tfrecord"])
    assert data.native_reads(["gs://b/train/train-00000-of-00001.tfrecord"])
    assert not data.native_reads(["s3://b/train/train-00000-of-00001.tfrecord"])  # needs tensorflow-io
    assert not data.native_reads(["gs://b/a.tfrecord", "s3://b/b.tfrecord"])
    gs = ["gs://b/train/train-00000-of-00001.tfrecord"]
    assert data.native_reads(gs, Storage())
    # what TensorFlow's GCS client cannot do (another endpoint, a token, a project, anonymous access): fsspec reads
    assert not data.native_reads(gs, Storage(gcs_endpoint_url="http://127.0.0.1:9"))
    assert not data.native_reads(gs, Storage(gcs_token="/sa.json"))
    assert not data.native_reads(gs, Storage(gcs_project="p"))
    assert not data.native_reads(gs, Storage(anon=True))
