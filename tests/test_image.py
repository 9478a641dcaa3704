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
