"""The engine with a builder defined here: filtered rows, dedup on nested columns, --limit, splits."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq

from fakes.toy import png_image
from vldata import Builder, Failed, Filtered, Image, Partition, Record
from vldata.describe.card import card_file
from vldata.write.engine import run_build


def png(shade: int) -> Image:
    return png_image((4, 4), shade)


class Pair(Record):
    image: Image
    url: str | None


class PairBuilder(Builder):
    """Rows i = 0..n-1 per split: every 5th is filtered, every 7th fails, shade i % 4 repeats images."""

    name, version, Record = "pairs", "0.0.1", Pair

    def dedup_on(self) -> dict[str, str]:
        return {"image": "image_info.sha256", "url": "url"}

    def partitions(self, raw: Path) -> list[Partition]:
        return [Partition(index=i, split=split, payload=(split, start), input_rows=4)
                for i, (split, start) in enumerate([("train", 0), ("train", 4), ("test", 0)])]

    def records(self, partition, ctx):
        split, start = partition.payload
        for i in range(start, start + partition.input_rows):
            key = f"{split}_{i}"
            if i == 5:
                yield Filtered(key, "too_small", "filtered on purpose", f"row {i}")
            elif i == 6:
                yield Failed(key, "broken", "failed on purpose", f"row {i}")
            else:
                yield Pair(key=key, text=f"row {i}", image=png(i if i < 3 else i % 3),
                           url=None if i == 7 else f"http://h/{i % 6}")

    def card_path(self) -> Path:
        return card_file("scin")


def test_filtered_failed_and_nested_dedup_are_counted(tmp_path):
    report = run_build(PairBuilder(), tmp_path, tmp_path / "out", formats=("parquet",))
    train, test = report.splits["train"], report.splits["test"]
    # train rows 0..7: 0,1,2 written; 3 and 4 repeat images 0 and 1; 5 filtered; 6 failed; 7 repeats image 1
    assert (train.input_rows, train.written, train.failed, train.filtered, train.duplicates) == (8, 3, 1, 1, 3)
    assert train.reasons["duplicates"] == {"duplicate_image": 3}
    # test rows 0..3 are new keys, but images and URLs were already written in train: dedup is global
    assert (test.written, test.duplicates) == (0, 4) and test.balanced
    rows = pq.read_table(tmp_path / "out" / "parquet" / "data").to_pylist()
    assert sorted(r["key"] for r in rows) == ["train_0", "train_1", "train_2"]
    failures = pq.read_table(tmp_path / "out" / "build" / "failures.parquet").to_pylist()
    assert len(failures) == train.input_rows + test.input_rows - 3
    assert {f["reason"] for f in failures} == {"too_small", "broken", "duplicate_image"}


def test_limit_takes_the_first_rows_in_order(tmp_path):
    report = run_build(PairBuilder(), tmp_path, tmp_path / "out", formats=("parquet",), limit=6)
    assert report.splits["train"].input_rows == 6 and "test" not in report.splits
    assert report.splits["train"].filtered == 1


class Captioned(Record):
    text_members = {"alt": "alt_text"}
    image: Image
    alt_text: str | None


class CaptionedBuilder(PairBuilder):
    name, Record = "captioned", Captioned

    def dedup_on(self) -> dict[str, str]:
        return {}

    def partitions(self, raw: Path) -> list[Partition]:
        return [Partition(index=0, split="train", payload=None, input_rows=3)]

    def records(self, partition, ctx):
        for i in range(3):
            yield Captioned(key=f"c{i}", text=f"main {i}", image=png(i), alt_text=None if i == 1 else f"alt {i}")


def test_extra_text_members_are_written_and_read_back(tmp_path):
    import subprocess
    import sys
    import tarfile

    import vldata

    run_build(CaptionedBuilder(), tmp_path, tmp_path / "out", formats=("webdataset",), shuffle=None)  # src[i] = row i
    tar = next((tmp_path / "out" / "webdataset").glob("*.tar"))
    with tarfile.open(tar) as t:
        members = {m.name: t.extractfile(m).read() for m in t}
    assert members["c0.alt.txt"] == b"alt 0" and "c1.alt.txt" not in members and members["c2.txt"] == b"main 2"
    src = vldata.open(tmp_path / "out" / "webdataset")
    assert src.manifest["image_members"] == ["jpg"]  # text members are not images
    assert src[0]["alt.txt"] == "alt 0" and src[0]["alt_text"] == "alt 0" and "alt.txt" not in src[1]
    reader = ("import datasets, sys; d = datasets.load_dataset(sys.argv[1])['train']; "
              "print(sorted(r['alt.txt'] or '-' for r in d))")
    proc = subprocess.run([sys.executable, "-c", reader, str(tmp_path / "out" / "webdataset")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "['-', 'alt 0', 'alt 2']"


class TablesBuilder(PairBuilder):
    """PairBuilder with a side table and a scratch file written while partitioning."""

    def partitions(self, raw: Path) -> list[Partition]:
        self.scratch.mkdir(parents=True, exist_ok=True)
        (self.scratch / "spill.txt").write_text("intermediate")
        return super().partitions(raw)

    def side_tables(self, raw: Path) -> dict:
        import pyarrow as pa

        return {"classes": pa.table({"label": ["/m/a", "/m/b"], "display_name": ["Cat", "Dog"]})}


def test_side_tables_are_written_listed_validated_and_published_and_scratch_is_removed(tmp_path):
    from vldata.tools.publish import plan_publish
    from vldata.tools.validate import validate

    out = tmp_path / "out"
    run_build(TablesBuilder(), tmp_path, out)
    for fmt in ("parquet", "webdataset"):
        table = pq.read_table(out / fmt / "tables" / "classes.parquet")
        assert table.column("display_name").to_pylist() == ["Cat", "Dog"]
        entry = __import__("json").loads((out / fmt / "vldata.json").read_text())["tables"]["classes"]
        assert entry["path"] == "tables/classes.parquet" and entry["num_rows"] == 2
    assert not (out / "build" / "scratch").exists()  # intermediate files go when the build completes
    assert validate(out) == []
    plan = plan_publish(out, "org/pairs")
    assert all("tables/classes.parquet" in {f.path for f in r.files} for r in plan.repos)
    (out / "webdataset" / "tables" / "classes.parquet").write_bytes(b"not parquet")
    assert any("classes.parquet" in p for p in validate(out))


class Grouped(Record):
    image: Image
    group: str


class ManyRowsBuilder(Builder):
    """300 small rows in partitions of ``size`` rows, with a balance field."""

    name, version, Record = "many", "0.0.1", Grouped
    balance_fields = ("group",)

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def partitions(self, raw: Path) -> list[Partition]:
        return [Partition(index=i, split="train", payload=start, input_rows=min(self.size, 300 - start))
                for i, start in enumerate(range(0, 300, self.size))]

    def records(self, partition, ctx):
        for i in range(partition.payload, partition.payload + partition.input_rows):
            yield Grouped(key=f"r{i}", text=f"row {i} " * (i % 5), image=png(i % 250), group=f"g{i % 7}")

    def card_path(self) -> Path:
        return card_file("scin")


def test_shards_and_values_do_not_depend_on_partition_size(tmp_path):
    digests = []
    for size in (7, 64, 300):
        out = tmp_path / f"out{size}"
        run_build(ManyRowsBuilder(size), tmp_path, out, formats=("parquet", "webdataset"))
        files = sorted(p for p in out.rglob("*") if p.suffix in (".parquet", ".tar") and "build" not in p.parts)
        assert len(files) == 4  # a parquet shard, a tar, and the values file in each folder
        digests.append({p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    assert digests[0] == digests[1] == digests[2]


def test_a_reader_that_fails_mid_partition_fails_only_the_rows_it_did_not_yield(tmp_path):
    """The engine's last resort: the partition is committed, the unread rows are counted as
    ``reader_error`` with a failures row each, and the accounting holds."""
    import pyarrow as pa

    from fakes.toy import Toy, records
    from vldata.write.builder import Builder, Partition
    from vldata.write.partition import build_partition, read_part

    class Breaks(Builder):
        name, version, Record = "breaks", "0", Toy

        def records(self, partition, ctx):
            yield from records("train")[:2]
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    done = build_partition(Breaks(), Partition(0, "train", None, 5), tmp_path)
    r = done["report"]
    assert (r["input_rows"], r["written"], r["failed"]) == (5, 2, 3)
    assert r["reasons"]["failed"] == {"reader_error": 3} and r["notes"] == {"reader_error_partitions": 1}
    assert [f["key"] for f in done["failures"]] == [f"partition00000_row{n:09d}" for n in (2, 3, 4)]
    assert "EOFError: Compressed file ended" in done["failures"][0]["message"]
    assert pa.Table.from_batches(list(read_part(tmp_path, 0))).num_rows == 2
