"""What a build did: per split, input rows = written + failed + filtered + duplicates, by reason.

``SplitReport`` counts one split (the map counts per partition, the reduce adds duplicates and sums
the partitions); ``BuildReport`` is what ``vldata.build`` returns and the CLI prints. Plain counters:
no I/O, no knowledge of formats or datasets.
They must not do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SplitReport:
    input_rows: int = 0
    written: int = 0
    failed: int = 0
    filtered: int = 0
    duplicates: int = 0
    reasons: dict[str, dict[str, int]] = field(default_factory=lambda: {"failed": {}, "filtered": {}, "duplicates": {}})
    notes: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, reason: str, n: int = 1) -> None:
        setattr(self, kind, getattr(self, kind) + n)
        self.reasons[kind][reason] = self.reasons[kind].get(reason, 0) + n

    @property
    def balanced(self) -> bool:
        return self.input_rows == self.written + self.failed + self.filtered + self.duplicates

    def as_dict(self) -> dict:
        return {"input_rows": self.input_rows, "written": self.written, "failed": self.failed,
                "filtered": self.filtered, "duplicates": self.duplicates,
                "reasons": {k: dict(sorted(v.items())) for k, v in self.reasons.items()},
                "notes": dict(sorted(self.notes.items()))}


@dataclass
class BuildReport:
    """What a build did, per split; ``str()`` is the human summary the CLI prints."""

    builder: str
    out: Path
    splits: dict[str, SplitReport]
    formats: tuple[str, ...]
    shards: dict[str, int] = field(default_factory=dict)  # format -> number of shards

    @property
    def totals(self) -> SplitReport:
        t = SplitReport()
        for s in self.splits.values():
            for k in ("input_rows", "written"):
                setattr(t, k, getattr(t, k) + getattr(s, k))
            for kind, reasons in s.reasons.items():
                for r, n in reasons.items():
                    t.add(kind, r, n)
            for r, n in s.notes.items():
                t.notes[r] = t.notes.get(r, 0) + n
        return t

    def __str__(self) -> str:
        lines = [f"{self.builder} -> {self.out}  ({', '.join(f'{f}: {n} shards' for f, n in self.shards.items())})"]
        for name, s in self.splits.items():
            lines.append(f"  {name}: input_rows={s.input_rows} = written {s.written} + failed {s.failed}"
                         f" + filtered {s.filtered} + duplicates {s.duplicates}"
                         f"  [{'exact' if s.balanced else 'MISMATCH'}]")
            for kind, reasons in s.reasons.items():
                for r, n in sorted(reasons.items()):
                    lines.append(f"    {kind:<10} {r:<32} {n}")
            for r, n in sorted(s.notes.items()):
                lines.append(f"    {'note':<10} {r:<32} {n}")
        return "\n".join(lines)


def merge_counts(report: SplitReport, doc: dict) -> None:
    """Add the counts of ``doc`` (a ``SplitReport.as_dict()``) to ``report``."""
    report.input_rows += doc["input_rows"]
    report.written += doc["written"]
    for kind, reasons in doc["reasons"].items():
        for r, n in reasons.items():
            report.add(kind, r, n)
    for r, n in doc["notes"].items():
        report.notes[r] = report.notes.get(r, 0) + n
