"""Read the output folders of img2dataset, the usual way web image-text sets are downloaded.

img2dataset writes one shard per ``NNNNN.parquet`` (one row per input row, successes and failures:
``key``, ``status``, ``error_message``, sizes, hash, the saved metadata columns) with the images in
``NNNNN.tar`` (webdataset output: ``KEY.jpg|png|webp`` + ``KEY.txt`` + ``KEY.json``, in completion
order), in an image column of the parquet (parquet output), or in a ``NNNNN/`` folder (files output),
and ``NNNNN_stats.json``. This module recognises a shard, lists its rows in key order and hands out
image bytes by key, reading tar members by offset. It knows no dataset and does no decoding; a
builder that accepts img2dataset output turns the rows into records.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pyarrow as pa

from vldata.errors import StructuralError

# img2dataset's own columns: width/height/original_*/hashes describe its download, not the metadata
COLUMNS = ("key", "status", "error_message", "width", "height", "original_width", "original_height", "exif",
           "md5", "sha256", "sha512", "caption", "url")
IMAGE_EXTENSIONS = ("jpg", "png", "webp")


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


def has_stats(parquet: Path) -> bool:
    """img2dataset writes ``NNNNN_stats.json`` last: a shard without it may be incomplete."""
    return parquet.with_name(f"{parquet.stem}_stats.json").is_file()


def rows_in_key_order(table: pa.Table) -> list[tuple[int, dict]]:
    """(row in the parquet, row without image bytes) sorted by key: the files are in completion
    order, the keys in input order."""
    names = [n for n in table.column_names if n not in IMAGE_EXTENSIONS]
    rows = list(enumerate(table.select(names).to_pylist()))
    rows.sort(key=lambda r: str(r[1]["key"]))
    return rows


class ShardImages:
    """Image bytes of one shard by key; a tar is indexed once (headers only) and read by offset."""

    def __init__(self, store: dict, table: pa.Table | None = None):
        self.store = store
        self.index: dict[str, tuple[int, int]] = {}
        self.column: dict[str, bytes] = {}
        self.file = None
        if store["kind"] == "tar":
            self.file = open(store["path"], "rb")
            with tarfile.open(fileobj=self.file, mode="r:") as tar:
                for m in tar:
                    stem, _, ext = m.name.rpartition("/")[2].partition(".")
                    if m.isfile() and ext in IMAGE_EXTENSIONS:
                        self.index[stem] = (m.offset_data, m.size)
        elif store["kind"] == "column":
            self.column = dict(zip(map(str, table.column("key").to_pylist()),
                                   table.column(store["column"]).to_pylist()))

    def get(self, key: str) -> bytes | None:
        if self.store["kind"] == "tar":
            if key not in self.index:
                return None
            offset, size = self.index[key]
            self.file.seek(offset)
            return self.file.read(size)
        if self.store["kind"] == "column":
            return self.column.get(key)
        folder = Path(self.store["path"])
        return next(((folder / f"{key}.{ext}").read_bytes() for ext in IMAGE_EXTENSIONS
                     if (folder / f"{key}.{ext}").is_file()), None)

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
