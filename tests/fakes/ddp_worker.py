"""Run under torchrun: each rank reads its slice of a built dataset through StatefulDataLoader.

argv: OUT RESULT_DIR STOP_AFTER. Writes RESULT_DIR/rank{r}.json with the keys of a full epoch, the
keys of the first STOP_AFTER batches, and the keys after resuming from the state saved there.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist
from torchdata.stateful_dataloader import StatefulDataLoader

import vldata


def loader(src):
    ds = vldata.TorchDataset(src, batch_size=3, seed=11)  # rank and world size from torch.distributed
    return ds, StatefulDataLoader(ds, batch_size=None, num_workers=2)


def main(out: str, result_dir: str, stop_after: int) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    src = vldata.open(out)
    ds, dl = loader(src)
    full = [b["key"] for b in dl]
    ds, dl = loader(src)
    it = iter(dl)
    head = [next(it)["key"] for _ in range(stop_after)]
    state = dl.state_dict()
    del it
    ds, dl = loader(src)
    dl.load_state_dict(state)
    tail = [b["key"] for b in dl]
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world": dist.get_world_size(), "full": full, "resumed": head + tail,
         "padding": ds.plan().padding}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
