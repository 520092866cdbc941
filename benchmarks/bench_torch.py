"""Benchmark the PyTorch reader (``trainer.torch_data.BenDataset``): patches/s through a DataLoader
with 0 and N workers over a converted dataset (``--data``) or a generated one; asserts nothing."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="a converted dataset (default: generate --n patches)")
    ap.add_argument("--n", type=int, default=160, help="patches of the generated dataset")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the second run")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    from torch.utils.data import DataLoader

    from bigearthnet_beam.trainer.torch_data import BenDataset

    with tempfile.TemporaryDirectory() as d:
        data = args.data
        if data is None:
            from tests.trainer_fixtures import make_tiny_dataset

            data = make_tiny_dataset(os.path.join(d, "ds"), n_train=args.n, n_val=0, n_test=0, shards=4).path
        for workers in (0, 0, args.workers):  # the first pass warms the page cache
            ds = BenDataset(data, "train", multi_hot=True)
            t0, n = time.perf_counter(), 0
            for batch in DataLoader(ds, batch_size=args.batch, num_workers=workers):
                n += len(batch["mask"])
            dt = time.perf_counter() - t0
            print(
                f"num_workers={workers}: {n} patches in {dt:.2f} s = {n / dt:.0f} patches/s "
                f"({1000 * dt / n:.1f} ms per patch) on {os.cpu_count()} cores"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
