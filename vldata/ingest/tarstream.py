"""Tar archives read as a stream, never extracted: ``.tar``, ``.tar.gz`` and ``.tar.zst``.

``stream_members(path)`` yields the regular-file members in order with the open archive, and
``read_member`` the bytes of one (the caller compares the size in its header with its cap first, so a
member that announces 256 MB is never read). A damaged archive raises ``ContainerBroken`` naming the
file where it breaks: a truncated or corrupt compressed stream, a damaged header, or an archive that
ends without its end-of-archive blocks (tarfile itself stops silently when the data ends between two
members), so a builder can fail the rows whose members lie past the break and keep the rest.
Read to its end, a gzip's trailer (CRC and length) is checked too. It knows no dataset, opens nothing
but ``path`` and writes nothing.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from vldata.errors import one_line

_CHUNK = 1 << 20
_TAR_END = 1024  # a complete tar ends with two zero blocks


class ContainerBroken(Exception):
    """An archive that is truncated or does not decode; the message names the file."""


def _errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (tarfile.TarError, zlib.error, EOFError, OSError)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:  # pragma: no cover - zstandard is a dependency
        pass
    return errors


def _open(path: Path):
    name = path.name
    if name.endswith((".gz", ".tgz")):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def stream_members(path: Path) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Regular-file members in order, streamed; raises ContainerBroken where the archive breaks."""
    path = Path(path)
    try:
        with _open(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    yield member, tar
            end, inner = tar.offset, tar.fileobj  # inner: tarfile's view of the stream (with what it buffered)
            while inner.read(_CHUNK):  # to the end: the end blocks, and a gzip's trailer
                pass
            if inner.tell() < end + _TAR_END:
                raise ContainerBroken(f"{path.name}: truncated (no end-of-archive after {end} bytes)")
    except ContainerBroken:
        raise
    except _errors() as e:
        raise ContainerBroken(f"{path.name}: truncated or corrupt ({one_line(e)})") from None


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    """The bytes of a member yielded by ``stream_members`` (its size checked by the caller)."""
    try:
        data = tar.extractfile(member).read(member.size)
    except _errors() as e:
        raise ContainerBroken(f"{Path(path).name}: truncated or corrupt inside {member.name} ({one_line(e)})") from None
    if len(data) != member.size:
        raise ContainerBroken(f"{Path(path).name}: truncated inside {member.name}")
    return data
