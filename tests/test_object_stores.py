"""s3:// and gs:// end to end against real servers started on 127.0.0.1 by these tests:
SeaweedFS (S3, with credentials it enforces) and fake-gcs-server.

On each: synth -> index -> validate -> convert into the bucket -> verify -> train one short
epoch reading from the bucket and saving the model there -> evaluate; the shards equal a
local-disk run byte for byte. On S3 also: a fault-injecting proxy (drops and 503s) in front
of the server changes nothing, permanent errors (403, 404) become dead letters, and the
secret key never appears in any output, log, report, manifest or model.
"""

import glob
import json
import os
import tempfile

import pytest

from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.schemas import manifest as manifest_schema
from bigearthnet_beam.transforms import storage
from bigearthnet_beam.transforms.storage import Storage
from tests.servers import FaultProxy, fake_gcs, seaweedfs

# servers, job services, clusters or killed processes: make test-fast leaves these out
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
]  # servers, clusters or fresh environments: longer than the default

N = 14
FAULTS = "missing_band_file,truncated_tiff,missing_files"
ACCESS_KEY = "AKIABENBEAMTESTS0001"
SECRET_KEY = "benbeam-Secret/Never+Printed-7f3c9a1e"


def _shard_hashes(manifest: dict) -> dict:
    return {s["path"]: s["sha256"] for e in manifest["splits"].values() for s in e["shards"]}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The same sample converted on local disk: the reference for byte equality."""
    d = tmp_path_factory.mktemp("local")
    assert main(["synth", "--out", str(d / "reben"), "--n", str(N), "--seed", "5", "--faults", FAULTS]) == 0
    assert (
        main(
            [
                "convert",
                "--max_failure_fraction",
                "1",
                "--meta",
                str(d / "reben" / "metadata.parquet"),
                "--out",
                str(d / "ds"),
                "--shard_size",
                "4",
            ]
        )
        == 0
    )
    return d, json.loads((d / "ds" / manifest_schema.MANIFEST).read_text())


@pytest.fixture(scope="module")
def s3_server():
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    mp.delenv("AWS_PROFILE", raising=False)
    with seaweedfs(ACCESS_KEY, SECRET_KEY) as endpoint:
        st = Storage(s3_endpoint_url=endpoint)  # credentials: the AWS chain (the environment here)
        st.filesystem("s3://").mkdir("bench")
        yield endpoint, ["--s3_endpoint_url", endpoint], st
    mp.undo()


@pytest.fixture(scope="module")
def gcs_server():
    mp = pytest.MonkeyPatch()
    with fake_gcs() as endpoint:
        mp.setenv("STORAGE_EMULATOR_HOST", endpoint)  # what the commands read, once, into their Storage
        st = Storage.from_env()
        assert st.gcs_endpoint_url == endpoint and st.gcs_token == "anon"
        st.filesystem("gs://").mkdir("bench")
        yield endpoint, [], st
    mp.undo()


def _end_to_end(scheme: str, flags: list[str], st: Storage, local_run, tmp_path, monkeypatch) -> dict:
    from bigearthnet_beam.beam_pipeline import convert
    from bigearthnet_beam.transforms.objcache import PatchCache

    # The cache's default reserve (2 GiB or 5 % of the disk) depends on this host's disk;
    # test_objcache tests it. Here every fetched training patch must be kept: the command's
    # cache is made with no reserve, a value that travels with it to the worker processes.
    monkeypatch.setattr(convert, "PatchCache", lambda directory: PatchCache(directory, reserve_bytes=0))
    base = f"{scheme}://bench/run"
    reben, ds = f"{base}/reben", f"{base}/ds"
    assert main(["synth", "--out", reben, "--n", str(N), "--seed", "5", "--faults", FAULTS, *flags]) == 0
    # the replica in the bucket is the local one, object for object
    local_dir = local_run[0] / "reben"
    fs = st.filesystem(reben)
    for rel in ("metadata.parquet", "injected_faults.json"):
        assert fs.cat_file(f"{reben}/{rel}") == (local_dir / rel).read_bytes()
    n_local = sum(len(f) for _, _, f in os.walk(local_dir))
    assert len(fs.find(reben)) == n_local

    assert main(["index", "--meta", f"{reben}/metadata.parquet", "--out", f"{reben}/indexed.parquet", *flags]) == 0
    # the replica fails on purpose (more than the default --max_failure_fraction 0.05): exit 1 after the report
    assert main(["validate", "--meta", f"{reben}/metadata.parquet", "--out", f"{base}/validate.json", *flags]) == 1
    rep = json.loads(fs.cat_file(f"{base}/validate.json"))
    injected = {f["patch_id"] for f in json.loads((local_dir / "injected_faults.json").read_text())}
    missing = {f["patch_id"] for f in rep["failures"] if any(r["reason"] == "missing_object" for r in f["reasons"])}
    assert missing and missing <= injected  # truncated TIFFs exist: only --deep sees them

    caches_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "benbeam-object-cache-*")))
    assert (
        main(
            [
                "convert",
                "--max_failure_fraction",
                "1",
                "--meta",
                f"{reben}/indexed.parquet",
                "--out",
                ds,
                "--shard_size",
                "4",
                *flags,
            ]
        )
        == 0
    )
    man = json.loads(fs.cat_file(f"{ds}/{manifest_schema.MANIFEST}"))
    assert _shard_hashes(man) == _shard_hashes(local_run[1])
    # Training patches were fetched once: the writer read what the statistics pass kept
    # (every fetched one, the undecodable too), and the cache is gone.
    counters = json.loads(fs.cat_file(f"{ds}/{manifest_schema.RUN_JSON}"))["counters"]
    assert counters["object_cache_hits"] == counters["object_cache_puts"] >= man["splits"]["train"]["written"] > 0
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "benbeam-object-cache-*"))) == caches_before
    assert man["statistics"]["bands"] == local_run[1]["statistics"]["bands"]
    assert man["failures"]["by_reason"] == local_run[1]["failures"]["by_reason"]
    assert main(["verify", ds, *flags]) == 0

    model = f"{base}/runs/unet.keras"
    assert (
        main(
            [
                "train",
                "--data",
                ds,
                "--epochs",
                "1",
                "--batch",
                "4",
                "--width",
                "4",
                "--steps_per_epoch",
                "2",
                "--save",
                model,
                *flags,
            ]
        )
        == 0
    )
    for suffix in (
        "unet.keras",
        "unet.keras.json",
        "unet.last.keras",
        "unet.state.json",
        "unet.history.csv",
        "unet.metrics.json",
    ):
        assert fs.exists(f"{base}/runs/{suffix}"), suffix
    assert fs.find(f"{base}/runs/unet.tb")
    assert (
        main(["evaluate", "--model", model, "--data", ds, "--split", "validation", "--out", f"{base}/eval", *flags])
        == 0
    )
    ev = json.loads(fs.cat_file(f"{base}/eval/metrics.json"))
    assert ev["patches"] == man["splits"]["validation"]["written"]
    return man


def test_s3_end_to_end_equals_local_disk_and_never_leaks_the_secret(s3_server, local_run, tmp_path, capfd, monkeypatch):
    endpoint, flags, st = s3_server
    _end_to_end("s3", flags, st, local_run, tmp_path, monkeypatch)
    out, err = capfd.readouterr()
    assert "s3://bench/run/ds" in out  # the output was captured at all
    assert SECRET_KEY not in out + err
    fs = st.filesystem("s3://bench")
    for key in fs.find("bench/run"):
        body = fs.cat_file(key)
        assert SECRET_KEY.encode() not in body, key
        if key.endswith(".keras"):  # a zip: its members are compressed, so check them too
            import io
            import zipfile

            with zipfile.ZipFile(io.BytesIO(body)) as z:
                for name in z.namelist():
                    assert SECRET_KEY.encode() not in z.read(name), (key, name)


def test_gcs_end_to_end_equals_local_disk(gcs_server, local_run, tmp_path, monkeypatch):
    _, flags, st = gcs_server
    _end_to_end("gs", flags, st, local_run, tmp_path, monkeypatch)


def test_conversion_through_a_faulty_proxy_loses_nothing(s3_server, local_run, tmp_path, capfd):
    endpoint, _, st = s3_server
    reben = "s3://bench/run/reben"  # written by the end-to-end test, or written here
    fs = st.filesystem(reben)
    if not fs.exists(f"{reben}/metadata.parquet"):
        assert (
            main(
                [
                    "synth",
                    "--out",
                    reben,
                    "--n",
                    str(N),
                    "--seed",
                    "5",
                    "--faults",
                    FAULTS,
                    "--s3_endpoint_url",
                    endpoint,
                ]
            )
            == 0
        )
    with FaultProxy(endpoint, fraction=0.1, seed=3) as proxy:
        out = "s3://bench/proxied/ds"
        assert (
            main(
                [
                    "convert",
                    "--max_failure_fraction",
                    "1",
                    "--meta",
                    f"{reben}/metadata.parquet",
                    "--out",
                    out,
                    "--shard_size",
                    "4",
                    "--object_cache",
                    "none",
                    "--s3_endpoint_url",
                    proxy.url,
                ]
            )
            == 0
        )  # every read through the proxy
        stats = dict(proxy.stats)
    assert stats["drop"] + stats["503"] >= 3, stats  # faults really happened
    man = json.loads(st.filesystem(out).cat_file(f"{out}/{manifest_schema.MANIFEST}"))
    assert _shard_hashes(man) == _shard_hashes(local_run[1])
    injected = {f["patch_id"] for f in json.loads((local_run[0] / "reben" / "injected_faults.json").read_text())}
    dead = [json.loads(x) for x in st.filesystem(out).cat_file(f"{out}/{manifest_schema.FAILURES_JSONL}").splitlines()]
    assert {d["patch_id"] for d in dead} == injected
    assert sum(e["written"] for e in man["splits"].values()) == N + 1 - len(injected)  # + the missing_files row


def test_permanent_errors_are_dead_letters_with_their_reason(s3_server):
    import s3fs

    from bigearthnet_beam.schemas.failures import PatchError
    from bigearthnet_beam.schemas.naming import object_urls
    from bigearthnet_beam.transforms.patch import fetch_objects

    endpoint, flags, st = s3_server
    root = "s3://bench/perm"
    assert main(["synth", "--out", root, "--n", "1", "--seed", "2", *flags]) == 0
    row = json.loads(
        json.dumps(
            __import__("pyarrow.parquet")
            .parquet.read_table(st.filesystem(root).open(f"{root}/metadata.parquet", "rb"))
            .to_pylist()[0],
            default=str,
        )
    )
    urls = object_urls(root, row["patch_id"], row["s1_name"])
    assert len(fetch_objects(urls, st=st)) == 15
    wrong = s3fs.S3FileSystem(
        key=ACCESS_KEY, secret="not-the-secret", skip_instance_cache=True, client_kwargs={"endpoint_url": endpoint}
    )
    with pytest.raises(PatchError) as e:
        fetch_objects(urls, fs=wrong)
    assert e.value.reason == "access_denied"
    gone = dict(urls)
    gone["VH"] = urls["VH"].replace(row["patch_id"][-5:], "99_99")
    with pytest.raises(PatchError) as e:
        fetch_objects(gone, st=st)
    assert e.value.reason == "missing_object"


# --------------------------------------------------------------------------- retry policy (no server)


class _Err(Exception):
    def __init__(self, msg, code=None):
        super().__init__(msg)
        self.code = code


@pytest.mark.parametrize(
    "exc,transient",
    [
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (_Err("SlowDown: Please reduce your request rate", 503), True),
        (_Err("Too Many Requests", 429), True),
        (_Err("Internal Server Error", 500), True),
        (__import__("aiohttp").ServerDisconnectedError("Server disconnected"), True),
        (OSError(16, "SlowDown"), True),  # s3fs translates 503/SlowDown to EBUSY
        (ConnectionRefusedError(111, "Connection refused"), True),
        # classified by type and status, never by words: a 500 in a patch id is not a 5xx
        (OSError("Bad Request (400) S2A_MSIL2A_20170613T105001_N9999_R051_T32TNT_50_50"), False),
        (_Err("Bad Request S2A_MSIL2A_20170613T105001_N9999", 400), False),
        (OSError("connection timed out"), False),  # no type, errno or status says transient
        (PermissionError("Forbidden"), False),
        (FileNotFoundError("no such key"), False),
        (_Err("AccessDenied", 403), False),
        (_Err("Bad request", 400), False),
    ],
)
def test_transient_and_permanent_failures_are_told_apart(exc, transient):
    assert storage.is_transient(exc) is transient


def test_retry_backs_off_exponentially_with_jitter_and_gives_up_on_permanent():
    import random

    slept, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionResetError("reset")
        return "ok"

    assert storage.retry(flaky, sleep=slept.append) == "ok"
    assert len(slept) == 3
    rng = random.Random(0)
    for attempt in range(12):
        d = storage.backoff(attempt, rng=rng)
        assert 0 <= d <= min(storage.RETRY_CAP_S, storage.RETRY_BASE_S * 2**attempt)
    calls.clear()

    def denied():
        calls.append(1)
        raise PermissionError("Forbidden")

    with pytest.raises(PermissionError):
        storage.retry(denied, sleep=slept.append)
    assert len(calls) == 1

    def always():
        raise TimeoutError("timed out")

    with pytest.raises(TimeoutError):
        storage.retry(always, attempts=3, sleep=lambda s: None)
