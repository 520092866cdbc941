"""The local object cache between the statistics and the writer pass."""

import os
import pickle

from bigearthnet_beam.transforms.objcache import PatchCache

PID = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"


def test_put_then_take_gives_the_same_bytes_once(tmp_path):
    cache = PatchCache(str(tmp_path / "c"), reserve_bytes=0)  # whatever this host's disk holds
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


def test_the_default_reserve_is_2_gib_or_5_percent_of_the_disk(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    disk = {"total": 100 << 30, "free": 0}
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(disk["total"], 0, disk["free"]))
    cache = PatchCache(str(tmp_path / "c"))  # the default reserve
    for total, free, kept in (
        (100 << 30, (5 << 30) + 1, True),  # 5 % of 100 GiB = 5 GiB
        (100 << 30, 5 << 30, False),
        (10 << 30, (2 << 30) + 1, True),  # 5 % of 10 GiB is under the 2 GiB floor
        (10 << 30, 2 << 30, False),
    ):
        disk.update(total=total, free=free)
        assert cache.put(PID, {"B02": b"x"}) is kept, (total, free)
        assert (cache.take(PID) is not None) is kept


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
