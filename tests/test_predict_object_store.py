"""``benbeam predict`` with tiles, S1 rasters, the model and the maps in an object store: a real
SeaweedFS S3 server (and fake-gcs-server for gs://) on 127.0.0.1. Each map read from and
written to the bucket must equal, byte for byte, the local run's; the Beam pipeline runs in
worker processes of their own (multi-processing DirectRunner), which reach the server only
through the `Storage` value the pipeline ships to them.
"""

import json
import os
import socket

import pytest

tf = pytest.importorskip("tensorflow")

from bigearthnet_beam.beam_pipeline.cli import main  # noqa: E402
from bigearthnet_beam.schemas import bands  # noqa: E402
from bigearthnet_beam.trainer.inference.staging import fetch_tile, s1_sidecar, tiles_in  # noqa: E402
from bigearthnet_beam.trainer.model import save_model  # noqa: E402
from bigearthnet_beam.transforms.storage import Storage  # noqa: E402
from tests.predict_fixtures import predict_cli, tiny_model  # noqa: E402
from tests.servers import fake_gcs, seaweedfs  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
]  # servers, clusters or fresh environments: longer than the default

ACCESS_KEY = "AKIABENBEAMPREDICT01"
SECRET_KEY = "benbeam-Predict/Secret+Never-Printed-3a1f"
FLAGS = ["--chunk_size", "128", "--batch_size", "4", "--save_probs"]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Two S2+S1 tiles (a GeoTIFF and a .SAFE product, each with its S1 sidecar), a model that
    reads both modalities, and the plain command's maps of each tile on local disk."""
    from bigearthnet_beam.synth.tiles import make_tile, tile_ids

    d = tmp_path_factory.mktemp("local")
    model, _ = tiny_model(channels=bands.ALL_NAMES)
    save_model(model, str(d / "m.keras"))
    tiles = [
        make_tile(
            str(d / "tiles"),
            size=150 + 30 * i,
            seed=20 + i,
            tile=tid,
            layout=("geotiff", "safe")[i],
            s1=True,
            nodata_border=5 * i,
        )
        for i, tid in enumerate(tile_ids(2))
    ]
    for t in tiles:
        assert (
            predict_cli(
                [
                    "--model",
                    d / "m.keras",
                    "--tile",
                    t["path"],
                    "--s1",
                    t["s1"],
                    "--out",
                    d / "maps" / t["name"],
                    *FLAGS,
                ]
            )
            == 0
        )
    return d, tiles


@pytest.fixture(scope="module")
def s3(local):
    """A SeaweedFS S3 endpoint holding the local tiles and model under s3://predict/in/."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    mp.delenv("AWS_PROFILE", raising=False)
    with seaweedfs(ACCESS_KEY, SECRET_KEY) as endpoint:
        st = Storage(s3_endpoint_url=endpoint)
        st.filesystem("s3://").mkdir("predict")
        d, _ = local
        st.upload_tree(str(d / "tiles"), "s3://predict/in")
        st.upload_file(str(d / "m.keras"), "s3://predict/m.keras")
        st.upload_file(str(d / "m.keras.json"), "s3://predict/m.keras.json")
        yield endpoint
    mp.undo()


def _unlinked(name: str, data: bytes) -> bytes:
    """A STAC item without its links to a collection (a --benchmark run adds them), else the bytes."""
    if not name.endswith("_item.json"):
        return data
    item = json.loads(data)
    item.pop("collection", None)
    item["links"] = [ln for ln in item.get("links", []) if ln["rel"] not in ("collection", "parent", "root")]
    return json.dumps(item, sort_keys=True).encode()


def _local_files(folder) -> dict[str, bytes]:
    """The maps of one tile, by file name (the summary holds timings: left out)."""
    return {
        f: _unlinked(f, (folder / f).read_bytes())
        for f in sorted(os.listdir(folder))
        if not f.endswith("_summary.json") and f != ".benbeam-run.json"
    }  # the output-folder marker: not a map


def _remote_files(url: str, st: Storage) -> dict[str, bytes]:
    fs = st.filesystem(url)
    fs.invalidate_cache()
    root = url.split("://", 1)[1].rstrip("/") + "/"
    return {
        o[len(root) :]: _unlinked(o, fs.cat_file(o))
        for o in sorted(fs.find(url))
        if not o.endswith(("_summary.json", "/.benbeam-run.json"))
    }  # the output-folder marker: not a map


def test_a_tile_read_from_s3_and_mapped_to_s3_equals_the_local_run(local, s3, capsys):
    d, tiles = local
    for i, t in enumerate(tiles):
        tile_url = f"s3://predict/in/{os.path.basename(t['path'])}"
        out = f"s3://predict/plain/{t['name']}"
        assert (
            predict_cli(
                [
                    "--model",
                    "s3://predict/m.keras",
                    "--tile",
                    tile_url,
                    "--s1",
                    f"s3://predict/in/{os.path.basename(t['s1'])}",
                    "--out",
                    out,
                    *FLAGS,
                    "--s3_endpoint_url",
                    s3,
                ]
            )
            == 0
        )
        want = _local_files(d / "maps" / t["name"])
        assert len(want) == 13  # 4 layers + probs + classmap + preview, GDAL sidecar, 4 QGIS styles, STAC item
        assert _remote_files(out, Storage(s3_endpoint_url=s3)) == want, t["name"]
        summary = json.loads(Storage(s3_endpoint_url=s3).read_bytes(f"{out}/{t['name']}_summary.json"))
        assert summary["pixels"] == (150 + 30 * i) ** 2
        assert summary["channels"] == list(bands.ALL_NAMES)
    assert SECRET_KEY not in capsys.readouterr().err


def test_the_beam_pipeline_in_worker_processes_reads_and_writes_s3_with_the_local_bytes(local, s3, capsys):
    d, tiles = local
    out = "s3://predict/beam"
    assert (
        predict_cli(
            [
                "--model",
                "s3://predict/m.keras",
                "--input_dir",
                "s3://predict/in",
                "--out",
                out,
                *FLAGS,
                "--s3_endpoint_url",
                s3,
                "--runner",
                "DirectRunner",
                "--direct_running_mode",
                "multi_processing",
                "--direct_num_workers",
                "1",
            ]
        )
        == 0
    )
    summary = json.loads(Storage(s3_endpoint_url=s3).read_bytes(f"{out}/summary.json"))
    assert summary["mapped"] == 2 and summary["failures"] == [], summary["failures"]
    for t in tiles:
        assert _remote_files(f"{out}/{t['name']}", Storage(s3_endpoint_url=s3)) == _local_files(
            d / "maps" / t["name"]
        ), t["name"]
    page = Storage(s3_endpoint_url=s3).read_bytes(f"{out}/viewer.html").decode()
    assert page.count('src="data:image/png;base64,') == 2  # the previews, read back from the bucket
    assert "2 tiles mapped, 0 failed" in capsys.readouterr().out


def test_the_benchmark_maps_tiles_from_s3_into_s3(local, s3):
    d, tiles = local
    out = "s3://predict/bench"
    assert (
        predict_cli(
            [
                "--model",
                "s3://predict/m.keras",
                "--input_dir",
                "s3://predict/in",
                "--out",
                out,
                "--benchmark",
                *FLAGS,
                "--s3_endpoint_url",
                s3,
            ]
        )
        == 0
    )
    for t in tiles:
        assert _remote_files(f"{out}/{t['name']}", Storage(s3_endpoint_url=s3)) == _local_files(
            d / "maps" / t["name"]
        ), t["name"]
    report = Storage(s3_endpoint_url=s3).read_bytes(f"{out}/benchmark_report.csv").decode().splitlines()
    assert len(report) == 3 and report[0].startswith("tile,pixels,seconds")
    assert (
        Storage(s3_endpoint_url=s3).read_bytes(f"{out}/viewer.html").decode().count('src="data:image/png;base64,') == 2
    )


def test_only_the_files_the_model_needs_are_fetched(local, s3, tmp_path):
    _, tiles = local
    safe = f"s3://predict/in/{os.path.basename(tiles[1]['path'])}"
    st = Storage(s3_endpoint_url=s3)
    assert tiles_in("s3://predict/in", st) == sorted(f"s3://predict/in/{os.path.basename(t['path'])}" for t in tiles)
    assert s1_sidecar(safe, st) == f"s3://predict/in/{os.path.basename(tiles[1]['s1'])}"
    got = fetch_tile(safe, ("B02", "B03", "B04", "B08"), str(tmp_path), st)
    files = sorted(os.path.relpath(os.path.join(r, f), got) for r, _, fs in os.walk(got) for f in fs)
    assert files[-1] == "MTD_MSIL2A.xml" and len(files) == 5, files
    assert [f.rsplit("_", 2)[-2] for f in files[:-1]] == ["B02", "B03", "B04", "B08"], files
    granule = os.path.join(got, "GRANULE", os.listdir(os.path.join(got, "GRANULE"))[0], "IMG_DATA")
    assert sorted(os.listdir(granule)) == ["R10m", "R20m", "R60m"]  # the layout stays whole
    assert os.listdir(os.path.join(granule, "R20m")) == []


def test_a_missing_tile_is_a_usage_error_and_an_unreachable_store_an_environment_error(local, s3, capsys):
    d, tiles = local
    assert (
        predict_cli(
            ["--model", d / "m.keras", "--tile", "s3://predict/in/nope.tif", "--out", d / "x", "--s3_endpoint_url", s3]
        )
        == 2
    )
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "benbeam predict: error: tile s3://predict/in/nope.tif does not exist"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening: refused
        # the endpoint is probed when the command starts (a refused connection fails in seconds): the
        # error reaches benbeam's CLI, which names it in one line, exit 3 (--debug: the traceback)
        assert (
            main(
                [
                    "predict",
                    "--model",
                    str(d / "m.keras"),
                    "--tile",
                    tiles[0]["path"],
                    "--s1",
                    tiles[0]["s1"],
                    "--out",
                    "s3://predict/never",
                    "--s3_endpoint_url",
                    dead,
                ]
            )
            == 3
        )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("benbeam predict: error: the storage endpoint cannot be reached") and dead in line, line


def test_a_tile_in_gcs_maps_to_gcs_with_the_local_bytes(local):
    d, tiles = local
    t = tiles[0]
    mp = pytest.MonkeyPatch()
    with fake_gcs() as endpoint:
        mp.setenv("STORAGE_EMULATOR_HOST", endpoint)
        gst = Storage.from_env()  # as the command builds its own
        gst.filesystem("gs://").mkdir("predict")
        gst.upload_tree(str(d / "tiles"), "gs://predict/in")
        out = f"gs://predict/maps/{t['name']}"
        assert (
            predict_cli(
                [
                    "--model",
                    d / "m.keras",
                    "--tile",
                    f"gs://predict/in/{os.path.basename(t['path'])}",
                    "--s1",
                    f"gs://predict/in/{os.path.basename(t['s1'])}",
                    "--out",
                    out,
                    *FLAGS,
                ]
            )
            == 0
        )
        assert _remote_files(out, gst) == _local_files(d / "maps" / t["name"])
    mp.undo()
