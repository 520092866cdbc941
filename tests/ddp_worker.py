"""Two real ``torch.distributed`` ranks (gloo, 127.0.0.1) training a tiny model under
``DistributedDataParallel`` on ``BenDataset``: ``python -m tests.ddp_worker ROOT PORT OUT_DIR``.

Each rank writes ``OUT_DIR/rank<k>.json`` (its steps, samples and final weights). Run it under a
timeout: ranks with unequal batch counts hang in the gradient all-reduce.
"""

from __future__ import annotations

import json
import os
import sys

EPOCHS = 2
BATCH = 4
WORKERS = 2


def run(rank: int, root: str, port: int, out_dir: str, world_size: int = 2) -> None:
    """One rank: a few DDP steps per epoch over its share of the train split."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader

    from bigearthnet_beam.trainer.torch_data import BenDataset

    torch.manual_seed(0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        ds = BenDataset(root, "train", shuffle=True, seed=0, with_ids=True)  # rank and world from torch.distributed
        model = DistributedDataParallel(torch.nn.Conv2d(14, 19, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
        steps, ids = 0, []
        for epoch in range(EPOCHS):
            ds.set_epoch(epoch)
            for batch in DataLoader(ds, batch_size=BATCH, num_workers=WORKERS):
                opt.zero_grad()
                loss_fn(model(batch["image"]), batch["mask"]).backward()  # the gradients' all-reduce
                opt.step()
                steps += 1
                ids += list(batch["patch_id"])
        dist.barrier()
        weights = [p.detach().flatten().tolist() for p in model.parameters()]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump({"rank": ds.rank, "world": ds.world_size, "steps": steps, "ids": ids, "weights": weights}, fh)
    finally:
        dist.destroy_process_group()


def main(argv: list[str]) -> None:
    """Spawn the two ranks and wait for them."""
    import torch.multiprocessing as mp

    root, port, out_dir = argv[0], int(argv[1]), argv[2]
    mp.spawn(run, args=(root, port, out_dir), nprocs=2, join=True)


if __name__ == "__main__":
    main(sys.argv[1:])
