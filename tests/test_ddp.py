"""PyTorch DDP balance (``trainer.torch_data.partition``): every rank yields the same number of
samples and batches per epoch whatever the shard sizes; two real gloo ranks train without hanging."""

import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys

import pytest

from bigearthnet_beam.trainer.torch_data import partition, rank_span
from tests.trainer_fixtures import make_tiny_dataset

SHARD_SIZES = [17, 3]  # one big and one small shard: whole shards per rank would give 17 vs 3 records


def _records(ranges):
    return [(shard, k) for shard, first, end in ranges for k in range(first, end)]


@pytest.mark.parametrize("seed", [None, 0, 5])
def test_every_rank_gets_the_same_count_and_one_rank_gets_every_record_once(seed):
    rng = random.Random(1)
    cases = [[17, 3], [0, 9, 0, 1], [1], [5, 5, 5], [0, 0], [2, 0, 40, 7, 1]]
    cases += [[rng.randrange(0, 12) for _ in range(rng.randrange(1, 6))] for _ in range(20)]
    for sizes, world, workers, drop in itertools.product(cases, (1, 2, 3, 4), (1, 2, 3), (False, True)):
        total = sum(sizes)
        per_worker = {}
        everything = []
        for rank in range(world):
            counts = []
            for w in range(workers):
                recs = _records(
                    partition(
                        sizes, rank=rank, world_size=world, worker=w, num_workers=workers, seed=seed, drop_last=drop
                    )
                )
                assert all(0 <= k < sizes[s] for s, k in recs)
                counts.append(len(recs))
                everything += recs
            assert max(counts) - min(counts) <= 1
            per_worker[rank] = counts
        want = total // world if drop else -(-total // world)
        assert all(sum(c) == want for c in per_worker.values()), (sizes, world, workers, per_worker)
        assert len({tuple(c) for c in per_worker.values()}) == 1  # the same batches on every rank
        every = {(s, k) for s, n in enumerate(sizes) for k in range(n)}
        if not drop:
            assert set(everything) == every  # nothing left out; padding repeats fewer than `world` records
            assert len(everything) - total == want * world - total < world
        else:
            assert len(everything) == len(set(everything)) and total - len(everything) < world
        if world == 1:
            assert sorted(everything) == sorted(every)  # one rank: each record exactly once


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="outside"):
        rank_span(10, 2, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_train_under_ddp_on_unequal_shards_without_hanging(tmp_path):
    n = sum(SHARD_SIZES)
    t = make_tiny_dataset(tmp_path / "ds", n_train=n, n_val=0, n_test=0, shards=2, shard_sizes={"train": SHARD_SIZES})
    assert [s["records"] for s in t.manifest["splits"]["train"]["shards"]] == SHARD_SIZES
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1")
    # its own process group: a hang kills the two ranks too, not only the launcher
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ddp_worker", t.path, str(_free_port()), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=240)  # a deadlocked all-reduce fails here instead of hanging
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"the two DDP ranks hung: {stderr[-2000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    ranks = [json.loads((out / f"rank{k}.json").read_text()) for k in range(2)]
    assert [(x["rank"], x["world"]) for x in ranks] == [(0, 2), (1, 2)]  # taken from torch.distributed
    per_epoch = -(-n // 2)
    from tests.ddp_worker import BATCH, EPOCHS, WORKERS

    want_steps = EPOCHS * sum(
        -(-c // BATCH) for c in (per_epoch // WORKERS + (w < per_epoch % WORKERS) for w in range(WORKERS))
    )
    assert ranks[0]["steps"] == ranks[1]["steps"] == want_steps
    assert len(ranks[0]["ids"]) == len(ranks[1]["ids"]) == EPOCHS * per_epoch
    assert set(ranks[0]["ids"]) | set(ranks[1]["ids"]) == set(t.arrays["train"])
    assert ranks[0]["weights"] == ranks[1]["weights"]  # the gradients were all-reduced: the replicas agree


def test_a_shard_shorter_than_its_manifest_entry_is_an_integrity_error(tmp_path):
    from bigearthnet_beam.schemas.errors import IntegrityError
    from bigearthnet_beam.trainer.torch_data import BenDataset
    from bigearthnet_beam.transforms.encode import iter_records

    t = make_tiny_dataset(tmp_path / "ds", n_train=5, n_val=0, n_test=0, shards=2, shard_sizes={"train": [3, 2]})
    shard = os.path.join(t.path, t.manifest["splits"]["train"]["shards"][1]["path"])
    first = next(iter_records(shard))
    with open(shard, "rb") as fh:
        data = fh.read()
    with open(shard, "wb") as fh:  # keep the first record only: the manifest still says 2
        fh.write(data[: 16 + len(first)])
    assert len(list(iter_records(shard))) == 1
    with pytest.raises(IntegrityError, match="holds 1 records, dataset.json says 2"):
        list(BenDataset(t.path, "train"))
