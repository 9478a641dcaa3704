"""vldata select / export-uids end to end on a DataComp-shaped LAION build (images from a mirror
folder, never the network): each rule's choice equals the rule as the test writes it, subsets are
read back by ``vldata.open(..., subset=)`` in both formats and by plain ``datasets`` as
``ds.select(indices)``, shards never change, and validate / publish see the subsets."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import read_without_vldata, run_cli, shard_hashes
from fakes.metaclip_reference import reference_substr_matching
from fakes.toy import png_image

import vldata
from vldata.read import subset as subsets

ENGLISH = "a photo of a red car parked on the street"
# (caption, metadata width, height, CLIP L/14 score): boundary rows of every DataComp threshold
ROWS = [
    (ENGLISH, 200, 200, 0.30), (ENGLISH, 199, 400, 0.31), (ENGLISH, 400, 199, 0.32),
    (ENGLISH, 600, 200, 0.33), (ENGLISH, 602, 200, 0.34), (ENGLISH, 200, 602, 0.35),
    (ENGLISH, None, None, 0.36), ("two dogs", 300, 300, 0.37), ("two brown dogs", 300, 300, 0.38),
    ("a b c", 300, 300, 0.39), ("a b cd", 300, 300, 0.40),
    ("ein kleiner Hund spielt im Schnee mit seinem roten Ball", 300, 300, 0.41),
    ("雪の中で遊ぶ小さな犬と赤いボール", 300, 300, 0.42),
    ("a dog, a cat. New York at night", 300, 300, 0.43), ("the new york city skyline at dusk", 300, 300, 0.44),
    ("a category of concatenated cats", 300, 300, 0.45), ("Dog\tand\rdog\ndog; dog!", 300, 300, 0.46),
    ("red car: red car? red car`", 300, 300, 0.47), ("", 300, 300, 0.48), (None, 300, 300, None),
]
ROWS += [(f"a dog on a beach number {i}", 300, 300, 0.50 if i < 4 else 0.20) for i in range(20)]
ENTRIES = ["dog", "cat", "red car", "new york", "york city", "New York", "dog", "car"]


def uid(i: int) -> str:
    return hashlib.md5(f"uid {i}".encode()).hexdigest()  # 32 hex characters, like DataComp's


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("select")
    raw, mirror = root / "raw", root / "mirror"
    raw.mkdir()
    rows = []
    for i, (caption, w, h, l14) in enumerate(ROWS):
        url = f"http://127.0.0.1:9/i/{i}.png"
        path = mirror / "127.0.0.1" / "i" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_image((4, 4), colour=i * 5 % 256).data)
        rows.append({"uid": uid(i), "url": url, "text": caption, "original_width": w, "original_height": h,
                     "clip_b32_similarity_score": None if l14 is None else l14 - 0.1,
                     "clip_l14_similarity_score": l14})
    pq.write_table(pa.Table.from_pylist(rows), raw / "commonpool.parquet")
    out = root / "out"
    vldata.build("laion", raw, out, mirror=str(mirror), shard_bytes={"parquet": 3000, "webdataset": 20_000})
    BEFORE.update(shard_hashes(out))
    return out


BEFORE: dict[str, str] = {}  # every shard's sha256 right after the build


def rows_of(out: Path, name: str, fmt: str = "parquet") -> list[int]:
    """The metadata rows (with repeats, in subset order) of a subset, read through vldata.open."""
    src = vldata.open(out, format=fmt, subset=name)
    return [src[i]["source_row"] for i in range(len(src))]


def cli(*args: str) -> subprocess.CompletedProcess:
    """``vldata ARGS`` in this process (the CLI's own code path, without a new interpreter per call;
    the first test runs the real command)."""
    from vldata.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def select(out: Path, *args: str) -> str:
    r = cli("select", str(out), *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_datacomp_basic_keeps_exactly_the_rows_on_the_right_side_of_every_threshold(built):
    from vldata.tools.datacomp import english

    before = shard_hashes(built)
    r = run_cli("select", str(built), "basic", "--datacomp-basic")  # the installed command, once
    assert r.returncode == 0 and "basic [train]:" in r.stdout, r.stderr

    def keep(caption, w, h) -> bool:
        return (w is not None and h is not None and min(w, h) >= 200 and max(w, h) / min(w, h) <= 3.0
                and caption is not None and len(caption.split()) > 2 and len(caption) > 5
                and bool(english([caption])[0]))

    expected = sorted(i for i, (caption, w, h, _) in enumerate(ROWS) if keep(caption, w, h))
    assert sorted(rows_of(built, "basic")) == expected
    assert {0, 3} <= set(expected) and not {1, 2, 4, 5, 6, 7, 9, 11, 12} & set(expected)  # the boundaries
    assert rows_of(built, "basic", "webdataset") == rows_of(built, "basic")
    assert shard_hashes(built) == before  # no shard rewritten
    entry = json.loads((built / "parquet" / "vldata.json").read_text())["subsets"]["basic"]
    split = entry["splits"]["train"]
    assert split["input"] == len(ROWS) and split["selected"] == len(expected)
    assert split["selected"] + sum(v for k, v in split.items() if k not in ("input", "selected", "distinct")) \
        == split["input"]  # every dropped row is counted under one reason


def test_score_top_fraction_keeps_ties_and_min_is_inclusive(built):
    select(built, "top", "--score", "similarity_l14", "--top", "0.1")
    scores = [s for *_, s in ROWS if s is not None]
    threshold = sorted(scores, reverse=True)[int(len(scores) * 0.1)]
    expected = sorted(i for i, (*_, s) in enumerate(ROWS) if s is not None and s >= threshold)
    assert threshold == 0.50 and len(expected) > int(len(scores) * 0.1)  # the tie at 0.50 is kept whole
    assert sorted(rows_of(built, "top")) == expected
    select(built, "atleast", "--score", "similarity_l14", "--min", "0.46")
    assert sorted(rows_of(built, "atleast")) == sorted(i for i, (*_, s) in enumerate(ROWS) if s is not None and s >= 0.46)


def test_uids_select_repeats_count_absent_and_export_round_trips(built, tmp_path):
    wanted = [uid(3), uid(3), uid(10), uid(25), "f" * 32, "0" * 32]  # a repeat, two uids not in the build
    pairs = np.array(sorted((int(u[:16], 16), int(u[16:], 16)) for u in wanted), dtype=np.dtype("u8,u8"))
    np.save(tmp_path / "dfn.npy", pairs)
    print(select(built, "dfn", "--uids", str(tmp_path / "dfn.npy")))
    assert sorted(rows_of(built, "dfn")) == [3, 3, 10, 25]
    assert len(vldata.open(built, subset="dfn")) == 4
    split = json.loads((built / "webdataset" / "vldata.json").read_text())["subsets"]["dfn"]["splits"]["train"]
    assert split["absent"] == 2 and split["selected"] == 4 and split["distinct"] == 3
    # a file of uids all in the build comes back byte for byte
    present = np.array(sorted((int(u[:16], 16), int(u[16:], 16)) for u in wanted[:4]), dtype=np.dtype("u8,u8"))
    np.save(tmp_path / "present.npy", present)
    select(built, "present", "--uids", str(tmp_path / "present.npy"))
    r = cli("export-uids", str(built), "--subset", "present", str(tmp_path / "back.npy"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back.npy").read_bytes() == (tmp_path / "present.npy").read_bytes()


def reference_matches(caption: str | None, entries: list[str]) -> list[int]:
    """MetaCLIP's reference matching; a null caption is an empty one."""
    return reference_substr_matching(caption or "", entries)


def test_metaclip_matches_balances_and_chains(built, tmp_path):
    (tmp_path / "entries.txt").write_text("\n".join(ENTRIES) + "\n")
    select(built, "mc", "--metaclip", str(tmp_path / "entries.txt"), "--t", "1000", "--seed", "3")
    # t above every count: each caption with a match is kept, with exactly the reference's entries
    table = pq.read_table(built / "parquet" / subsets.subset_file("mc"))
    src = vldata.open(built, format="parquet")
    got = {src[i]["source_row"]: e for i, e in zip(table["index"].to_pylist(), table["entries"].to_pylist())}
    expected = {i: reference_matches(c, ENTRIES) for i, (c, *_) in enumerate(ROWS)}
    assert got == {i: m for i, m in expected.items() if m}
    counts = pq.read_table(built / "parquet" / subsets.counts_file("mc")).to_pylist()
    tally = np.bincount([e for m in expected.values() for e in m], minlength=len(ENTRIES))
    assert {(c["entry"], c["count"]) for c in counts} == {(e, int(n)) for e, n in enumerate(tally) if n}
    # a small t balances: "dog" (in 23 captions) is drawn with p = 2/23; same seed, same subset
    select(built, "mc2", "--metaclip", str(tmp_path / "entries.txt"), "--t", "2", "--seed", "3", "--workers", "1")
    select(built, "mc2b", "--metaclip", str(tmp_path / "entries.txt"), "--t", "2", "--seed", "3", "--workers", "1")
    assert rows_of(built, "mc2") == rows_of(built, "mc2b") and len(rows_of(built, "mc2")) < len(got)
    # chained: the uid subset's rows (one twice) through MetaCLIP keep their repeat
    select(built, "dfn2", "--uids", str(_uid_file(tmp_path, [3, 3, 14, 15])))
    select(built, "chain", "--metaclip", str(tmp_path / "entries.txt"), "--t", "1000", "--from", "dfn2", "--workers", "1")
    assert sorted(rows_of(built, "chain")) == [3, 3, 14]  # row 15's "cats" / "category" match no entry
    assert json.loads((built / "parquet" / "vldata.json").read_text())["subsets"]["chain"]["from"] == "dfn2"


def _uid_file(folder: Path, rows: list[int]) -> Path:
    pairs = np.array(sorted((int(uid(i)[:16], 16), int(uid(i)[16:], 16)) for i in rows), dtype=np.dtype("u8,u8"))
    np.save(folder / "rows.npy", pairs)
    return folder / "rows.npy"


def test_online_subset_draws_per_epoch_and_resumes_exactly(built, tmp_path):
    from vldata.read.torch_dataset import TorchDataset

    (tmp_path / "entries.txt").write_text("\n".join(ENTRIES) + "\n")
    select(built, "online", "--metaclip", str(tmp_path / "entries.txt"), "--t", "3", "--online", "--workers", "1")
    src = vldata.open(built, subset="online")
    candidates = len(src)
    split = json.loads((built / "parquet" / "vldata.json").read_text())["subsets"]["online"]["splits"]["train"]
    assert 0 < split["expected_per_epoch"] < candidates == split["selected"]
    assert candidates == sum(1 for c, *_ in ROWS if reference_matches(c, ENTRIES))
    ds = TorchDataset(src, shuffle=True, seed=5, batch_size=2)
    epochs = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        epochs.append(sorted(k for batch in ds for k in batch["key"]))
    assert len({tuple(e) for e in epochs}) > 1  # a fresh draw every epoch
    for keys in epochs:  # balanced: fewer than the candidates; a repeat only as the last batch's padding
        assert len(set(keys)) < candidates and len(keys) - len(set(keys)) <= 1
    # resume mid-epoch: the same samples as the uninterrupted epoch, from where it stopped
    ds.set_epoch(2)
    it = iter(ds)
    first = [next(it) for _ in range(2)]
    state = ds.state_dict()
    again = TorchDataset(vldata.open(built, subset="online"), shuffle=True, seed=5, batch_size=2)
    again.load_state_dict(state)
    rest = [k for batch in again for k in batch["key"]]
    assert sorted([k for b in first for k in b["key"]] + rest) == epochs[2]


def test_open_subset_in_both_formats_and_in_a_mix(built, tmp_path):
    select(built, "mixme", "--score", "similarity_l14", "--min", "0.4")
    a, b = vldata.open(built, format="parquet", subset="mixme"), vldata.open(built, format="webdataset", subset="mixme")
    assert len(a) == len(b) == sum(1 for *_, s in ROWS if s is not None and s >= 0.4)
    assert [a[i]["key"] for i in range(len(a))] == [b[i]["key"] for i in range(len(b))]
    assert a[0]["image"] == b[0]["image"]
    with pytest.raises(IndexError):
        a[len(a)]
    mix = vldata.Mix({"sub": a, "all": vldata.open(built)}, weights={"sub": 1, "all": 1}, seed=0)
    plan = mix.plan()
    sources, indices = plan.sources_at(np.arange(plan.epoch_length))
    assert sorted(indices[sources == 0].tolist()) == list(range(len(a)))  # each subset sample once
    with pytest.raises(KeyError, match="no subset 'nope'"):
        vldata.open(built, subset="nope")


def test_a_webdataset_only_build_selects_the_same_samples_without_reading_images(built, tmp_path, monkeypatch):
    import shutil

    from vldata.read.source import WebDatasetSource

    def no_whole_samples(*args):
        raise AssertionError("a selection read a whole sample (its images) to get a field")

    shutil.copytree(built / "webdataset", tmp_path / "only" / "webdataset")
    for args in (("--score", "similarity_l14", "--top", "0.25"), ("--metaclip", str(_entries(tmp_path)), "--t", "5",
                                                                 "--workers", "1")):
        select(built, "both", *args, "--overwrite")
        with monkeypatch.context() as m:
            m.setattr(WebDatasetSource, "_read", no_whole_samples)
            select(tmp_path / "only", "both", *args, "--overwrite")
        assert rows_of(tmp_path / "only", "both", "webdataset") == rows_of(built, "both")
        assert (tmp_path / "only" / "webdataset" / subsets.subset_file("both")).read_bytes() == \
            (built / "parquet" / subsets.subset_file("both")).read_bytes()


def _entries(folder: Path) -> Path:
    (folder / "entries.txt").write_text("\n".join(ENTRIES) + "\n")
    return folder / "entries.txt"


def test_validate_and_publish_see_subsets_and_plain_datasets_select_them(built, tmp_path):
    select(built, "pub", "--score", "similarity_l14", "--top", "0.5")
    r = cli("validate", str(built))
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("publish", str(built), "--repo", "org/name", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "subsets/pub.parquet" in r.stdout
    reader = textwrap.dedent('''
        import json, sys
        import datasets, pyarrow.parquet as pq, pyarrow.compute as pc
        out = sys.argv[1]
        result = {}
        for fmt, key in (("parquet", "key"), ("webdataset", "__key__")):
            subset = pq.read_table(out + "/" + fmt + "/subsets/pub.parquet")
            indices = subset.filter(pc.equal(subset["split"], "train"))["index"].to_pylist()
            ds = datasets.load_dataset(out + "/" + fmt, split="train")
            result[fmt] = {"keys": list(ds.select(indices)[key]), "n": len(ds)}
        result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("vldata", "builders"))
        print(json.dumps(result))
    ''')
    result = read_without_vldata(reader, built)
    src = vldata.open(built, subset="pub")
    expected = [src[i]["key"] for i in range(len(src))]
    assert result["parquet"]["keys"] == result["webdataset"]["keys"] == expected
    assert result["parquet"]["n"] == len(ROWS) - 0 - _failed(built)  # the subset file is not read as data


def _failed(out: Path) -> int:
    stats = json.loads((out / "build" / "stats.json").read_text())["splits"]["train"]
    return stats["input_rows"] - stats["written"]


def test_hostile_subsets_and_missing_fields_are_one_line_errors(built, tmp_path):
    select(built, "victim", "--score", "similarity_l14", "--min", "0.3")
    path = built / "parquet" / subsets.subset_file("victim")
    good = path.read_bytes()
    try:
        path.write_bytes(good[:-10] + b"\0" * 10)
        r = cli("validate", str(built))
        assert r.returncode == 1 and "subsets/victim.parquet: sha256 differs" in r.stdout
        with pytest.raises(vldata.ShardError, match="victim.parquet"):
            vldata.open(built, format="parquet", subset="victim")
    finally:
        path.write_bytes(good)
    r = cli("select", str(built), "x", "--score", "no_such_field", "--min", "0")
    assert r.returncode == 2 and "needs the field 'no_such_field'" in r.stderr and len(r.stderr.splitlines()) == 1
    r = cli("select", str(built), "x", "--score", "caption", "--top", "0.5")
    assert r.returncode == 2 and "not a numeric field" in r.stderr
    r = cli("select", str(built), "victim", "--datacomp-basic")
    assert r.returncode == 2 and "exists" in r.stderr
    r = cli("select", str(built), "../x", "--datacomp-basic")
    assert r.returncode == 2 and "subset name" in r.stderr
    r = cli("select", str(built), "x", "--metaclip", str(tmp_path / "missing.txt"), "--t", "5")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    r = cli("select", str(built), "x", "--datacomp-basic", "--top", "0.3")
    assert r.returncode == 2 and "--top does not go with --datacomp-basic" in r.stderr
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    r = cli("select", str(built), "x", "--uids", str(tmp_path / "bad.npy"))
    assert r.returncode == 2 and "bad.npy" in r.stderr
    manifest = json.loads((built / "parquet" / "vldata.json").read_text())
    manifest["subsets"]["victim"]["path"] = "../../etc/passwd"
    with pytest.raises(vldata.ShardError, match="outside"):
        from vldata.layout import read_checked_manifest

        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "vldata.json").write_text(json.dumps(manifest))
        read_checked_manifest(tmp_path / "m")


def test_a_subset_with_repeats_feeds_persistent_workers_every_epoch(built, tmp_path):
    from torch.utils.data import DataLoader

    from vldata.read.torch_dataset import TorchDataset

    select(built, "twice", "--uids", str(_uid_file(tmp_path, [3, 3, 10, 21, 22, 23, 24, 25])))
    src = vldata.open(built, subset="twice")
    expected = sorted(src[i]["key"] for i in range(len(src)))
    assert len(expected) == 8 and len(set(expected)) == 7
    src[0]  # a peek in the parent before the workers fork
    ds = TorchDataset(src, shuffle=True, seed=1, batch_size=4)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    for epoch in range(2):
        ds.set_epoch(epoch)
        assert sorted(k for batch in loader for k in batch["key"]) == expected
    assert "subset twice: uids: train 8 of" in cli("inspect", str(built)).stdout


def test_a_subset_file_that_lies_is_refused_before_use(built, tmp_path):
    import shutil

    select(built, "honest", "--score", "similarity_l14", "--min", "0.2")
    folder = tmp_path / "parquet"
    shutil.copytree(built / "parquet", folder)
    manifest = json.loads((folder / "vldata.json").read_text())
    n = manifest["splits"]["train"]["num_samples"]
    cases = {"outside": ([n], None), "unsorted": ([2, 1], None), "split": ([0], "test"),
             "bomb": ([0] * 2_000_000, None)}  # a few KB that expand to 2M rows
    for name, (indices, split) in cases.items():
        table = subsets.to_table({split or "train": (np.array(indices, dtype=np.int64), None, None)})
        data = subsets.table_bytes(table)
        (folder / subsets.subset_file(name)).write_bytes(data)
        entry = dict(manifest["subsets"]["honest"], path=subsets.subset_file(name), num_bytes=len(data),
                     sha256=hashlib.sha256(data).hexdigest(), splits={split or "train": {"input": n, "selected": len(indices)}})
        manifest["subsets"][name] = entry
    (folder / "vldata.json").write_text(json.dumps(manifest))
    messages = {"outside": "an index outside", "unsorted": "not sorted", "split": "not a split",
                "bomb": "decompression bomb"}
    for name, message in messages.items():
        with pytest.raises(vldata.ShardError, match=message):
            vldata.open(folder, subset=name)
    from vldata.tools.validate import validate

    problems = validate(folder)
    assert all(any(m in p for p in problems) for m in messages.values()), problems
    # a subset file swapped for a link out of the folder is not followed
    (folder / subsets.subset_file("honest")).unlink()
    (folder / subsets.subset_file("honest")).symlink_to(built / "parquet" / subsets.subset_file("honest"))
    with pytest.raises(vldata.ShardError, match="outside"):
        vldata.open(folder, subset="honest")


def test_metaclip_counts_that_lie_are_refused(built, tmp_path):
    import shutil

    (tmp_path / "entries.txt").write_text("\n".join(ENTRIES) + "\n")
    select(built, "counted", "--metaclip", str(tmp_path / "entries.txt"), "--t", "3", "--online", "--workers", "1")
    folder = tmp_path / "parquet"
    shutil.copytree(built / "parquet", folder)
    manifest = json.loads((folder / "vldata.json").read_text())
    original = pq.read_table(folder / subsets.counts_file("counted")).to_pylist()
    lies = {"one more": ([dict(r, count=r["count"] + (i == 0)) for i, r in enumerate(original)],
                         "not the counts of the stored matches"),
            "huge id": (original + [{"split": "train", "entry": 2**31 - 1, "count": 1}], "out of range"),
            "missing": (original[1:], "an entry without a count")}
    for rows, message in lies.values():
        data = subsets.table_bytes(pa.Table.from_pylist(rows, schema=subsets.COUNTS_SCHEMA))
        (folder / subsets.counts_file("counted")).write_bytes(data)
        manifest["subsets"]["counted"]["counts"].update(num_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        (folder / "vldata.json").write_text(json.dumps(manifest))
        with pytest.raises(vldata.ShardError, match=message):
            vldata.open(folder, subset="counted")


def test_no_selection_rewrote_a_shard(built):
    """Runs last: after every selection above (and their manifests), the shards are the build's."""
    assert BEFORE and shard_hashes(built) == BEFORE
    listed = json.loads((built / "webdataset" / "vldata.json").read_text())["subsets"]
    assert len(listed) >= 10 and listed == json.loads((built / "parquet" / "vldata.json").read_text())["subsets"]
