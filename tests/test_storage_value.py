"""``transforms.storage.Storage``: storage as a value, not process-wide state.

Without a server: the value hides its secrets, pickles, builds from flags and the
environment (read once), refuses contradictions, and keys every client cache; no module of
the package holds module-level mutable state. With two SeaweedFS servers (slow): two Beam
pipelines in one process, each with its own endpoint and credentials, each reads and writes
its own bucket, and neither can reach the other's objects.
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import pickle
import sys
import threading

import pytest

from bigearthnet_beam.schemas.errors import InputError, exit_code
from bigearthnet_beam.transforms import storage
from bigearthnet_beam.transforms.cli_args import add_storage_args, storage_from_args
from bigearthnet_beam.transforms.storage import Storage

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRET"
KEY = "AKIAVALUETEST0000001"
TOKEN = "FwoGZXIvYXdzSESSIONTOKENzzz"
PASSWORD = "hunter2-endpoint-pw"


def _secret_value() -> Storage:
    return Storage(
        s3_endpoint_url=f"http://user:{PASSWORD}@127.0.0.1:9",
        s3_key=KEY,
        s3_secret=SECRET,
        s3_session_token=TOKEN,
        s3_region="eu-west-1",
        gcs_token="/secrets/sa.json",
    )


# --------------------------------------------------------------------------- the value


def test_repr_and_str_never_show_secrets():
    st = _secret_value()
    for text in (repr(st), str(st), f"{st}", f"{st!r}", repr([st]), repr({"s": st})):
        for secret in (SECRET, KEY, TOKEN, PASSWORD, "/secrets/sa.json", "user:"):
            assert secret not in text, (secret, text)
    assert "eu-west-1" in repr(st) and "127.0.0.1:9" in repr(st)  # what is not secret stays readable
    assert repr(Storage()) == "Storage()"
    assert repr(Storage(gcs_token="anon")) == "Storage(gcs_token='anon')"  # a mode, not a secret


def test_redact_replaces_every_secret_in_a_message():
    st = _secret_value()
    msg = f"GET http://user:{PASSWORD}@127.0.0.1:9/b/k failed for {KEY}/{SECRET} token {TOKEN}"
    shown = st.redact(msg)
    for secret in (SECRET, KEY, TOKEN, PASSWORD):
        assert secret not in shown
    assert "127.0.0.1:9/b/k" in shown
    assert storage.redact_url("http://a:b@h:1/p") == "http://***@h:1/p"
    assert storage.redact_url("http://h:1/p") == "http://h:1/p"


def test_a_refused_access_says_where_and_whose_credentials_without_them():
    st = _secret_value()
    msg = st.denied_message("s3://b/k", PermissionError(f"Forbidden for {KEY}"))
    assert msg == (
        "access to s3://b/k at http://***@127.0.0.1:9 denied (Forbidden for ***) with the S3 key ***: "
        "check the credentials and the bucket policy"
    )
    assert "profile 'p'" in Storage(s3_profile="p").denied_message("s3://b/k", PermissionError())
    assert "anonymous access" in Storage(anon=True).denied_message("gs://b/k", PermissionError("x"))
    assert "default credential chain" in Storage().denied_message("gs://b/k", PermissionError("x"))
    e = storage.AccessDenied(13, msg)
    assert isinstance(e, PermissionError) and exit_code(e) == 3  # a storage failure: the environment's


def test_probe_failure_names_the_endpoint_without_its_password():
    st = Storage(s3_endpoint_url=f"http://user:{PASSWORD}@127.0.0.1:9")  # port 9 (discard): nothing listens
    with pytest.raises(ConnectionRefusedError) as e:
        st.probe()
    assert "127.0.0.1:9" in str(e.value) and PASSWORD not in str(e.value) and "user" not in str(e.value)


def test_pickle_round_trip_is_equal_and_hashes_equal():
    st = _secret_value()
    back = pickle.loads(pickle.dumps(st))
    assert back == st and hash(back) == hash(st)
    assert back.s3_secret == SECRET  # workers need the credentials: the value carries them
    with pytest.raises(AttributeError):
        st.s3_key = "other"  # frozen


def test_values_with_different_secrets_differ():
    a = Storage(s3_endpoint_url="http://127.0.0.1:1", s3_key="k", s3_secret="one")
    b = Storage(s3_endpoint_url="http://127.0.0.1:1", s3_key="k", s3_secret="two")
    assert a != b and repr(a) == repr(b)  # equal to the eye, never to a cache


@pytest.mark.parametrize(
    "kwargs",
    [
        {"s3_key": "k"},  # a key without its secret
        {"s3_secret": "s"},
        {"s3_session_token": "t"},
        {"s3_key": "k", "s3_secret": "s", "s3_profile": "p"},
        {"anon": True, "s3_profile": "p"},
        {"s3_endpoint_url": "ftp://127.0.0.1:21"},
        {"anon": "yes"},
        {"s3_region": 3},
    ],
)
def test_contradictory_or_malformed_options_are_an_input_error(kwargs):
    with pytest.raises(InputError) as e:
        Storage(**kwargs)
    assert "Storage" in str(e.value)


def test_from_env_reads_the_variables_once_and_flags_win():
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:7001",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:7002",
        "STORAGE_EMULATOR_HOST": "127.0.0.1:7003",
        "BENBEAM_FAST_GET": "0",
    }
    st = Storage.from_env(env)
    assert st == Storage(
        s3_endpoint_url="http://127.0.0.1:7002",
        gcs_endpoint_url="http://127.0.0.1:7003",
        gcs_token="anon",  # an emulator checks no credentials
        fast_get=False,
    )
    assert Storage.from_env({}) == Storage()
    assert Storage.from_env(env, s3_endpoint_url="http://127.0.0.1:7009").s3_endpoint_url == "http://127.0.0.1:7009"

    ap = argparse.ArgumentParser()
    add_storage_args(ap)
    args = ap.parse_args(["--anon", "--s3_region", "eu-central-1", "--gcs_project", "p1"])
    got = storage_from_args(args, environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:7001"}, probe=False)
    assert got == Storage(
        s3_endpoint_url="http://127.0.0.1:7001", anon=True, s3_region="eu-central-1", gcs_project="p1"
    )
    args = ap.parse_args(["--s3_profile", "prof", "--gcs_credentials", "/k.json"])
    got = storage_from_args(args, environ={}, probe=False)
    assert got.s3_profile == "prof" and got.gcs_token == "/k.json"


def test_storage_ignores_the_environment_it_was_not_built_from(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:7001")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:7003")
    st = Storage()
    assert st.s3_endpoint_url is None and st.gcs_endpoint_url is None
    # botocore is told to ignore $AWS_ENDPOINT_URL; gcsfs gets Google's endpoint explicitly
    assert st.fsspec_options("s3")["config_kwargs"]["ignore_configured_endpoint_urls"] is True
    assert st.fsspec_options("gs")["endpoint_url"] == storage.GCS_DEFAULT_ENDPOINT


def test_fsspec_options_follow_the_value():
    st = _secret_value()
    s3 = st.fsspec_options("s3")
    assert s3["key"] == KEY and s3["secret"] == SECRET and s3["token"] == TOKEN
    assert s3["client_kwargs"] == {"endpoint_url": st.s3_endpoint_url, "region_name": "eu-west-1"}
    assert Storage(anon=True).fsspec_options("s3")["anon"] is True
    assert Storage(anon=True).fsspec_options("gs")["token"] == "anon"
    assert Storage(gcs_project="p").fsspec_options("gs")["project"] == "p"
    assert Storage().fsspec_options("file") == {}


def test_equal_values_share_a_filesystem_and_different_values_do_not():
    a1 = Storage(s3_endpoint_url="http://127.0.0.1:7101", s3_key="k", s3_secret="s1")
    a2 = Storage(s3_endpoint_url="http://127.0.0.1:7101", s3_key="k", s3_secret="s1")
    b = Storage(s3_endpoint_url="http://127.0.0.1:7101", s3_key="k", s3_secret="s2")
    fa1, fa2, fb = a1.filesystem("s3://x/y"), a2.filesystem("s3://z"), b.filesystem("s3://x/y")
    assert fa1 is fa2 and fa1 is not fb
    assert fa1.key == "k" and fa1.secret == "s1" and fb.secret == "s2"
    assert fa1.retries == 1  # one retry layer: botocore's
    # anon: a default GCS client without a token would look for Google credentials (metadata server)
    ga, gb = (
        Storage(gcs_endpoint_url="http://127.0.0.1:7102").filesystem("gs://b"),
        Storage(anon=True).filesystem("gs://b"),
    )
    assert ga is not gb and ga._endpoint == "http://127.0.0.1:7102" and gb._endpoint == storage.GCS_DEFAULT_ENDPOINT
    assert type(ga).__module__ == "gcsfs.core"  # the plain client, whatever $GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT says


def test_equal_values_share_an_obstore_store_and_different_values_do_not():
    import os

    pytest.importorskip("obstore")
    from bigearthnet_beam.transforms import fastget

    a1 = Storage(s3_endpoint_url="http://127.0.0.1:7103", s3_key="k", s3_secret="s1")
    a2 = pickle.loads(pickle.dumps(a1))
    b = Storage(s3_endpoint_url="http://127.0.0.1:7103", s3_key="k", s3_secret="s2")
    assert fastget._store(a1, "bk", os.getpid()) is fastget._store(a2, "bk", os.getpid())
    assert fastget._store(a1, "bk", os.getpid()) is not fastget._store(b, "bk", os.getpid())
    assert a1.fast_get_enabled("s3://bk/x") and not a1.replace(fast_get=False).fast_get_enabled("s3://bk/x")
    assert not a1.fast_get_enabled("gs://bk/x")


def test_local_operations(tmp_path):
    st = Storage()
    f = str(tmp_path / "a" / "b.bin")
    st.write_bytes_atomic(f, b"abc")
    assert st.read_bytes(f) == b"abc" and st.exists(f)
    assert st.sha256_file(f) == storage.sha256_bytes(b"abc")
    st.download_file(f, str(tmp_path / "c.bin"))
    assert (tmp_path / "c.bin").read_bytes() == b"abc"
    assert st.upload_tree(str(tmp_path / "a"), str(tmp_path / "copy")) == 1
    assert (tmp_path / "copy" / "b.bin").read_bytes() == b"abc"


# --------------------------------------------------------------------------- no module-level mutable state

PACKAGE_FOLDERS = ("schemas", "transforms", "beam_pipeline", "trainer", "synth", "launch", "bigearthnet_beam")
MUTABLE_CALLS = {
    "dict",
    "list",
    "set",
    "bytearray",
    "defaultdict",
    "OrderedDict",
    "Counter",
    "deque",
    "Lock",
    "RLock",
    "local",
    "ThreadPoolExecutor",
    "ProcessPoolExecutor",
    "SimpleQueue",
    "Queue",
}
MUTABLE_NODES = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)

# True constants: module-level tables that are written once, at import, and only ever read.
# (module, name). Anything not listed here that binds a mutable value at module level fails.
ALLOWED = {
    ("bigearthnet_beam/__init__.py", "__all__"),  # the export list
    ("bigearthnet_beam/__init__.py", "_LAZY"),  # public name -> module (the public-API work of issue 23)
    # schemas: the data contract's lookup tables
    ("schemas/bands.py", "BAND_BY_NAME"),
    ("schemas/bands.py", "S2_PRODUCT_RESOLUTION_M"),
    ("schemas/bands.py", "MODALITIES"),
    ("schemas/classes.py", "CLASS_INDEX"),
    ("schemas/failures.py", "REASONS"),
    ("schemas/failures.py", "FAULT_EXPECTATIONS"),
    ("schemas/manifest.py", "SPLIT_ALIASES"),
    ("schemas/manifest.py", "_TOP_TYPES"),
    ("schemas/manifest.py", "_SPLIT_TYPES"),
    ("schemas/manifest.py", "_SHARD_TYPES"),
    ("schemas/manifest.py", "_TYPE_NAMES"),
    # transforms: format tables of the decoders and archive layout
    ("transforms/archive_inventory.py", "FOLDER_KEYS"),
    ("transforms/archives.py", "ARCHIVE_OF"),
    ("transforms/decode.py", "_DTYPES"),
    ("transforms/decode.py", "_TYPE_FMT"),
    ("transforms/decode.py", "_NEEDED"),
    ("transforms/decode.py", "_UNSUPPORTED"),
    ("transforms/decode.py", "_IFD_DTYPE"),
    ("transforms/outdir.py", "_OWN_TOP"),
    ("transforms/flagtypes.py", "FLAG_TYPES"),  # the flag checkers, by kind
    # the CLI's and the trainer's lookup tables
    ("beam_pipeline/cli.py", "EXTRAS"),
    ("beam_pipeline/report_plots.py", "_SPLIT_COLORS"),
    ("trainer/augment.py", "_OPS"),
    ("trainer/data.py", "MODALITY_FEATURE"),
    ("trainer/torch_data.py", "MODALITY_FEATURE"),
    ("trainer/inference/layers.py", "LAYER_DOC"),
    ("trainer/inference/settings.py", "DEFAULTS"),
    ("synth/signatures.py", "_ENDMEMBERS"),
    ("synth/signatures.py", "_CLASSES"),
    ("trainer/inference/pretrained_predictor.py", "LAYER_DOC"),
    ("trainer/inference/styles.py", "RAMPS"),
    ("trainer/pretrained/authors.py", "BANDS_FOR_CHANNELS"),  # the reBEN authors' published tables
    ("trainer/pretrained/authors.py", "MEAN_120_NEAREST"),
    ("trainer/pretrained/authors.py", "STD_120_NEAREST"),
    ("bigearthnet_beam/pretrained.py", "__all__"),
    # NOT constants, and not storage: process-wide state owned elsewhere, listed so this test
    # names them instead of hiding them. The row-plan index cache belongs to the public-API
    # work of issue 23 (transforms/plan.py); the --debug / Ctrl-C / worker-log state to the
    # CLI process (beam_pipeline/quiet.py); the TensorFlow start-up flag to the trainer.
    ("transforms/plan.py", "_LOCK"),
    ("transforms/plan.py", "_CACHE"),
    ("beam_pipeline/quiet.py", "DEBUG"),
    ("beam_pipeline/quiet.py", "INTERRUPTED"),  # the CLI process's Ctrl-C and worker-log state
    ("beam_pipeline/quiet.py", "LOG_FILE"),
    ("beam_pipeline/quiet.py", "_DEFAULT_HOOK"),
    ("beam_pipeline/quiet.py", "_GUARD"),
    ("trainer/tfenv.py", "_STATE"),  # TensorFlow's start-up noise silenced once per process
    # the temporary files and folders this process made for itself, removed on every way out
    # (a forced end after Ctrl-C included): a process's own registry, never configuration
    ("transforms/scratch.py", "_OWNED"),
    ("transforms/scratch.py", "_LOCK"),
    # a memo, not configuration: compiled XLA image functions keyed by the whole RawSpec value
    # (spec_key), so what a call returns never depends on what was cached before
    ("trainer/raw_tf.py", "_compiled"),
}


def _repo() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parent.parent


def _module_level_mutables() -> list[tuple[str, str, int]]:
    found = []
    root = _repo()
    for folder in PACKAGE_FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Global):
                    found += [(rel, f"global {n}", node.lineno) for n in node.names]
            for node in tree.body:
                if isinstance(node, ast.Assign):
                    targets, value = node.targets, node.value
                elif isinstance(node, ast.AnnAssign) and node.value is not None:
                    targets, value = [node.target], node.value
                else:
                    continue
                call = value.func if isinstance(value, ast.Call) else None
                name = getattr(call, "id", None) or getattr(call, "attr", None)
                if isinstance(value, MUTABLE_NODES) or name in MUTABLE_CALLS:
                    for t in targets:
                        for n in ast.walk(t):
                            if isinstance(n, ast.Name):
                                found.append((rel, n.id, node.lineno))
    return found


def test_scan_finds_what_it_looks_for(tmp_path, monkeypatch):
    """The scanner itself: each kind of module-level state it must refuse is found."""
    pkg = tmp_path / "transforms"
    pkg.mkdir()
    (pkg / "bad.py").write_text(
        "import threading\nA = {}\nB: list = []\nC = dict()\nD = threading.Lock()\nE = {k: 1 for k in 'ab'}\n"
        "F = (1, 2)\ndef f():\n    global G\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "_repo", lambda: tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE_FOLDERS", ("transforms",))
    got = {n for _, n, _ in _module_level_mutables()}
    assert got == {"A", "B", "C", "D", "E", "global G"}


def test_no_module_level_mutable_state():
    found = _module_level_mutables()
    bad = [f"{rel}:{line}: {name}" for rel, name, line in found if (rel, name) not in ALLOWED]
    assert not bad, "module-level mutable state (pass a value, or list a true constant in ALLOWED):\n" + "\n".join(bad)
    storage_modules = {
        "transforms/storage.py",
        "transforms/storeconfig.py",
        "transforms/fastget.py",
        "transforms/patch.py",
    }
    assert not [f for f in found if f[0] in storage_modules]  # the storage modules need no allow-list entry at all


# --------------------------------------------------------------------------- two servers, two pipelines

KEY_A, SECRET_A = "AKIASERVERAAAAAAAAAA", "secret-of-server-A/never+shown"
KEY_B, SECRET_B = "AKIASERVERBBBBBBBBBB", "secret-of-server-B/never+shown"


@pytest.fixture(scope="module")
def two_servers():
    from tests.servers import seaweedfs

    mp = pytest.MonkeyPatch()
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        mp.delenv(var, raising=False)  # nothing from the environment: each value carries its own keys
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    mp.setenv("AWS_CONFIG_FILE", "/nonexistent")
    try:
        with seaweedfs(KEY_A, SECRET_A) as a, seaweedfs(KEY_B, SECRET_B) as b:
            sa = Storage(s3_endpoint_url=a, s3_key=KEY_A, s3_secret=SECRET_A)
            sb = Storage(s3_endpoint_url=b, s3_key=KEY_B, s3_secret=SECRET_B)
            yield sa, sb
    finally:
        mp.undo()


def _replica(st: Storage, bucket: str) -> str:
    from bigearthnet_beam.synth.generator import generate

    st.filesystem(f"s3://{bucket}").mkdir(bucket)
    out = f"s3://{bucket}/reben"
    generate(out, 3, seed=11, workers=1, st=st)
    return out


def _validate_pipeline(st: Storage, reben: str, report: str) -> None:
    """The deep validation pipeline (``benbeam validate --deep``'s graph) on the DirectRunner:
    metadata read, every object fetched and decoded, the report written, all under ``st``."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from bigearthnet_beam.beam_pipeline import validate

    args = argparse.Namespace(
        meta=f"{reben}/metadata.parquet",
        include_snow_cloud=None,
        root=None,
        frac=1.0,
        deep=True,
        splits="train,validation,test",
        archives=None,
        decode_timeout=30.0,
        out=report,
    )
    opts = PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    with beam.Pipeline(options=opts) as p:
        validate.build(p, args, reben, ("train", "validation", "test"), st)


@pytest.mark.slow
def test_two_pipelines_two_servers_two_credentials_in_one_process(two_servers, capfd):
    from bigearthnet_beam.schemas.failures import PatchError
    from bigearthnet_beam.schemas.naming import object_urls
    from bigearthnet_beam.transforms import metadata as md
    from bigearthnet_beam.transforms.patch import fetch_objects

    sa, sb = two_servers
    reben_a, reben_b = _replica(sa, "bucket-a"), _replica(sb, "bucket-b")
    reports = {"a": "s3://bucket-a/validate.json", "b": "s3://bucket-b/validate.json"}
    errors = []

    def run(st, reben, report):
        try:
            _validate_pipeline(st, reben, report)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [
        threading.Thread(target=run, args=(sa, reben_a, reports["a"])),
        threading.Thread(target=run, args=(sb, reben_b, reports["b"])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    for st, name in ((sa, "a"), (sb, "b")):
        rep = json.loads(st.read_bytes(reports[name]))
        assert rep["totals"] == {"patches": 3, "ok": 3, "failed": 0}, rep["totals"]  # every object fetched, decoded

    # Neither sees the other's objects. Through its own endpoint the other bucket is not there:
    assert not sa.exists("s3://bucket-b/reben/metadata.parquet") and not sb.exists(
        "s3://bucket-a/reben/metadata.parquet"
    )
    with pytest.raises(md.MetadataError) as e:
        md.read_table(f"{reben_b}/metadata.parquet", sa)
    assert "does not exist" in str(e.value)
    # and at the other's endpoint its credentials are refused, by the fsspec client and by obstore alike:
    crossed = sa.replace(s3_endpoint_url=sb.s3_endpoint_url)
    with pytest.raises(storage.AccessDenied) as denied:
        md.read_table(f"{reben_b}/metadata.parquet", crossed)
    msg = str(denied.value)
    assert f"access to {reben_b}/metadata.parquet at {sb.s3_endpoint_url} denied" in msg, msg
    assert "with the S3 key ***: check the credentials" in msg and KEY_A not in msg and SECRET_A not in msg
    assert exit_code(denied.value) == 3
    table, _ = md.read_table(f"{reben_b}/metadata.parquet", sb)
    row = table.to_pylist()[0]
    urls = object_urls(reben_b, row["patch_id"], row["s1_name"])
    assert len(fetch_objects(urls, st=sb)) == 15
    with pytest.raises(PatchError) as e:
        fetch_objects(urls, st=crossed)
    assert e.value.reason == "access_denied", e.value
    assert SECRET_A not in str(e.value) and KEY_A not in str(e.value)
    out, err = capfd.readouterr()
    for secret in (SECRET_A, SECRET_B):
        assert secret not in out + err
