"""``vldata.open`` on a plain Hugging Face parquet dataset (no vldata.json): the rows ``datasets`` reads,
described from the README and the footers alone, over HTTP by range requests, hostile input in one line.

The datasets are written here with ``datasets`` itself in the layout ``push_to_hub`` uses
(``data/{split}-00000-of-00002.parquet`` and a README whose front matter lists ``configs``).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from fakes.range_server import RangeServer
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

import vldata
from vldata.layout import valid_key
from vldata.read import hf_parquet
from vldata.read.source import ShardError

README = """---
dataset_info:
  features:
  - name: image
    dtype: image
  - name: caption
    dtype: string
  - name: label
    dtype: int64
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: test
    path: data/test-*
---
# A small dataset

Written by the test.
"""
SHARDS = {"train": [8, 7], "test": [5]}  # rows per shard; shards written with row groups of 3 rows


def _image(seed: int, fmt: str) -> bytes:
    """A 128x128 noise image (tens of kB): a shard is several times one footer read."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def _write(path: Path, columns: dict, images: tuple[str, ...] = ("image",)) -> None:
    ds = datasets.Dataset.from_dict(columns)
    for name in images:
        ds = ds.cast_column(name, datasets.Image())
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path), batch_size=3)


def _write_hub_folder(folder: Path, readme: str | None = README) -> Path:
    n = 0
    for split, sizes in SHARDS.items():
        for i, size in enumerate(sizes):
            rows = range(n, n + size)
            _write(folder / f"data/{split}-{i:05d}-of-{len(sizes):05d}.parquet", {
                "image": [{"bytes": _image(r, "PNG" if r % 2 else "JPEG"), "path": None} for r in rows],
                "caption": [f"caption {r}" for r in rows],
                "label": list(rows)})
            n += size
    if readme is not None:
        (folder / "README.md").write_text(readme)
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    return _write_hub_folder(tmp_path_factory.mktemp("hub") / "site" / "tiny-captions")


def _reference(files: list[Path], cache: Path) -> datasets.Dataset:
    ds = datasets.load_dataset("parquet", data_files={"train": [str(f) for f in files]}, split="train",
                               cache_dir=str(cache))
    return ds.cast_column("image", datasets.Image(decode=False))


def test_open_gives_the_rows_datasets_reads(hub, tmp_path):
    src = vldata.open(hub)
    ref = _reference(sorted((hub / "data").glob("train-*.parquet")), tmp_path / "cache")
    assert len(src) == len(ref) == sum(SHARDS["train"])
    assert src.name == "tiny-captions" and src.shard_sizes == tuple(SHARDS["train"])
    for i, row in enumerate(ref):
        sample = src[i]
        assert set(sample) == {"key", "image", "text", "source", "caption", "label"}
        assert sample["image"] == row["image"]["bytes"] and sample["text"] == sample["caption"] == row["caption"]
        assert sample["label"] == row["label"] and sample["source"] == "tiny-captions"
    keys = [src[i]["key"] for i in range(len(src))]
    assert keys[0] == "data_train-00000-of-00002_0" and keys[8] == "data_train-00001-of-00002_0"
    assert len(set(keys)) == len(keys) and all(valid_key(k) for k in keys)
    assert [src[i]["label"] for i in (14, 0, 9, 3)] == [14, 0, 9, 3]  # random access, any order
    for shard in src.shards:  # row-group sizes are the footers'
        meta = pq.ParquetFile(hub / shard["path"]).metadata
        assert shard["row_groups"] == [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] != [shard["num_samples"]]
    test = vldata.open(hub, split="test")
    assert len(test) == 5 and test[0]["label"] == 15


def test_a_footer_longer_than_the_first_read_is_read_whole(hub, monkeypatch):
    whole = vldata.open(hub).manifest
    monkeypatch.setattr(hf_parquet, "FOOTER_TAIL", 64)
    assert vldata.open(hub).manifest == whole


def test_over_http_open_lists_one_folder_and_reads_footers_by_range(hub):
    local = vldata.open(hub)
    sizes = {f"tiny-captions/{p.relative_to(hub)}": p.stat().st_size for p in hub.rglob("*.parquet")}
    with RangeServer(hub.parent, listing=True) as srv:
        src = vldata.open(srv.url("tiny-captions"))
        listed = {path.rstrip("/") for method, path, _, _ in srv.requests if (hub.parent / path).is_dir()}
        assert listed == {"tiny-captions/data"}  # only the folder the README's patterns need
        readme = [r for r in srv.requests if r[1].endswith("README.md")]
        assert [r[2] for r in readme] == [f"bytes=0-{hf_parquet.README_LIMIT - 1}"]
        shard_gets = [r for r in srv.requests if r[0] == "GET" and r[1] in sizes]
        assert {r[1] for r in shard_gets} == {f"tiny-captions/{s['path']}" for s in local.shards}  # not the test split
        for path in {r[1] for r in shard_gets}:
            reads = [r for r in shard_gets if r[1] == path]
            tail = min(sizes[path], hf_parquet.FOOTER_TAIL)
            assert [(r[2], r[3]) for r in reads] == [(f"bytes={sizes[path] - tail}-{sizes[path] - 1}", tail)]
            assert tail < sizes[path] / 2
        assert src.manifest["splits"]["train"] == local.manifest["splits"]["train"]

        srv.reset()
        i = len(src) - 2
        shard, _ = src.locate(i)
        assert src[i] == {**local[i], "source": "tiny-captions"}
        path = f"tiny-captions/{src.shards[shard]['path']}"
        gets = [r for r in srv.requests if r[0] == "GET"]
        assert {r[1] for r in gets} == {path}  # footer and one row group of that shard, nothing listed
        assert all(r[2] is not None for r in gets) and sum(r[3] for r in gets) < sizes[path]


def test_custom_columns_a_key_column_and_images_without_bytes(tmp_path):
    folder = tmp_path / "photos"
    rows = range(4)
    _write(folder / "data/train-00000-of-00001.parquet", {
        "id": [f"item/{r}" for r in rows],
        "photo": [{"bytes": _image(r, "PNG"), "path": None} if r != 2 else {"bytes": None, "path": "/etc/passwd"}
                  for r in rows],
        "thumb": [{"bytes": _image(10 + r, "JPEG"), "path": None} for r in rows],
        "caption": [f"caption {r}" for r in rows],
        "alt": [f"alt {r}" for r in rows]}, images=("photo", "thumb"))
    auto = vldata.open(folder)  # no column named image: the first Image feature; caption is the text
    assert auto[0]["image"] == _image(0, "PNG") and auto[0]["text"] == "caption 0" and auto[0]["key"] == "item/0"
    assert auto[0]["thumb"] == _image(10, "JPEG")
    assert auto[2]["image"] is None and auto[2]["photo"] is None  # a path alone is never followed
    chosen = vldata.open(folder, image="thumb", text="alt")
    sample = chosen[1]
    assert sample["image"] == sample["thumb"] == _image(11, "JPEG") and sample["photo"] == _image(1, "PNG")
    assert sample["text"] == "alt 1" and sample["caption"] == "caption 1" and sample["id"] == sample["key"] == "item/1"
    with pytest.raises(ValueError, match=r"train-00000-of-00001\.parquet: no text column 'nope'"):
        vldata.open(folder, text="nope")
    with pytest.raises(ValueError, match=r"column 'caption' holds string, not encoded images"):
        vldata.open(folder, image="caption")


def test_layouts_without_a_readme(hub, tmp_path):
    flat = tmp_path / "flat"
    shutil.copytree(hub, flat)
    (flat / "README.md").unlink()
    assert [vldata.open(flat)[i] for i in range(15)] == [{**vldata.open(hub)[i], "source": "flat"} for i in range(15)]

    by_folder = tmp_path / "by_folder"  # {split}/*.parquet: same stems in two splits, keys still differ
    for split in SHARDS:
        (by_folder / split).mkdir(parents=True)
        shutil.copy(next((hub / "data").glob(f"{split}-00000-*.parquet")), by_folder / split / "0000.parquet")
    train, test = vldata.open(by_folder), vldata.open(by_folder, split="test")
    assert len(train) == 8 and len(test) == 5 and train[0]["key"] != test[0]["key"]
    assert train[0]["key"] == "train_0000_0"

    nested = tmp_path / "nested"  # data/{split}/*.parquet
    shutil.copytree(by_folder, nested / "data")
    assert len(vldata.open(nested, split="test")) == 5


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message and len(message) < 400
    return message


def test_hostile_folders_fail_in_one_line_naming_the_file(hub, tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(hub, tmp_path / name))

    junk = copy("junk")
    (junk / "data/train-00001-of-00002.parquet").write_bytes(b"not parquet at all " * 200)
    with pytest.raises(ShardError, match=r"train-00001-of-00002\.parquet: not a parquet file") as e:
        vldata.open(junk)
    _one_line(e)

    cut = copy("cut")
    shard = cut / "data/train-00000-of-00002.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[:-400] + data[-8:])  # the footer's length now points before its start
    with pytest.raises(ShardError, match=r"train-00000-of-00002\.parquet: ") as e:
        vldata.open(cut)
    _one_line(e)

    fifo = copy("fifo")  # a FIFO never ends: it must be refused before anything reads it
    os.mkfifo(fifo / "data/train-00002-of-00002.parquet")
    with pytest.raises(ShardError, match=r"train-00002-of-00002\.parquet: not a regular file"):
        vldata.open(fifo)
    (fifo / "data/train-00002-of-00002.parquet").unlink()
    (fifo / "README.md").unlink()
    os.mkfifo(fifo / "README.md")
    with pytest.raises(ValueError, match=r"README\.md: not a regular file"):
        vldata.open(fifo)

    link = copy("link")
    outside = tmp_path / "outside.parquet"
    (link / "data/train-00000-of-00002.parquet").rename(outside)
    (link / "data/train-00000-of-00002.parquet").symlink_to(outside)
    with pytest.raises(ShardError, match=r"train-00000-of-00002\.parquet: leads outside"):
        vldata.open(link)

    for name, readme, message in [
        ("bad_yaml", "---\nconfigs: [\n  - {config_name: default\n---\n", r"README\.md: its front matter is not valid YAML"),
        ("unclosed", "---\nconfigs: []\n" + "x: y\n" * 300_000, r"README\.md: its front matter does not end"),
        ("not_configs", "---\nconfigs: default\n---\n", r"README\.md: 'configs' is not a list of mappings"),
        ("parent", "---\nconfigs:\n- config_name: default\n  data_files: ../tiny-captions/data/*.parquet\n---\n",
         r"README\.md: data_files path '\.\./tiny-captions/data/\*\.parquet' points outside the folder"),
        ("absolute", "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: /etc/*\n---\n",
         r"points outside the folder"),
        ("url", "---\nconfigs:\n- config_name: default\n  data_files: hf://datasets/x/y/*.parquet\n---\n",
         r"points outside the folder"),
    ]:
        folder = copy(name)
        (folder / "README.md").write_text(readme)
        with pytest.raises(ValueError, match=message) as e:
            vldata.open(folder)
        _one_line(e)

    no_image = tmp_path / "no_image"
    _write(no_image / "data/train-00000-of-00001.parquet", {"caption": ["a", "b"], "label": [1, 2]}, images=())
    with pytest.raises(ValueError, match=r"train-00000-of-00001\.parquet: no image column") as e:
        vldata.open(no_image)
    _one_line(e)

    with pytest.raises(KeyError, match=r"no split 'validation' \(has train, test\)"):
        vldata.open(hub, split="validation")


def test_a_folder_without_parquet_is_not_a_dataset(tmp_path):
    (tmp_path / "empty" / "data").mkdir(parents=True)
    (tmp_path / "empty" / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: '*.tar'\n---\n")
    assert hf_parquet.describe(LocalFileSystem(), str(tmp_path / "empty"), "train") is None


def test_mixes_with_a_vldata_build(hub, scin_built):
    built, foreign = vldata.open(scin_built), vldata.open(hub)
    mix = vldata.Mix({"a": built, "b": foreign})
    ds = vldata.TorchDataset(mix, batch_size=4, seed=1)
    batches = list(ds)
    sources = [s for batch in batches for s in batch["source"]]
    assert {"a", "b"} == set(sources) and sources.count("b") <= len(foreign)
    assert all(len(batch["key"]) == len(batch["text"]) == len(batch["image_sizes"]) for batch in batches)


def test_a_hub_cache_snapshot_opens_through_its_links_into_blobs(hub, tmp_path):
    """snapshot_download leaves links from snapshots/REV/ into the repo's blobs/: those are inside;
    a link anywhere else still is not."""
    repo = tmp_path / "hub-cache" / "datasets--org--tiny"
    snapshot, blobs = repo / "snapshots" / "0123abcd", repo / "blobs"
    blobs.mkdir(parents=True)
    for f in [hub / "README.md", *sorted((hub / "data").glob("*.parquet"))]:
        blob = blobs / f"{abs(hash(f.name)):x}"
        shutil.copy(f, blob)
        link = snapshot / f.relative_to(hub)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    src = vldata.open(snapshot)
    assert len(src) == sum(SHARDS["train"]) and src[3]["caption"] == "caption 3"
    outside = tmp_path / "elsewhere.parquet"
    shutil.copy(next((hub / "data").glob("train-*")), outside)
    (snapshot / "data" / "train-00000-of-00002.parquet").unlink()
    (snapshot / "data" / "train-00000-of-00002.parquet").symlink_to(outside)
    with pytest.raises(ShardError, match="leads outside"):
        vldata.open(snapshot)


def test_an_unfinished_build_is_not_taken_for_a_parquet_dataset(scin_built, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(scin_built, out)
    (out / "parquet" / "vldata.json").unlink()
    assert (out / "build" / "plan.json").exists()
    for path in (out / "parquet", out):
        with pytest.raises(FileNotFoundError, match="unfinished vldata build"):
            vldata.open(path, format="parquet")


def test_a_readme_not_utf8_and_a_footer_claiming_gigabytes(hub, tmp_path):
    """Outside bytes the describer reads: a README with bytes that are not UTF-8 still gives its
    configs (the body is never needed); a footer length of 2 GiB is refused before it is read."""
    latin = Path(shutil.copytree(hub, tmp_path / "latin"))
    (latin / "README.md").write_bytes(README.encode() + b"\xff\xfe caf\xe9 \x80\n")
    assert len(vldata.open(latin)) == sum(SHARDS["train"])

    huge = Path(shutil.copytree(hub, tmp_path / "huge"))
    shard = huge / "data/train-00000-of-00002.parquet"
    shard.write_bytes(shard.read_bytes()[:-8] + (2**31).to_bytes(4, "little") + b"PAR1")
    with pytest.raises(ShardError, match=r"train-00000-of-00002\.parquet: its parquet footer of 2147483648 bytes") as e:
        vldata.open(huge)
    _one_line(e)
