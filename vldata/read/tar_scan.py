"""One webdataset tar read once, as a stream: where each sample's members are, and what is wrong with it.

``scan(f, size, layout)`` parses the tar's headers with the standard ``tarfile`` module in stream mode
(``r|``) and skips member data without keeping it, so any readable file object works (a local file,
an fsspec HTTP or object-store file) and each byte is read once. Members are grouped into samples by
webdataset's rule (``base_plus_ext``: the key is the name up to the first dot of its basename, with
the directory part; the suffix is the rest, lower-cased; consecutive members with one key form a
sample), and a sample is kept when ``layout`` finds its primary image. What is not kept is counted
and named: samples without an image, with a member twice, with more than ``MAX_MEMBERS`` members,
longer than ``MAX_SAMPLE_BYTES``, or cut by the end of the tar; a tar that ends early (no end-of-archive
block, a member past the end, a header that does not parse) keeps the samples before the cut. It
must not keep member data, trust a size in a header (a member claiming more than the file holds is
never skipped over), use a key as a file path, or open anything itself.
"""

from __future__ import annotations

import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vldata.errors import one_line
from vldata.layout import MAX_SAMPLE_BYTES, PlainLayout

MAX_MEMBERS = 1000  # members of one sample: more is not a sample but a hostile or broken tar
MAX_KEY = 1024  # characters of a key
MAX_NAMED = 1000  # skipped keys named per reason and tar (all are counted)
MAX_HEADER_BYTES = 1 << 20  # a pax or GNU long-name header: tarfile reads it whole into memory
BUFSIZE = 64 << 10  # tarfile's stream buffer; larger ones are copied at every header read

_KEY_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset.tariterators.base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")  # webdataset skips these (``__key__``-style names)
_COMPRESSED = {b"\x1f\x8b": "gzip", b"(\xb5/\xfd": "zstd", b"BZh": "bzip2", b"\xfd7zXZ": "xz"}


def key_and_suffix(name: str) -> tuple[str | None, str | None]:
    """webdataset's split of a member name: ``dir/abc.seg.png`` -> (``dir/abc``, ``seg.png``);
    (None, None) for a name without a dot in its basename (webdataset skips those)."""
    m = _KEY_SUFFIX.match(name)
    return (m.group(1), m.group(2)) if m else (None, None)


@dataclass
class Scan:
    """What one pass over a tar found. ``unreadable``: why no sample could be read at all (then
    ``io_failed`` says whether reading failed rather than the data, worth a retry later)."""

    samples: list = field(default_factory=list)  # [key, [[suffix, data offset, size], ...]], in tar order
    members: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> samples
    skipped_keys: dict[str, list[str]] = field(default_factory=dict)  # reason -> the first MAX_NAMED keys
    ended_early: str | None = None
    unreadable: str | None = None
    io_failed: bool = False
    bytes_read: int = 0

    def skip(self, reason: str, key: str) -> None:
        self.skipped[reason] += 1
        named = self.skipped_keys.setdefault(reason, [])
        if len(named) < MAX_NAMED:
            named.append(key)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"samples": len(self.samples), "members": self.members,
                               "skipped": dict(self.skipped), "skipped_keys": self.skipped_keys,
                               "bytes_read": self.bytes_read}
        if self.ended_early:
            out["ended_early"] = self.ended_early
        return out


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header whole: refuse one that claims more than a name needs."""

    def _proc_gnulong(self, tarfile_):
        _check_header_size(self)
        return super()._proc_gnulong(tarfile_)

    def _proc_pax(self, tarfile_):
        _check_header_size(self)
        return super()._proc_pax(tarfile_)


def _check_header_size(info: tarfile.TarInfo) -> None:
    if info.size > MAX_HEADER_BYTES:
        raise tarfile.ReadError(f"an extended header of {info.size} bytes")


class _Counted:
    """The file tarfile reads: counts bytes, remembers the first ones and whether reading itself failed."""

    def __init__(self, f, on_read=None):
        self.f, self.on_read = f, on_read
        self.count, self.head, self.failed = 0, b"", None

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.f.read(n)
        except Exception as e:  # the storage, not the tar: a later run may succeed (re-raised)
            self.failed = one_line(e)
            raise
        if not self.count:
            self.head = data[:8]
        self.count += len(data)
        if self.on_read is not None:
            self.on_read(len(data))
        return data


class _Samples:
    """Consecutive members with one key make a sample; ``close`` keeps or skips (and names) it."""

    def __init__(self, layout: PlainLayout, scan: Scan):
        self.layout, self.scan = layout, scan
        self.key: str | None = None
        self.members: list[list] = []
        self.suffixes: set[str] = set()
        self.problem: str | None = None

    def add(self, key: str, suffix: str, offset: int, size: int) -> None:
        if key != self.key:
            self.close()
            self.key, self.members, self.suffixes, self.problem = key, [], set(), None
            if len(key) > MAX_KEY:
                self.problem = "long_key"
        if suffix in self.suffixes:
            self.problem = self.problem or "duplicate_member"
        elif len(self.members) >= MAX_MEMBERS:
            self.problem = self.problem or "too_many_members"
        else:
            self.members.append([suffix, offset, size])
            self.suffixes.add(suffix)

    def cut(self) -> None:
        """The tar ends inside this sample (or right after it): it may lack members."""
        if self.key is not None:
            self.problem = "truncated"

    def close(self) -> None:
        if self.key is None:
            return
        key, problem = self.key, self.problem
        if problem is None and self.layout.primary(self.suffixes) is None:
            problem = "no_image"
        if problem is None:
            span = max(o + n for _, o, n in self.members) - min(o for _, o, _ in self.members)
            problem = "too_large" if span > MAX_SAMPLE_BYTES else None
        if problem:
            self.scan.skip(problem, key[:MAX_KEY])
        else:
            self.scan.samples.append([key, self.members])
        self.key, self.members, self.suffixes = None, [], set()


def scan(f, size: int, layout: PlainLayout, on_read=None) -> Scan:
    """Read the tar in ``f`` (``size`` bytes, seekable for one last 512-byte look) once, from the start."""
    out = Scan()
    stream = _Counted(f, on_read)
    try:
        tar = tarfile.open(fileobj=stream, mode="r|", bufsize=BUFSIZE, tarinfo=_BoundedTarInfo,  # noqa: SIM115
                           encoding="utf-8", errors="surrogateescape")
    except Exception as e:  # noqa: BLE001 - whatever a hostile first header makes tarfile raise: not a tar
        out.bytes_read = stream.count
        out.io_failed = stream.failed is not None
        out.unreadable = f"read failed: {stream.failed}" if out.io_failed else _not_a_tar(stream.head, e)
        return out
    with tar:  # closing it leaves ``f`` open
        _read_members(tar, stream, size, _Samples(layout, out), out)
    out.bytes_read = stream.count
    return out


def _read_members(tar: tarfile.TarFile, stream: _Counted, size: int, samples: _Samples, out: Scan) -> None:
    while True:
        try:
            member = tar.next()
        except Exception as e:  # noqa: BLE001 - a damaged header past the first: the tar ends here
            if stream.failed is not None:
                out.io_failed, out.unreadable, out.samples = True, f"read failed: {stream.failed}", []
                return
            out.ended_early = f"unreadable header at byte {tar.offset} ({one_line(e)})"
            break
        if member is None:
            break
        tar.members = []  # stream mode keeps every header otherwise
        key, suffix = key_and_suffix(member.name)
        if member.isreg() and not _META.match(member.name) and key is not None:
            out.members += 1
            samples.add(key, suffix.lower(), member.offset_data, member.size)
        if tar.offset > size:  # the next header lies past the end: never skip there (a size may be 2**60)
            out.ended_early = f"member {member.name[:200]!r} claims {member.size} bytes, past the end at {size}"
            break
    if out.ended_early is None:
        out.ended_early = _end_problem(stream.f, tar.offset, size)
    if out.ended_early:
        samples.cut()
    samples.close()


def _end_problem(f, end: int, size: int) -> str | None:
    """tarfile stops without a word at the end of the data and at a header it cannot parse; only an
    end-of-archive (zero) block at ``end`` means the tar is complete."""
    if size - end < tarfile.BLOCKSIZE:
        return f"no end-of-archive block (the data stops at byte {size})"
    try:
        f.seek(end)
        block = f.read(tarfile.BLOCKSIZE)
    except Exception as e:  # noqa: BLE001 - the storage failed at the last look
        return f"end-of-archive block unreadable ({one_line(e)})"
    if block.count(0) != len(block):
        return f"invalid header at byte {end}"
    return None


def _not_a_tar(head: bytes, e: Exception) -> str:
    if not head:
        return "empty file"
    for magic, name in _COMPRESSED.items():
        if head.startswith(magic):
            return f"{name}-compressed (byte-range reads need an uncompressed tar)"
    return f"not a tar ({one_line(e)})"
