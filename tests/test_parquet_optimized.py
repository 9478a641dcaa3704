"""Parquet shards are what `datasets` writes for the Hub ("optimized" parquet): a page index,
content-defined chunking recorded in the key-value metadata as `datasets` records it, image columns
PLAIN, uncompressed and without a dictionary, row groups of at most 100 MB; plain `datasets` still
reads them with typed features, and they stay byte-identical whatever the workers, partitioning or
formats. The media leaves are derived here from the files' own feature metadata, not from vldata."""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import read_without_vldata, run_cli, shard_hashes
from pydantic import BaseModel

from fakes.toy import png_image
from vldata.describe import schema as sch
from vldata.describe.schema import Image, Record
from vldata.write.shards import ParquetShards

SMALL = ["--parquet-shard-size", "40KB", "--tar-shard-size", "60KB"]
# what `datasets` (>= 4.1) records: json.dumps(datasets.config.DEFAULT_CDC_OPTIONS)
CDC_ENTRY = b'{"min_chunk_size": 262144, "max_chunk_size": 1048576, "norm_level": 0}'
MAX_ROW_GROUP = 100_000_000  # datasets.config.MAX_ROW_GROUP_SIZE, "100MB"
LEVELS = {"RLE", "BIT_PACKED"}  # the repetition/definition levels' encodings, present in any column


def media_leaves(schema: pa.Schema) -> set[str]:
    """Parquet leaf paths of every Image feature (at any depth) and every binary value, read from
    the ``huggingface`` feature metadata of the file's schema."""
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]

    def walk(path: str, feature, pa_type: pa.DataType, media: bool) -> set[str]:
        media = media or (isinstance(feature, dict) and (feature.get("_type") == "Image" or
                                                           feature.get("dtype") in ("binary", "large_binary")))
        if pa.types.is_struct(pa_type):
            subs = feature if isinstance(feature, dict) and "_type" not in feature else {}
            return set().union(*(walk(f"{path}.{f.name}", subs.get(f.name), f.type, media) for f in pa_type))
        if pa.types.is_list(pa_type):
            item = feature.get("feature") if isinstance(feature, dict) else None
            return walk(f"{path}.list.element", item, pa_type.value_type, media)
        return {path} if media else set()

    return set().union(*(walk(f.name, features[f.name], f.type, False) for f in schema))


def chunks(path: Path):
    """The metadata of every column chunk of a parquet file."""
    md = pq.ParquetFile(path).metadata
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for j in range(rg.num_columns):
            yield rg.column(j)


@pytest.fixture(scope="module")
def open_images_raw(tmp_path_factory) -> Path:
    import vldata

    raw = tmp_path_factory.mktemp("oi_raw")
    vldata.get_builder("open_images").write_sample(raw, 24, 3)
    return raw


@pytest.fixture(scope="module")
def open_images_built(open_images_raw, tmp_path_factory) -> Path:
    """Open Images: an image column and a list-of-images column (mask_images), three splits."""
    out = tmp_path_factory.mktemp("oi_built") / "out"
    run_cli("build", "open_images", "--raw", open_images_raw, "--out", out, *SMALL, check=True)
    return out


@pytest.fixture(params=["scin_built", "open_images_built"])
def built(request) -> Path:
    return request.getfixturevalue(request.param)


def test_the_options_are_those_of_the_installed_datasets():
    """Guards against drift: the chunking and per-column options `datasets` uses (where this version
    of `datasets` has them) are ours, but for raw ``bytes`` fields, which we also store plain."""
    import vldata
    from vldata.write.shards import CDC_OPTIONS, parquet_column_options

    if not hasattr(datasets.config, "DEFAULT_CDC_OPTIONS"):
        pytest.skip("datasets < 4.1 writes no content-defined chunking")
    assert json.dumps(datasets.config.DEFAULT_CDC_OPTIONS).encode() == CDC_ENTRY == json.dumps(CDC_OPTIONS).encode()
    assert datasets.config.MAX_ROW_GROUP_SIZE == "100MB"
    from datasets import arrow_writer

    if not hasattr(arrow_writer, "get_parquet_column_options"):
        pytest.skip("datasets < 4.6 compresses image columns")
    for name in vldata.list_builders():
        schema = sch.arrow_schema(vldata.get_builder(name).record_type())
        features = datasets.Features.from_arrow_schema(schema)
        theirs = arrow_writer.get_parquet_column_options(features, schema)
        ours = parquet_column_options(schema)
        raw_bytes = {f.name for f in schema if f.type == pa.binary()}  # medtrinity's roi_mask
        for option in ("compression", "use_dictionary", "column_encoding"):
            assert _without(ours[option], raw_bytes) == _without(theirs[option], raw_bytes), (name, option)


def _without(option: dict | list, leaves: set[str]) -> dict | list:
    if isinstance(option, dict):
        return {k: v for k, v in option.items() if k not in leaves}
    return [k for k in option if k not in leaves]


def test_every_column_chunk_has_a_page_index_and_the_file_records_its_chunking(built):
    files = sorted((built / "parquet" / "data").glob("*.parquet"))
    assert len(files) >= 2
    for f in files:
        kv = pq.ParquetFile(f).metadata.metadata
        assert kv[b"content_defined_chunking"] == CDC_ENTRY
        assert b"huggingface" in kv  # the typed features stay in the file
        media = media_leaves(pq.read_schema(f))
        for col in chunks(f):
            assert col.has_offset_index, (f.name, col.path_in_schema)
            if col.path_in_schema not in media:  # as `datasets` writes them: snappy, dictionary, column index
                assert col.compression == "SNAPPY" and col.has_column_index, (f.name, col.path_in_schema)
                if col.physical_type != "BOOLEAN":  # parquet has no dictionary encoding for booleans
                    assert col.has_dictionary_page and "RLE_DICTIONARY" in col.encodings, (f.name, col.path_in_schema)


@pytest.mark.parametrize("name,expected", [
    ("scin_built", {"image.bytes", "image.path", "image_2.bytes", "image_2.path", "image_3.bytes", "image_3.path"}),
    ("open_images_built", {"image.bytes", "image.path", "mask_images.list.element.bytes",
                           "mask_images.list.element.path"}),
])
def test_image_columns_are_plain_uncompressed_and_without_a_dictionary(request, name, expected):
    out = request.getfixturevalue(name)
    seen = set()
    for f in sorted((out / "parquet" / "data").glob("*.parquet")):
        assert media_leaves(pq.read_schema(f)) == expected
        for col in chunks(f):
            if col.path_in_schema in expected:
                seen.add(col.path_in_schema)
                assert col.compression == "UNCOMPRESSED", (f.name, col.path_in_schema)
                assert "PLAIN" in col.encodings and set(col.encodings) <= {"PLAIN"} | LEVELS, col.encodings
                assert not col.has_dictionary_page
    assert seen == expected
    if name == "open_images_built":  # the list column holds images, not only empty lists
        masks = pq.read_table(out / "parquet" / "data", columns=["mask_images"]).column(0).to_pylist()
        assert sum(len(m) for m in masks) > 0


def test_row_groups_are_at_most_100_mb_and_the_manifest_knows_them(built):
    manifest = json.loads((built / "parquet" / "vldata.json").read_text())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            md = pq.ParquetFile(built / "parquet" / shard["path"]).metadata
            groups = [md.row_group(g) for g in range(md.num_row_groups)]
            assert [g.num_rows for g in groups] == shard["row_groups"]
            assert all(g.total_byte_size <= MAX_ROW_GROUP for g in groups)


def test_a_row_group_is_closed_before_a_row_would_take_it_past_100_mb(tmp_path):
    """Row-group boundaries come from the rows' declared payload sizes (here far larger than the
    rows), never from how the rows arrive in batches."""
    schema = pa.schema([("key", pa.string())])
    sizes = [60_000_000, 50_000_000, 30_000_000, 150_000_000, 1]
    batch = pa.RecordBatch.from_pylist([{"key": f"k{i}"} for i in range(len(sizes))], schema=schema)
    results = []
    for cuts in ([0, 5], [0, 1, 2, 3, 4, 5], [0, 2, 5]):
        w = ParquetShards(tmp_path / f"s{len(cuts)}", "train", schema, target_bytes=1 << 40)
        for a, b in itertools.pairwise(cuts):
            w.write(batch.slice(a, b - a), sizes[a:b])
        [info] = w.finish(tmp_path / f"out{len(cuts)}")
        # 60M, then 50M would make 110M; 50M + 30M reach the 64M target; 150M alone; the rest
        assert info.row_groups == [1, 2, 1, 1]
        results.append(info.sha256)
    assert len(set(results)) == 1


def test_an_empty_split_is_written_the_same_way(tmp_path):
    schema = sch.arrow_schema(Nested)
    [info] = ParquetShards(tmp_path / "s", "test", schema, target_bytes=1 << 20).finish(tmp_path / "out")
    f = tmp_path / "out" / info.path
    assert info.num_samples == 0 and pq.ParquetFile(f).metadata.num_rows == 0
    assert pq.ParquetFile(f).metadata.metadata[b"content_defined_chunking"] == CDC_ENTRY


class Framed(BaseModel):
    photo: Image
    note: str


class Nested(Record):
    image: Image
    gallery: list[Image]
    framed: Framed
    blob: bytes | None


def _image(colour: str) -> Image:
    return png_image((8, 6), colour, "RGB")


def test_images_at_any_depth_and_raw_bytes_are_stored_plain(tmp_path):
    schema = sch.arrow_schema(Nested)
    rec = Nested(key="k0", text="t", image=_image("red"), gallery=[_image("blue"), _image("green")],
                 framed=Framed(photo=_image("white"), note="n"), blob=b"\x00\x01")
    w = ParquetShards(tmp_path / "s", "train", schema, target_bytes=1 << 20)
    w.write(pa.RecordBatch.from_pylist([sch.to_row(rec)], schema=schema), [100])
    [info] = w.finish(tmp_path / "out")
    f = tmp_path / "out" / info.path
    media = {"image.bytes", "image.path", "gallery.list.element.bytes", "gallery.list.element.path",
             "framed.photo.bytes", "framed.photo.path", "blob"}
    assert media_leaves(pq.read_schema(f)) == media
    plain = {c.path_in_schema for c in chunks(f) if c.compression == "UNCOMPRESSED"
             and not c.has_dictionary_page and set(c.encodings) <= {"PLAIN"} | LEVELS}
    assert plain == media
    ds = datasets.Dataset.from_parquet(str(f))
    assert isinstance(ds.features["gallery"].feature, datasets.Image)
    assert isinstance(ds.features["framed"]["photo"], datasets.Image)
    row = ds[0]
    assert row["image"].size == (8, 6) and [g.getpixel((0, 0)) for g in row["gallery"]] == [(0, 0, 255), (0, 128, 0)]
    assert row["framed"]["photo"].size == (8, 6) and row["blob"] == b"\x00\x01"


READER = textwrap.dedent('''
    import json, sys
    import datasets
    dd = datasets.load_dataset(sys.argv[1] + "/parquet")
    train = dd["train"]
    feats = train.features
    rows = list(train)
    result = {"splits": {k: len(v) for k, v in dd.items()},
              "image": type(feats["image"]).__name__,
              "mask_images": [type(feats["mask_images"]).__name__, type(feats["mask_images"].feature).__name__],
              "sizes_ok": all(min(r["image"].size) > 0 for r in rows),
              "masks": sum(len(r["mask_images"]) for r in rows),
              "masks_ok": all(min(m.size) > 0 for r in rows for m in r["mask_images"]),
              "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("vldata", "builders"))}
    print(json.dumps(result))
''')


def test_plain_datasets_reads_typed_features_and_decodes_images(open_images_built):
    result = read_without_vldata(READER, open_images_built)
    manifest = json.loads((open_images_built / "parquet" / "vldata.json").read_text())
    assert result["splits"] == {k: v["num_samples"] for k, v in manifest["splits"].items()}
    assert result["image"] == "Image" and result["mask_images"] == ["List", "Image"]
    assert result["sizes_ok"] and result["masks"] > 0 and result["masks_ok"]


# open_images' prefix_chars is no pure partitioning knob (it reorders rows inside a split), so the
# partition size is varied on SCIN, whose scin_built has 7 cases per partition
@pytest.mark.parametrize("name,variation", [("open_images", ["--workers", "2"]), ("open_images", ["--format", "parquet"]),
                                            ("scin", ["--set", "rows_per_partition=100"])],
                         ids=["workers", "format", "partitioning"])
def test_parquet_shards_are_byte_identical_whatever_the_build(request, tmp_path, name, variation):
    raw, built = request.getfixturevalue(f"{name}_raw"), request.getfixturevalue(f"{name}_built")
    args = SMALL + (["--set", "rows_per_partition=7"] if name == "scin" and "--set" not in variation else [])
    run_cli("build", name, "--raw", raw, "--out", tmp_path / "out", *args, *variation, check=True)
    parquet = {k: v for k, v in shard_hashes(built).items() if k.startswith("parquet/")}
    assert len(parquet) >= 2
    assert {k: v for k, v in shard_hashes(tmp_path / "out").items() if k.startswith("parquet/")} == parquet
