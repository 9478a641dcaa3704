"""Two checkouts of vldata read the same cached tars alternately: does a change cost the loader CPU?

Usage: python bench/loader_ab.py OLD_ROOT NEW_ROOT DATASET [DATASET ...] [--rounds 3]
OLD_ROOT/NEW_ROOT are repository folders (e.g. ``git worktree add /tmp/orig <rev>``); each DATASET is a
build folder with ``webdataset/`` (bench/loader.py caches them in /tmp/vldata-bench-loader). Each run
is a fresh process that iterates ``TorchDataset(batch_size=256, decode="cpu", image_size=224)`` through
a DataLoader with 2 workers and prints CPU ms per image (process plus workers, start-up included).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

JOB = r'''
import resource, sys
sys.path.insert(0, sys.argv[1])
import vldata
from torch.utils.data import DataLoader
ds = vldata.TorchDataset(vldata.open(sys.argv[2] + "/webdataset"), batch_size=256, decode="cpu", image_size=224, seed=0)
n = sum(b["image"].shape[0] for b in DataLoader(ds, batch_size=None, num_workers=2))
r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(n, r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime)
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for dataset in args.datasets:
        for _ in range(args.rounds):
            for name, root in (("old", args.old), ("new", args.new)):
                out = subprocess.run([sys.executable, "-c", JOB, root, dataset], capture_output=True, text=True,
                                     env={**os.environ, "PYTHONPATH": root}, cwd="/", check=True)
                n, cpu = out.stdout.split()[-2:]
                print(f"{dataset}  {name}  {float(cpu) / int(n) * 1000:.3f} CPU ms/img", flush=True)


if __name__ == "__main__":
    main()
