"""The local object cache between the statistics and the writer pass."""

import os
import pickle

from bigearthnet_beam.transforms.objcache import PatchCache

PID = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"


def test_put_then_take_gives_the_same_bytes_once(tmp_path):
    cache = PatchCache(str(tmp_path / "c"))
    objs = {"B02": os.urandom(1000), "VV": b"", "reference_map": b"\n{json-like}\n" * 7}
    assert cache.put(PID, objs)
    assert cache.take(PID) == objs
    assert cache.take(PID) is None  # taken: the file is gone
    assert cache.take("S2A_never_put") is None
    assert os.listdir(tmp_path / "c") == []


def test_a_cache_ships_to_workers_and_is_shared_through_its_directory(tmp_path):
    cache = PatchCache(str(tmp_path / "c"), reserve_bytes=0)
    assert cache.put(PID, {"B02": b"x"})
    other = pickle.loads(pickle.dumps(cache))  # another worker on the same machine
    assert other.take(PID) == {"B02": b"x"}


def test_no_put_when_the_disk_is_near_full(tmp_path):
    import shutil

    free = shutil.disk_usage(tmp_path).free
    cache = PatchCache(str(tmp_path / "c"), reserve_bytes=free + (1 << 40))
    assert not cache.put(PID, {"B02": b"x"})
    assert cache.take(PID) is None
    assert os.listdir(tmp_path / "c") == []  # no temporary file left behind


def test_damaged_or_unwritable_cache_files_are_misses(tmp_path):
    cache = PatchCache(str(tmp_path / "c"), reserve_bytes=0)
    assert cache.put(PID, {"B02": b"abc", "B03": b"defg"})
    path = tmp_path / "c" / (PID + ".objs")
    path.write_bytes(path.read_bytes()[:-1])  # truncated
    assert cache.take(PID) is None
    (tmp_path / "f").write_text("a file, not a directory")
    assert not PatchCache(str(tmp_path / "f" / "c")).put(PID, {"B02": b"x"})
    cache.remove()
    assert not (tmp_path / "c").exists()
