"""MedTrinity-25M's ``25M_accessible`` shards: zstd-compressed tars read as a stream, never extracted.

``index_shards`` finds every member's shard and position by basename, ``stream_members`` yields a
shard's regular-file members in order and ``read_member`` the bytes of
one (the caller checks the size from its header first); both raise ``ShardTruncated`` where a shard breaks off (a partial download), so the builder can
fail the rows whose images lie past the break and build the rest. Knows no rows, keys or Records and
does no sharding or retries; the builder in ``__init__`` decides what a member means.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

_TAR_END = 1024  # a complete tar ends with two zero blocks


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
            # (read in chunks: what follows them may be large)
            while reader.tell() < end + _TAR_END and reader.read(_TAR_END):
                pass
            if reader.tell() < end + _TAR_END:
                raise ShardTruncated(f"{path.name}: truncated (no end-of-archive after {end} bytes)")
        except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as e:
            raise ShardTruncated(f"{path.name}: truncated or corrupt ({e})") from None


def index_shards(shards: list[Path]) -> tuple[dict[str, tuple[int, int]], dict[int, str], int]:
    """One streaming pass over every shard: {basename: (shard index, member position)} (the first
    shard naming a basename wins), {shard index: why it is truncated}, and how many basenames repeat."""
    where: dict[str, tuple[int, int]] = {}
    truncated: dict[int, str] = {}
    duplicates = 0
    for si, shard in enumerate(shards):
        try:
            for pos, (member, _) in enumerate(stream_members(shard)):
                base = member.name.rsplit("/", 1)[-1]
                if base in where:
                    duplicates += 1
                else:
                    where[base] = (si, pos)
        except ShardTruncated as e:
            truncated[si] = str(e)
    return where, truncated, duplicates


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
