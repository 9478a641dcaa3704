"""A toy Record and writers for tiny parquet / webdataset folders of it, for card and Croissant tests.

Exercises every schema shape the derivations must handle: an image, an optional int, a list of str,
a list of pydantic structs with an optional member, an Enum and a nullable per-item licence.
"""

from __future__ import annotations

import enum
import hashlib
import io
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image as PILImage
from pydantic import BaseModel, Field

from vldata.describe import schema
from vldata.describe.schema import Image, Record
from vldata.ingest import synthetic


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Box(BaseModel):
    label: str
    score: float | None = None


class Toy(Record):
    image: Image
    count: int | None = Field(None, description="An optional count.")
    tags: list[str] = []
    boxes: list[Box] = []
    color: Color
    license: str | None = Field(None, description="Per-item licence URL, when the item has its own.")


SPLITS = {"train": 3, "test": 2}


def png_image(size: tuple[int, int] = (4, 4), colour: int | str | tuple = 0, mode: str = "L") -> Image:
    """A one-colour PNG as a Record's ``Image`` (bytes, format, size, sha256), for test builders."""
    buf = io.BytesIO()
    PILImage.new(mode, size, colour).save(buf, format="PNG")
    data = buf.getvalue()
    return Image(data=data, format="png", width=size[0], height=size[1], sha256=hashlib.sha256(data).hexdigest())


def png(seed: int) -> Image:
    data = synthetic.encode(PILImage.new("RGB", (4 + seed, 3), (seed * 40 % 256, 10, 200)))
    return Image(data=data, format="png", width=4 + seed, height=3, sha256=hashlib.sha256(data).hexdigest())


def records(split: str) -> list[Toy]:
    offset = 0 if split == "train" else 100
    return [Toy(key=f"{split}-{i}", text=f"a {split} toy {i}", image=png(i), count=None if i % 2 else offset + i,
                tags=["t"] * i, boxes=[Box(label=f"b{j}", score=None if j else 0.5) for j in range(i)],
                color=Color.RED if i % 2 else Color.BLUE,
                license=None if i % 2 else "https://creativecommons.org/licenses/by/2.0/")
            for i in range(SPLITS[split])]


def _shard(path: Path, n: int) -> dict:
    data = path.read_bytes()
    return {"num_samples": n, "num_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_parquet(folder: Path, *, hf_metadata: bool = True) -> dict[str, list[dict]]:
    """``folder/data/{split}-00000-of-00001.parquet``; returns the shards per split (relative paths).
    ``hf_metadata=False`` strips the ``huggingface`` schema metadata, so only a README can type columns."""
    arrow = schema.arrow_schema(Toy)
    if not hf_metadata:
        arrow = arrow.remove_metadata()
    shards = {}
    for split in SPLITS:
        rel = f"data/{split}-00000-of-00001.parquet"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist([schema.to_row(r) for r in records(split)], schema=arrow)
        pq.write_table(table, folder / rel)
        shards[split] = [{"path": rel, **_shard(folder / rel, SPLITS[split])}]
    return shards


def write_webdataset(folder: Path) -> dict[str, list[dict]]:
    """``folder/{split}-000000.tar`` with KEY.jpg (the primary image, a PNG), KEY.txt and KEY.json members."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = {}
    for split in SPLITS:
        rel = f"{split}-000000.tar"
        with tarfile.open(folder / rel, "w") as tar:
            for r in records(split):
                members = [*schema.image_members(r), ("txt", r.text.encode()), ("json", schema.to_json_bytes(r))]
                for suffix, data in members:
                    info = tarfile.TarInfo(f"{r.key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards[split] = [{"path": rel, **_shard(folder / rel, SPLITS[split])}]
    return shards
