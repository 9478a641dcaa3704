"""Read the output folders of img2dataset, the usual way web image-text sets are downloaded.

img2dataset writes one shard per ``NNNNN.parquet`` (one row per input row, successes and failures:
``key``, ``status``, ``error_message``, sizes, hash, the saved metadata columns) with the images in
``NNNNN.tar`` (webdataset output: ``KEY.jpg|png|webp`` + ``KEY.txt`` + ``KEY.json``, in completion
order), in an image column of the parquet (parquet output), or in a ``NNNNN/`` folder (files output),
and ``NNNNN_stats.json``. This module recognises a shard, checks its stats file, sorts its rows by
key and hands out image bytes by key, reading tar members by offset.

A damaged shard costs only its own rows. A tar is indexed from its headers only, never extracted:
member names give only a key (the text before the first dot of the base name; links and folders are
ignored, as are links in a files-output folder), so no name can point outside. A member whose header
(a file whose size) announces more than ``max_bytes`` is ``member_too_large`` before anything is
read; one cut off by the end of the file, and every key
absent from a tar that does not end with its end-of-archive block (truncated, or garbage from some
header on), is ``tar_corrupt`` naming the tar. A stats file that is missing or not a JSON object is
only noted. It knows no dataset, reads no parquet (the builder hands it the shard's rows) and does
no decoding; a builder that accepts img2dataset output turns the rows into records.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from vldata.errors import StructuralError, one_line

# img2dataset's own columns: width/height/original_*/hashes describe its download, not the metadata
COLUMNS = ("key", "status", "error_message", "width", "height", "original_width", "original_height", "exif",
           "md5", "sha256", "sha512", "caption", "url")
IMAGE_EXTENSIONS = ("jpg", "png", "webp")
BLOCK = tarfile.BLOCKSIZE
STATS_MAX_BYTES = 64 << 20  # status_dict holds at most 100k error messages


def is_shard(columns: list[str]) -> bool:
    """Whether a parquet with these columns is an img2dataset shard."""
    return {"key", "status", "error_message"} <= set(columns)


def image_store(parquet: Path, columns: list[str]) -> dict:
    """Where a shard keeps its images (picklable): its tar, an image column, or its folder."""
    tar, folder = parquet.with_suffix(".tar"), parquet.with_suffix("")
    if tar.is_file():
        return {"kind": "tar", "path": str(tar)}
    column = next((c for c in IMAGE_EXTENSIONS if c in columns), None)
    if column:
        return {"kind": "column", "column": column}
    if folder.is_dir():
        return {"kind": "files", "path": str(folder)}
    raise StructuralError(f"{parquet}: img2dataset shard without images ({tar.name}, an image column "
                          f"{'/'.join(IMAGE_EXTENSIONS)} or {folder.name}/)")


def stats_note(parquet: Path) -> str | None:
    """What to note about a shard's ``NNNNN_stats.json``, written last (a shard without it may be
    incomplete): None when it is a JSON object, else ``img2dataset_shard_without_stats`` or
    ``img2dataset_stats_unreadable``."""
    path = parquet.with_name(f"{parquet.stem}_stats.json")
    if not path.is_file():
        return "img2dataset_shard_without_stats"
    try:
        if path.stat().st_size > STATS_MAX_BYTES or not isinstance(json.loads(path.read_bytes()), dict):
            return "img2dataset_stats_unreadable"
    except (OSError, ValueError, RecursionError):
        return "img2dataset_stats_unreadable"
    return None


def rows_in_key_order(rows: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    """(row in the parquet, row) sorted by key: the files are in completion order, the keys in input
    order."""
    return sorted(rows, key=lambda r: str(r[1]["key"]))


@dataclass(frozen=True)
class MemberFailure:
    """Why a key's image cannot be handed out; ``reason`` is a stable failure reason."""

    reason: str
    message: str


class ShardImages:
    """Image bytes of one shard by key; a tar is indexed once (headers only) and read by offset.
    ``column`` holds the images of a parquet image column by key (the builder read them)."""

    def __init__(self, store: dict, column: dict[str, bytes] | None = None, max_bytes: int = 32 << 20):
        self.store, self.column, self.max_bytes = store, column or {}, max_bytes
        self.index: dict[str, tuple[int, int]] = {}
        self.bad: dict[str, MemberFailure] = {}
        self.damage: str | None = None  # why keys absent from a damaged tar fail
        self.file = None
        if store["kind"] == "tar":
            self.file = open(store["path"], "rb")
            self._index_tar(Path(store["path"]))

    def _index_tar(self, path: Path) -> None:
        size = path.stat().st_size
        try:
            with tarfile.open(fileobj=self.file, mode="r:") as tar:
                for m in tar:
                    stem, _, ext = m.name.rpartition("/")[2].partition(".")
                    if not (m.isfile() and ext in IMAGE_EXTENSIONS):
                        continue
                    if m.size > self.max_bytes:
                        self.bad[stem] = MemberFailure("member_too_large", f"{path.name}: member {m.name[:200]} "
                                                       f"is {m.size} bytes > max_bytes={self.max_bytes}")
                    elif m.offset_data + m.size > size:
                        self.bad[stem] = MemberFailure("tar_corrupt", f"{path}: member {m.name[:200]} is cut off "
                                                       f"at the end of the file")
                    else:
                        self.index[stem] = (m.offset_data, m.size)
                end = tar.offset  # tarfile stops quietly at a damaged header: the archive must end here
            self.file.seek(end)
            if self.file.read(BLOCK) != bytes(BLOCK):
                self.damage = f"{path}: damaged or cut off after byte {end} ({len(self.index)} images before it)"
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            self.damage = f"{path}: unreadable after {len(self.index)} images ({one_line(e)})"

    def get(self, key: str) -> bytes | MemberFailure | None:
        """The image of ``key``, why it cannot be read, or None when the shard has none."""
        if key in self.bad:
            return self.bad[key]
        if self.store["kind"] == "tar":
            if key not in self.index:
                return None if self.damage is None else MemberFailure(
                    "tar_corrupt", f"{self.damage}; no image for key {key} before the damage")
            offset, size = self.index[key]
            self.file.seek(offset)
            return self.file.read(size)
        if self.store["kind"] == "column":
            return self.column.get(key)
        folder = Path(self.store["path"])
        for path in (folder / f"{key}.{ext}" for ext in IMAGE_EXTENSIONS):
            if path.is_file() and not path.is_symlink():
                if path.stat().st_size > self.max_bytes:
                    return MemberFailure("member_too_large", f"{path}: {path.stat().st_size} bytes > "
                                         f"max_bytes={self.max_bytes}")
                return path.read_bytes()
        return None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> ShardImages:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def failure_reason(status: str | None, message: str | None) -> str:
    """A stable reason for an img2dataset failure (its message is kept verbatim elsewhere)."""
    m = (message or "").lower()
    if "http error 404" in m:
        return "http_404"
    if "hash mismatch" in m:
        return "checksum_mismatch"
    if "timed out" in m or "timeout" in m:
        return "timeout"
    return f"img2dataset_{status or 'failed'}"
