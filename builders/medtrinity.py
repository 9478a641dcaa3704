"""MedTrinity-25M — medical images with machine-generated multigranular captions (UCSC-VLAA, 2024).

Raw layout: the gated Hub repository, in either or both of its two shapes.

* ``25M_demo/**/*.parquet``: ``image`` (HF Image struct ``{bytes, path}``), ``id``, ``caption``.
* ``25M_full/**/*.parquet``: metadata only, ``file_name`` and ``caption`` (required), ``id`` and
  ``source`` (kept when present), joined by basename with the image files inside
  ``25M_accessible/**/*.tar.zst`` (zstd-compressed tars, images nested several folders deep).

The layout is detected from those folder names. Splits: 25M_full rows go to ``train``; 25M_demo rows go
to ``demo``, or to ``train`` when the raw folder has no 25M_full. Keys are the upstream ``id`` (so a
demo row whose id is also in 25M_full counts as a ``duplicate_key`` of it), or ``sha1`` of
``source|file_name`` when the id is missing or not key-safe.

The tars are streamed (zstandard ``stream_reader`` + tarfile ``r|``), never extracted. ``partitions``
streams every shard once for its member names (an index basename -> (shard, position)); each shard
then becomes one partition whose rows are ordered by the position of their image in the shard, so
``records`` streams the shard once and holds one image at a time. Rows whose basename is in no shard
fail with ``image_not_accessible``; a truncated shard is noted as ``shard_truncated:<name>`` and the
rows whose image lies past the break fail with ``shard_truncated``; the other shards build.

The caption is kept whole as ``text``. No ROI boxes or masks are released as data, so ``roi_bbox`` and
``roi_mask`` stay null (they are never derived from the caption). ``license`` is the configured
licence of the row's ``source`` (``source_licenses``), else ``license``, else null.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from vldata import Builder, Config, Failed, Image, Partition, Record, RowContext, StructuralError

DEMO, FULL, ACCESSIBLE = "25M_demo", "25M_full", "25M_accessible"
DEMO_COLUMNS = ("image", "id", "caption")
FULL_COLUMNS = ("file_name", "caption")
FULL_OPTIONAL = ("id", "source")
_KEY_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
_TAR_END = 1024  # a complete tar ends with two zero blocks


class MedTrinityRecord(Record):
    subset: Literal["25M_demo", "25M_full"] = Field(description="Upstream configuration the row comes from.")
    id: str | None = Field(description="Upstream id, always a string.")
    file_name: str | None = Field(description="Image basename (25M_full); null in 25M_demo.")
    source: str | None = Field(description="Originating dataset as written upstream (e.g. pmc_oa, brats_24).")
    image: Image
    image_mode: str | None = Field(description="PIL mode of the upstream image before the image policy (P, LA, I;16, ...).")
    image_shard: str | None = Field(description="25M_accessible shard the image was read from (25M_full).")
    image_member: str | None = Field(description="Path of the image inside that shard.")
    roi_bbox: list[Annotated[float, pa.float32()]] | None = Field(
        description="Always null: no structured ROI boxes are released (never derived from the caption).")
    roi_mask: bytes | None = Field(description="Always null: no ROI masks are released.")
    license: str | None = Field(description="Licence of the source dataset when configured, else null.")
    raw: str = Field(description="JSON of the original parquet row (the demo image as its path only).")


class MedTrinityConfig(Config):
    license: str | None = Field(default=None, description="Licence for rows whose source has none configured.")
    source_licenses: dict[str, str] = Field(default_factory=dict, description="Licence per upstream source name.")
    rows_per_partition: int = Field(default=1024, gt=0, description="Rows per unit of work for rows with no shard.")


class ShardTruncated(Exception):
    """A .tar.zst shard ended early (the 'Unexpected EOF' downloads of HF discussion #4)."""


def stream_members(path: Path) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Regular-file members of a ``.tar.zst`` in order, streamed; raises ShardTruncated at a break."""
    import zstandard

    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as reader:
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for member in tar:
                    if member.isfile():
                        yield member, tar
                end = tar.offset
            # tarfile stops silently when the data ends exactly between members: require the end blocks
            if reader.tell() + len(reader.read()) < end + _TAR_END:
                raise ShardTruncated(f"{path.name}: truncated (no end-of-archive after {end} bytes)")
        except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as e:
            raise ShardTruncated(f"{path.name}: truncated or corrupt ({e})") from None


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, shard: Path) -> bytes:
    """The bytes of a member yielded by ``stream_members``; raises ShardTruncated at a break."""
    import zstandard

    try:
        data = tar.extractfile(member).read()
    except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as e:
        raise ShardTruncated(f"{shard.name}: truncated or corrupt inside {member.name} ({e})") from None
    if len(data) != member.size:
        raise ShardTruncated(f"{shard.name}: truncated inside {member.name}")
    return data


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file())


def _check_columns(path: Path, required: tuple[str, ...]) -> list[str]:
    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as e:  # noqa: BLE001 — any unreadable parquet footer is structural
        raise StructuralError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
    missing = [c for c in required if c not in names]
    if missing:
        raise StructuralError(f"{path}: missing required column '{missing[0]}'"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return names


def _text_or_none(v) -> str | None:
    return None if v is None else str(v)


def _key(row_id: str | None, source: str | None, file_name: str | None, fallback: str) -> str:
    if row_id and _KEY_SAFE.match(row_id):
        return row_id
    basis = row_id if row_id else (f"{source}|{file_name}" if file_name else fallback)
    return hashlib.sha1(basis.encode()).hexdigest()[:16]


def _mode(data: bytes) -> str | None:
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as im:
            return im.mode
    except Exception:  # noqa: BLE001 — the image policy reports the real problem
        return None


def _raw_json(row: dict) -> str:
    row = dict(row)
    if isinstance(row.get("image"), dict):
        row["image"] = {"path": row["image"].get("path")}
    return json.dumps(row, ensure_ascii=False, sort_keys=True, default=str)


class MedTrinityBuilder(Builder):
    name = "medtrinity"
    version = "1.0.0"
    summary = "MedTrinity-25M (UCSC-VLAA, 2024): medical images with generated multigranular captions"
    Config = MedTrinityConfig
    Record = MedTrinityRecord
    balance_fields = ("source",)

    # ------------------------------------------------------------------ partitions

    def partitions(self, raw: Path) -> list[Partition]:
        demo = _files(raw / DEMO, "*.parquet") if (raw / DEMO).is_dir() else []
        full = _files(raw / FULL, "*.parquet") if (raw / FULL).is_dir() else []
        if not demo and not full:
            raise StructuralError(f"{raw}: neither {DEMO}/*.parquet nor {FULL}/*.parquet found")
        if full and not (raw / ACCESSIBLE).is_dir():
            raise StructuralError(f"{raw / ACCESSIBLE}: required folder not found (the images of {FULL})")
        for path in demo:
            _check_columns(path, DEMO_COLUMNS)
        for path in full:
            _check_columns(path, FULL_COLUMNS)
        parts = self._full_partitions(raw, full) if full else []
        demo_split = "demo" if full else "train"
        for path in demo:
            meta = pq.ParquetFile(path).metadata
            for rg in range(meta.num_row_groups):
                parts.append(Partition(index=len(parts), split=demo_split, input_rows=meta.row_group(rg).num_rows,
                                       payload={"kind": "demo", "file": str(path), "rel": str(path.relative_to(raw)),
                                                "row_group": rg}))
        return parts

    def _full_partitions(self, raw: Path, files: list[Path]) -> list[Partition]:
        shards = _files(raw / ACCESSIBLE, "*.tar.zst")
        where: dict[str, tuple[int, int]] = {}  # basename -> (shard, member position); first shard wins
        truncated: dict[int, str] = {}
        duplicates = 0
        for si, shard in enumerate(shards):
            pos = 0
            try:
                for member, _ in stream_members(shard):
                    base = member.name.rsplit("/", 1)[-1]
                    if base in where:
                        duplicates += 1
                    else:
                        where[base] = (si, pos)
                    pos += 1
            except ShardTruncated as e:
                truncated[si] = str(e)
        by_shard: dict[int, list[tuple[int, int, int, int]]] = {}
        unmatched: list[tuple[int, int, int]] = []
        for fi, path in enumerate(files):
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                names = pf.read_row_group(rg, columns=["file_name"]).column(0).to_pylist()
                for ri, name in enumerate(names):
                    hit = where.get(str(name).rsplit("/", 1)[-1]) if name is not None else None
                    if hit is None:
                        unmatched.append((fi, rg, ri))
                    else:
                        by_shard.setdefault(hit[0], []).append((hit[1], fi, rg, ri))
        common = {"files": [str(p) for p in files], "rels": [str(p.relative_to(raw)) for p in files],
                  "truncated": sorted(shards[i].name for i in truncated)}
        parts: list[Partition] = []
        for si in sorted(by_shard):
            rows = sorted(by_shard[si])
            parts.append(Partition(index=len(parts), split="train", input_rows=len(rows),
                                   payload={**common, "kind": "shard", "shard": str(shards[si]), "rows": rows}))
        size = self.config.rows_per_partition
        for start in range(0, len(unmatched), size):
            chunk = unmatched[start:start + size]
            parts.append(Partition(index=len(parts), split="train", input_rows=len(chunk),
                                   payload={**common, "kind": "unmatched", "rows": chunk}))
        notes = {f"shard_truncated:{shards[si].name}": 1 for si in truncated}
        if duplicates:
            notes["duplicate_basename_in_shards"] = duplicates
        if not shards:
            notes["no_accessible_shards"] = 1
        if notes and parts:
            parts[0] = replace(parts[0], notes=notes)
        return parts

    # ------------------------------------------------------------------ records

    def records(self, partition: Partition, ctx: RowContext) -> Iterator[Record | Failed]:
        p = partition.payload
        if p["kind"] == "demo":
            yield from self._demo(p, ctx)
            return
        rows = self._full_rows(p)
        if p["kind"] == "unmatched":
            hint = f"; truncated shards: {', '.join(p['truncated'])}" if p["truncated"] else ""
            for loc in p["rows"]:
                row, ref, key = rows[loc]
                yield Failed(key, "image_not_accessible",
                             f"{row.get('file_name')!r} is in no {ACCESSIBLE} shard{hint}", ref)
            return
        yield from self._shard(p, rows, ctx)

    def _full_rows(self, p: dict) -> dict[tuple[int, int, int], tuple[dict, str, str]]:
        """The partition's metadata rows, read by row group: {(file, row group, row): (row, ref, key)}."""
        wanted: dict[tuple[int, int], set[int]] = {}
        for loc in p["rows"]:
            fi, rg, ri = loc[-3:]
            wanted.setdefault((fi, rg), set()).add(ri)
        out = {}
        for (fi, rg), indices in sorted(wanted.items()):
            pf = pq.ParquetFile(p["files"][fi])
            offset = sum(pf.metadata.row_group(i).num_rows for i in range(rg))
            table = pf.read_row_group(rg)
            order = sorted(indices)
            for ri, row in zip(order, table.take(order).to_pylist()):
                row_id = _text_or_none(row.get("id"))
                key = _key(row_id, _text_or_none(row.get("source")), _text_or_none(row.get("file_name")),
                           f"{p['rels'][fi]}:{offset + ri}")
                out[(fi, rg, ri)] = (row, f"{p['rels'][fi]}:{offset + ri}", key)
        return out

    def _shard(self, p: dict, rows: dict, ctx: RowContext) -> Iterator[Record | Failed]:
        shard = Path(p["shard"])
        pending = list(p["rows"])  # (member position, file, row group, row), sorted by position
        i = 0
        try:
            for pos, (member, tar) in enumerate(stream_members(shard)):
                if i < len(pending) and pending[i][0] == pos:
                    data = read_member(tar, member, shard)
                    while i < len(pending) and pending[i][0] == pos:
                        yield self._full_record(rows[pending[i][1:]], data, shard.name, member.name, ctx)
                        i += 1
        except ShardTruncated as e:
            for loc in pending[i:]:
                _, ref, key = rows[loc[1:]]
                yield Failed(key, "shard_truncated", str(e), ref)
            return
        for loc in pending[i:]:  # cannot happen unless the shard changed since partitions()
            _, ref, key = rows[loc[1:]]
            yield Failed(key, "image_not_accessible", f"{shard.name}: member no longer present", ref)

    def _full_record(self, entry: tuple[dict, str, str], data: bytes, shard: str, member: str,
                     ctx: RowContext) -> Record | Failed:
        row, ref, key = entry
        caption = _text_or_none(row.get("caption"))
        if not caption:
            return Failed(key, "caption_missing", "empty caption", ref)
        img = ctx.image(data)
        if not isinstance(img, Image):
            return Failed(key, img.reason, f"{shard}:{member}: {img.message}", ref)
        source = _text_or_none(row.get("source"))
        return MedTrinityRecord(
            key=key, text=caption, subset=FULL, id=_text_or_none(row.get("id")),
            file_name=_text_or_none(row.get("file_name")), source=source, image=img, image_mode=_mode(data),
            image_shard=shard, image_member=member, roi_bbox=None, roi_mask=None,
            license=self._license(source), raw=_raw_json(row))

    def _demo(self, p: dict, ctx: RowContext) -> Iterator[Record | Failed]:
        pf = pq.ParquetFile(p["file"])
        offset = sum(pf.metadata.row_group(i).num_rows for i in range(p["row_group"]))
        for ri, row in enumerate(pf.read_row_group(p["row_group"]).to_pylist()):
            ref = f"{p['rel']}:{offset + ri}"
            row_id = _text_or_none(row.get("id"))
            key = _key(row_id, None, None, ref)
            caption = _text_or_none(row.get("caption"))
            if not caption:
                yield Failed(key, "caption_missing", "empty caption", ref)
                continue
            image = row.get("image")
            data = image.get("bytes") if isinstance(image, dict) else None
            img = ctx.image(data, "image struct has no bytes")
            if not isinstance(img, Image):
                yield Failed(key, img.reason, img.message, ref)
                continue
            yield MedTrinityRecord(
                key=key, text=caption, subset=DEMO, id=row_id, file_name=None, source=None, image=img,
                image_mode=_mode(data), image_shard=None, image_member=None, roi_bbox=None, roi_mask=None,
                license=self.config.license, raw=_raw_json(row))

    def _license(self, source: str | None) -> str | None:
        return self.config.source_licenses.get(source or "", self.config.license)

    def write_sample(self, raw: Path, n: int, seed: int) -> None:
        write_sample(raw, n, seed)


# ------------------------------------------------------------------------------------------
# Sample generator: both layouts, with the real quirks

SOURCES = ["pmc_oa", "brats_24", "brats24", "NCT-CRC-HE-100K", "chexpert", "quilt_1m", "deeplesion", "padchest"]
CAPTIONS = [
    "The image is a non-contrast computed tomography (CT) scan of the brain, showing the cerebral hemispheres, "
    "ventricles, and subarachnoid spaces without any medical devices visible. The region of interest, located "
    "centrally and in the middle of the image, exhibits an area of increased density compared to the surrounding "
    "brain tissue, which is indicative of an intracranial hemorrhage.",
    "The image is a histopathological slide stained with hematoxylin and eosin, showing colorectal tissue. The "
    "region of interest, located in the upper-left area, occupies approximately 4.1% of the image area and shows "
    "densely packed glands with irregular shapes, potentially representing adenocarcinoma.",
    "The image is a frontal chest X-ray showing the lungs, heart and ribs. The region of interest, located in the "
    "lower right lung field, occupies approximately 7.3% of the image area and appears more opaque than the "
    "surrounding lung, which could suggest a consolidation adjacent to the diaphragm.",
]
SAMPLE_MODES = ["RGB", "P", "LA", "I;16", "L", "RGB"]


def sample_image(rng: random.Random, mode: str, fmt: str = "PNG") -> bytes:
    from PIL import Image as PILImage
    from PIL import ImageDraw

    w, h = rng.randint(24, 72), rng.randint(24, 72)
    img = PILImage.new("RGB", (w, h), tuple(rng.randint(0, 80) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    x, y = rng.randint(0, w // 2), rng.randint(0, h // 2)
    draw.ellipse((x, y, x + w // 3, y + h // 3), fill=tuple(rng.randint(120, 255) for _ in range(3)))
    if mode == "I;16":
        img = img.convert("L").convert("I").point(lambda v: v * 257).convert("I;16")
    elif mode == "P":
        img = img.convert("P", palette=PILImage.Palette.ADAPTIVE, colors=16)
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_tar_zst(path: Path, members: list[tuple[str, bytes]], truncate_after: int | None = None) -> None:
    """A zstd-compressed tar; with ``truncate_after=k`` the file stops inside member ``k``'s data, as a
    broken download does (headers and data are flushed as their own zstd blocks, so members before
    ``k`` and the header of ``k`` stay readable)."""
    import zstandard

    out = io.BytesIO()
    comp = zstandard.ZstdCompressor().compressobj()
    ends, done = [], 0
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1717000000, 0o644
            tar.addfile(info, io.BytesIO(data))
            for chunk in (tar_bytes.getvalue()[done:done + 512], tar_bytes.getvalue()[done + 512:]):  # header, data
                out.write(comp.compress(chunk))
                out.write(comp.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
                ends.append(out.tell())
            done = tar_bytes.tell()
    out.write(comp.compress(tar_bytes.getvalue()[done:]))  # the end-of-archive blocks
    out.write(comp.flush())
    data = out.getvalue()
    if truncate_after is not None:  # keep member k's header, cut inside its data
        header_end, data_end = ends[2 * truncate_after], ends[2 * truncate_after + 1]
        data = data[: header_end + (data_end - header_end) // 2]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_sample(raw: Path, n: int = 12, seed: int = 0) -> None:
    """Write ``raw/25M_demo/*.parquet`` (``n`` rows) and ``raw/25M_full/*.parquet`` (``n`` rows in two
    files) with ``raw/25M_accessible/dataset_shard_{1,2,3}.tar.zst``.

    Quirks reproduced: images nested several folders deep in the shards; ids as strings (UUIDs and
    digit strings with leading zeros); P, LA and 16-bit PNGs and a JPEG; inconsistent source spelling;
    one 25M_full row whose image is in no shard; ``dataset_shard_3.tar.zst`` truncated inside its
    second member (its first member stays readable, the rest is lost).
    """
    rng = random.Random(seed)
    raw = Path(raw)
    demo_rows = []
    for i in range(n):
        mode = SAMPLE_MODES[i % len(SAMPLE_MODES)]
        data = sample_image(rng, mode)
        demo_rows.append({"image": {"bytes": data, "path": f"{i:06d}.png"},
                          "id": f"{rng.getrandbits(32):08x}-1b5c-11ef-8929-{rng.getrandbits(48):012x}",
                          "caption": rng.choice(CAPTIONS)})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features = {"image": {"_type": "Image"}, "id": {"dtype": "string", "_type": "Value"},
                "caption": {"dtype": "string", "_type": "Value"}}
    schema = pa.schema([("image", image_type), ("id", pa.string()), ("caption", pa.string())],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    (raw / DEMO).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(demo_rows, schema=schema), raw / DEMO / "train-00000-of-00001.parquet",
                   row_group_size=max(1, n // 2))

    full_rows, shards = [], {1: [], 2: [], 3: []}
    for i in range(n):
        mode = SAMPLE_MODES[i % len(SAMPLE_MODES)]
        fmt = "JPEG" if i == 5 else "PNG"
        source = SOURCES[i % len(SOURCES)]
        name = f"{source.lower()}_{rng.getrandbits(40):010x}.{'jpg' if fmt == 'JPEG' else 'png'}"
        full_rows.append({"id": f"{i * 7919:07d}", "file_name": name, "caption": rng.choice(CAPTIONS), "source": source})
        if i == 2:
            continue  # the image of this row is in no shard (a non-redistributable source)
        shard = 3 if i in (n - 1, n - 2, n - 3) else 1 + i % 2
        folder = f"{source}/images/{'train' if i % 3 else 'val'}/part_{i % 4}"
        shards[shard].append((f"{folder}/{name}", sample_image(rng, "RGB" if fmt == "JPEG" else mode, fmt)))
    for shard, members in shards.items():
        rng.shuffle(members)  # member order is not row order
        write_tar_zst(raw / ACCESSIBLE / f"dataset_shard_{shard}.tar.zst", members,
                      truncate_after=1 if shard == 3 else None)
    (raw / FULL).mkdir(parents=True, exist_ok=True)
    half = n // 2
    for k, rows in enumerate((full_rows[:half], full_rows[half:])):
        pq.write_table(pa.Table.from_pylist(rows), raw / FULL / f"train-{k:05d}-of-00002.parquet")
