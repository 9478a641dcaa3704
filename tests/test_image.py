"""Image policy: sniffing, verification, bombs, EXIF orientation, colour modes, resizing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

from vldata.ingest.image import ImagePolicy, load, sniff
from vldata.describe.schema import Image


def encode(img: PILImage.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def gradient(w=40, h=20, mode="RGB") -> PILImage.Image:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    img = PILImage.fromarray(arr, "RGB")
    return img if mode == "RGB" else img.convert(mode)


def decoded(image: Image) -> PILImage.Image:
    return PILImage.open(io.BytesIO(image.data))


@pytest.mark.parametrize("fmt,name", [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"),
                                      ("BMP", "bmp"), ("TIFF", "tiff")])
def test_sniff_reads_magic_bytes(fmt, name):
    assert sniff(encode(gradient(), fmt)) == name


def test_fine_images_keep_their_original_bytes():
    for fmt, mode in [("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "LA"), ("WEBP", "RGB")]:
        data = encode(gradient(mode=mode), fmt)
        out = load(data)
        assert isinstance(out, Image), (fmt, mode, out)
        assert out.data == data and (out.width, out.height) == (40, 20)


def test_failures_have_reasons():
    assert load(b"").reason == "image_empty"
    assert load(b"<html>not an image</html>").reason == "image_unrecognized"
    truncated = encode(gradient(200, 200), "PNG")[:300]
    assert load(truncated).reason == "image_corrupt"
    bomb = encode(PILImage.new("L", (3000, 3000)), "PNG")
    result = load(bomb, ImagePolicy(max_pixels=1_000_000))
    assert result.reason == "image_too_large" and "3000x3000" in result.message


def test_cmyk_jpeg_becomes_rgb_jpeg():
    out = load(encode(gradient().convert("CMYK"), "JPEG"))
    assert out.format == "jpeg" and decoded(out).mode == "RGB"


def test_sixteen_bit_png_becomes_eight_bit_keeping_contrast():
    arr = (np.arange(40 * 20, dtype=np.uint16).reshape(20, 40) * 80)
    out = load(encode(PILImage.fromarray(arr), "PNG"))
    img = decoded(out)
    assert out.format == "png" and img.mode == "L"
    px = np.asarray(img)
    assert px.max() > 200 and px.min() == 0


def test_exif_orientation_is_applied_to_pixels():
    img = gradient(40, 20)
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = load(encode(img, "JPEG", exif=exif.tobytes()))
    assert (out.width, out.height) == (20, 40)
    rotated = decoded(out)
    assert rotated.size == (20, 40) and rotated.getexif().get(0x0112, 1) == 1


def test_gif_and_bmp_become_png():
    for fmt in ("GIF", "BMP", "TIFF"):
        out = load(encode(gradient(), fmt))
        assert out.format == "png" and decoded(out).size == (40, 20)


@pytest.mark.parametrize("mode,size", [("keep_ratio", (64, 32)), ("center_crop", (32, 32)), ("border", (32, 32))])
def test_resize_modes(mode, size):
    out = load(encode(gradient(80, 40), "PNG"), ImagePolicy(resize_mode=mode, image_size=32 if mode != "keep_ratio" else 32))
    expected = (64, 32) if mode == "keep_ratio" else size
    assert (out.width, out.height) == expected == decoded(out).size


def test_resize_only_if_bigger_keeps_small_images():
    data = encode(gradient(20, 10), "PNG")
    out = load(data, ImagePolicy(resize_mode="keep_ratio", image_size=64, resize_only_if_bigger=True))
    assert out.data == data


def test_encode_format_reencodes():
    out = load(encode(gradient(), "PNG"), ImagePolicy(encode_format="jpeg", encode_quality=90))
    assert out.format == "jpeg" and sniff(out.data) == "jpeg"


def _png16(path, width: int, height: int) -> None:
    """A 16-bit grayscale PNG of horizontal bands (0..65535), compressed row by row: a few hundred KB
    on disk whatever its size, and never whole in memory here."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)))
        body = [z.compress(b"\0" + struct.pack(">H", y * 65535 // (height - 1)) * width) for y in range(height)]
        f.write(chunk(b"IDAT", b"".join(body) + z.flush()) + chunk(b"IEND", b""))


CHECK_16BIT = """
import sys
import numpy as np
from PIL import Image as PILImage
from vldata.ingest.image import load
out = load(open(sys.argv[1], "rb").read())
assert out.format == "png" and (out.width, out.height) == (13000, 13000), out
img = PILImage.open(__import__("io").BytesIO(out.data))
assert img.mode == "L", img.mode
column = np.asarray(img.crop((0, 0, 1, 13000))).ravel()
assert column[0] == 0 and column[-1] == 255 and column[6500] == 128, column[[0, 6500, -1]]
"""


def test_a_sixteen_bit_png_near_max_pixels_converts_in_bounded_memory(tmp_path):
    """169 Mpx (under the default max_pixels) in a 0.4 MB file: the decoded 16-bit image is 338 MB and
    the 8-bit one 169 MB; the conversion must not add full-size wider copies (it once peaked at 1.9 GB).
    The values are scaled (>> 8), not clipped."""
    import json
    import os
    import subprocess
    import sys

    from fuzz_raw import RSS_LIMIT_KB, RUNNER

    path = tmp_path / "big16.png"
    _png16(path, 13000, 13000)
    assert path.stat().st_size < 1 << 20
    proc = subprocess.run([sys.executable, "-c", RUNNER, sys.executable, "-c", CHECK_16BIT, str(path)],
                          capture_output=True, text=True, env={**os.environ, "FUZZ_TIMEOUT": "300"}, timeout=330)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, result["err"]
    assert result["rss_kb"] < RSS_LIMIT_KB, f"peak RSS {result['rss_kb'] // 1024} MB"
