"""``make demo``: every installed builder, end to end, on its own synthetic sample.

For each builder: write its sample raw input, build both formats (``vldata.build`` runs the
services a sample needs, such as the loopback HTTP server of a URL-based sample), validate what was built,
and print the accounting and a summary; curate each with ``vldata select`` (MetaCLIP's balancing over a
few entries, online: a fresh draw per epoch); then mix all of them and load a few decoded batches
through a two-worker DataLoader. Usage: ``python -m vldata.tools.demo OUT_DIR``.
It must not do anything a user could not do with the public API: it only calls ``vldata.build``,
``validate``, ``inspect``, ``select`` (what ``vldata select`` runs), ``open``, ``Mix`` and ``TorchDataset``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from vldata.write import api, registry
from vldata.tools.inspect import summary
from vldata.tools.validate import validate


def main(out: str = "demo-out") -> int:
    root = Path(out)
    shutil.rmtree(root, ignore_errors=True)
    failures = 0
    for name in registry.list_builders():
        raw, built = root / name / "raw", root / name / "out"
        t0 = time.perf_counter()
        builder = registry.get_builder(name)
        builder.write_sample(raw, 24, 0)
        report = api.build(name, raw, built, workers=2)  # starts the sample's services (e.g. its loopback server)
        problems = validate(built)
        elapsed = time.perf_counter() - t0
        print(f"== {name}: sample -> build -> validate in {elapsed:.1f}s")
        print(report)
        print(summary(built))
        print(f"validate: {'OK' if not problems else problems}")
        failures += bool(problems)
    print(f"\nbuilt {len(registry.list_builders())} dataset(s) under {root}/; "
          f"load one with datasets.load_dataset('{root}/<name>/out/parquet')")
    failures += curate(root, registry.list_builders())
    load_a_few_batches(root, registry.list_builders())
    return 1 if failures else 0


# MetaCLIP-style entries for the samples' captions (MetaCLIP's own list is the user's to bring: CC-BY-NC)
DEMO_ENTRIES = ("the", "of", "dog", "dogs", "cat", "car", "bird", "flower", "tree", "photo", "skin", "rash", "red",
                "a photo of", "image", "CT", "MRI")


def curate(root: Path, names: list[str]) -> int:
    """``vldata select BUILD balanced --metaclip ENTRIES --t 3 --online`` on every sample build: the
    shards stay as they are, the subset is a small file; returns the number of failed selections."""
    from vldata.errors import StructuralError
    from vldata.read.source import open as open_source
    from vldata.tools.select import MetaClip, select

    entries = root / "entries.txt"
    entries.write_text("\n".join(DEMO_ENTRIES) + "\n")
    print(f"\n== curate: MetaCLIP balancing (t=3, online) over {len(DEMO_ENTRIES)} entries")
    failed = 0
    for name in names:
        out = root / name / "out"
        try:  # vldata select OUT balanced --metaclip ENTRIES --t 3 --online
            print(select(out, "balanced", MetaClip(entries, 3, online=True, workers=1)))
        except StructuralError as e:
            print(f"vldata select {out}: {e}")
            failed += 1
            continue
        print(f"   vldata.open('{out}', subset='balanced'): {len(open_source(out, subset='balanced'))} "
              "candidates, drawn anew each epoch")
    return failed


def load_a_few_batches(root: Path, names: list[str], batches: int = 3) -> None:
    """Mix every built sample with equal weights and read a few decoded batches through a
    DataLoader with two workers, as a training loop would."""
    from collections import Counter

    from torch.utils.data import DataLoader

    from vldata.read.mix import Mix
    from vldata.read.source import open as open_source
    from vldata.read.torch_dataset import TorchDataset

    mix = Mix({n: open_source(root / n / "out") for n in names}, seed=0, stop="all_exhausted")
    ds = TorchDataset(mix, batch_size=8, decode="cpu", image_size=64, seed=0)
    print(f"\n== mix of {', '.join(names)}: {ds.plan().epoch_length} samples per epoch, "
          f"{len(ds)} batches of 8, padding {ds.plan().padding}")
    sources: Counter = Counter()
    for i, batch in enumerate(DataLoader(ds, batch_size=None, num_workers=2)):
        if i == batches:
            break
        sources.update(batch["source"])
        print(f"batch {i}: image {tuple(batch['image'].shape)} {batch['image'].dtype}, "
              f"sources {dict(Counter(batch['source']))}, first text: {batch['text'][0][:60]!r}")
    print(f"read {sum(sources.values())} samples in {batches} batches: {dict(sources)}")


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
