"""The streamed tar reader every builder shares: plain, gzip and zstd archives; a cut anywhere, bytes
that are not an archive, or a missing end-of-archive is a ContainerBroken naming the file, and what
came before the break was yielded; member sizes are known before anything is read."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest
import zstandard

from vldata.ingest.tarstream import ContainerBroken, read_member, stream_members

PACK = {".tar": lambda b: b, ".tar.gz": lambda b: gzip.compress(b, mtime=0),
        ".tar.zst": lambda b: zstandard.ZstdCompressor().compress(b)}


def archive(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


MEMBERS = {f"{i}.jpg": bytes([i]) * (3000 + i) for i in range(5)}


def read_all(path) -> list[tuple[str, bytes]]:
    return [(m.name, read_member(t, m, path)) for m, t in stream_members(path)]


@pytest.mark.parametrize("suffix", PACK)
def test_a_whole_archive_reads_every_member(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    path.write_bytes(PACK[suffix](archive(MEMBERS)))
    assert read_all(path) == list(MEMBERS.items())


@pytest.mark.parametrize("suffix", PACK)
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.9, 0.99])
def test_a_cut_archive_breaks_with_its_name_after_the_members_before_the_cut(tmp_path, suffix, fraction):
    data = PACK[suffix](archive(MEMBERS))
    # a plain tar's tail is zero padding after the end blocks: cut within what matters
    length = sum(512 * (1 + -(-len(d) // 512)) for d in MEMBERS.values()) + 1024 if suffix == ".tar" else len(data)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: int(length * fraction)])
    got = []
    with pytest.raises(ContainerBroken, match=f"^cut{suffix.replace('.', '[.]')}: truncated"):
        for m, t in stream_members(path):
            got.append((m.name, read_member(t, m, path)))
    assert got == list(MEMBERS.items())[: len(got)]


@pytest.mark.parametrize("suffix", PACK)
def test_bytes_that_are_no_archive_break_with_its_name(tmp_path, suffix):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(b"<html>not an archive</html>" * 50)
    with pytest.raises(ContainerBroken, match="^junk"):
        read_all(path)


def test_a_member_announcing_256_mb_is_known_by_its_header_before_any_read(tmp_path):
    """A 1000:1 bomb: the caller sees the size and never reads it."""
    path = tmp_path / "bomb.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("big.jpg")
        info.size = 256 << 20
        t.addfile(info, io.BytesIO(bytes(info.size)))
    path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    assert path.stat().st_size < (1 << 20)
    sizes = [m.size for m, _ in stream_members(path)]  # never read: the stream skips it
    assert sizes == [256 << 20]
