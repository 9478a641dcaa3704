"""``make demo``: every installed builder, end to end, on its own synthetic sample.

For each builder: write its sample raw input, build both formats (``vldata.build`` runs the
services a sample needs, such as the loopback HTTP server of a URL-based sample), validate what was built,
and print the accounting and a summary. Usage: ``python -m vldata.demo OUT_DIR``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from . import api, registry
from .inspect import summary
from .validate import validate


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
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
