"""MedTrinity-25M's synthetic raw input: both Hub layouts (``25M_demo`` with embedded images,
``25M_full`` metadata with ``25M_accessible`` tar.zst shards), with the real quirks.

Written for the demo and the tests (``MedTrinityBuilder.write_sample``); pictures are made with
``vldata.ingest.synthetic``. Nothing here is used while building real data, and it must not parse.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import ImageDraw

from vldata.ingest import synthetic

from . import ACCESSIBLE, DEMO, FULL

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
    """A dark picture with a bright ellipse (a scan's region of interest), in ``mode`` and ``fmt``."""
    img = synthetic.blank(rng, (24, 72), (0, 80))
    w, h = img.size
    x, y = rng.randint(0, w // 2), rng.randint(0, h // 2)
    ImageDraw.Draw(img).ellipse((x, y, x + w // 3, y + h // 3), fill=synthetic.colour(rng, 120, 255))
    return synthetic.encode(img, fmt, mode)


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
