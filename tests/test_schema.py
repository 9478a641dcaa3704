"""Schema derivation: one Record -> HF features, Arrow schema, rows, webdataset members, docs."""

from __future__ import annotations

import enum
import hashlib
import io
import json
from typing import Annotated, Literal

import datasets
import pyarrow as pa
import pytest
from PIL import Image as PILImage
from pydantic import BaseModel, ValidationError

from vldata.describe import schema as sch
from vldata.describe.schema import Image, Record


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Box(BaseModel):
    label: str
    score: Annotated[float, pa.float32()]
    tags: list[str]


class Toy(Record):
    image: Image
    thumbs: list[Image]
    mask: Image | None = None
    count: int | None = None
    small: Annotated[int, pa.int8()]
    colour: Colour
    kind: Literal["a", "b"]
    boxes: list[Box]
    maybe_box: Box | None = None
    flags: list[bool | None]


def png(w=8, h=6, mode="RGB") -> Image:
    buf = io.BytesIO()
    PILImage.new(mode, (w, h), 100).save(buf, format="PNG")
    data = buf.getvalue()
    return Image(data=data, format="png", width=w, height=h, sha256=hashlib.sha256(data).hexdigest())


def toy(**over) -> Toy:
    values = dict(key="k_1", text="a red box", image=png(), thumbs=[png(2, 2), png(3, 3)], small=-3,
                  colour=Colour.RED, kind="a", boxes=[Box(label="x", score=0.5, tags=["t"])], flags=[True, None])
    return Toy(**{**values, **over})


def test_features_cover_optional_enum_nested_lists_and_images():
    f = sch.hf_features(Toy)
    assert f["key"] == datasets.Value("string")
    assert f["image"] == datasets.Image()
    assert f["image_info"]["sha256"] == datasets.Value("string")
    assert f["thumbs"] == datasets.List(datasets.Image())
    assert f["thumbs_info"].feature["width"] == datasets.Value("int32")
    assert f["count"] == datasets.Value("int64")
    assert f["small"] == datasets.Value("int8")
    assert f["colour"] == datasets.Value("string") and f["kind"] == datasets.Value("string")
    assert f["boxes"] == datasets.List({"label": datasets.Value("string"), "score": datasets.Value("float32"),
                                         "tags": datasets.List(datasets.Value("string"))})
    assert f["maybe_box"]["score"] == datasets.Value("float32")
    assert list(f)[:3] == ["key", "text", "image"]


def test_arrow_schema_carries_hf_metadata_and_image_structs():
    schema = sch.arrow_schema(Toy)
    assert b"huggingface" in schema.metadata
    assert schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert schema.field("boxes").type.value_type.field("score").type == pa.float32()
    meta = json.loads(schema.metadata[b"huggingface"])
    assert datasets.Features.from_dict(meta["info"]["features"]) == sch.hf_features(Toy)


def test_rows_round_trip_through_arrow_and_hf():
    rec = toy(count=None, maybe_box=None, mask=None)
    table = pa.Table.from_pylist([sch.to_row(rec)], schema=sch.arrow_schema(Toy))
    ds = datasets.Dataset(table)
    row = ds[0]
    assert row["colour"] == "red" and row["count"] is None and row["maybe_box"] is None
    assert row["mask"] is None and row["mask_info"] is None
    assert row["image"].size == (8, 6)
    assert [t.size for t in row["thumbs"]] == [(2, 2), (3, 3)]
    assert row["thumbs_info"][1]["width"] == 3
    assert row["boxes"] == [{"label": "x", "score": 0.5, "tags": ["t"]}]
    assert row["flags"] == [True, None]


def test_webdataset_members_and_json():
    rec = toy(mask=png(4, 4))
    members = dict(sch.image_members(rec))
    # the primary (KEY.jpg whatever its format: one image column), then the others by format, declared order
    assert list(members) == ["jpg", "thumbs_0.png", "thumbs_1.png", "mask.png"]
    assert members["jpg"] == rec.image.data
    doc = json.loads(sch.to_json_bytes(rec))
    assert "key" not in doc and "text" not in doc and "image" not in doc
    assert doc["image_info"]["sha256"] == rec.image.sha256
    assert [t["width"] for t in doc["thumbs_info"]] == [2, 3]
    assert doc["colour"] == "red" and doc["boxes"][0]["tags"] == ["t"]
    assert set(doc) == set(sch.wds_json_features(Toy))


def test_keys_are_webdataset_safe():
    for bad in ("a.b", "a/b", "", "a b"):
        with pytest.raises(ValidationError):
            toy(key=bad)
    assert toy(key="-1000600354148496558_2").key


def test_field_table_and_croissant_fields():
    rows = {r["name"]: r for r in sch.field_table(Toy)}
    assert rows["count"]["type"] == "int64?" and rows["count"]["nullable"]
    assert rows["boxes[].score"]["type"] == "float32"
    assert "`red`" in rows["colour"]["description"]
    assert rows["image_info"]["type"].startswith("struct{format: string")
    fields = {f["name"]: f for f in sch.croissant_fields(Toy, "default", {"fileSet": {"@id": "parquet-files"}})}
    assert fields["image"]["dataType"] == "sc:ImageObject"
    assert fields["boxes"]["repeated"] is True
    assert {s["name"] for s in fields["boxes"]["subField"]} == {"boxes/label", "boxes/score", "boxes/tags"}


def test_unsupported_types_are_rejected():
    class Bad(Record):
        mapping: dict[str, int]

    with pytest.raises(TypeError, match="mapping"):
        sch.fields(Bad)

    class Collide(Record):
        image: Image
        image_info: str

    with pytest.raises(TypeError, match="image_info"):
        sch.fields(Collide)
