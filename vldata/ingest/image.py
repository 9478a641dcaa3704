"""Turn raw image bytes into a verified ``Image`` or a failure reason.

Policy, the same for every builder:
- the format is sniffed from the bytes, never taken from a file extension or a server header;
- the image must decode completely; a header whose width × height exceeds ``max_pixels`` is
  refused before decoding (decompression bombs);
- original bytes are kept when they are already what every reader handles the same way: JPEG, PNG
  or WebP, 8 bits per channel, in RGB, RGBA, L, LA or P mode, with no EXIF rotation to apply;
- otherwise the image is re-encoded once: an EXIF orientation is applied to the pixels (readers
  disagree on honouring it), CMYK/YCCK becomes RGB, 16-bit and 32-bit modes become 8-bit (strip by
  strip, so memory stays a small multiple of the 8-bit image), other
  formats (GIF first frame, BMP, TIFF, ...) become PNG. JPEG stays JPEG, everything else is PNG
  unless ``encode_format`` says otherwise;
- resizing (img2dataset's modes) happens only when asked; like img2dataset it averages pixel areas
  when shrinking (box filter, OpenCV's INTER_AREA) and uses Lanczos when enlarging. A JPEG that will
  be shrunk is decoded at a reduced DCT scale (1/2, 1/4, 1/8, never below the target size) first,
  which makes large photos several times cheaper to decode.
This module does no file or network I/O: callers hand it bytes.
It must not fetch, write files or know a dataset; a failure is an ``ImageFailure`` value, never an
exception.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from typing import Literal

from PIL import Image as PILImage
from PIL import ImageOps
from pydantic import BaseModel, ConfigDict, Field

from vldata.describe.schema import Image

PILImage.MAX_IMAGE_PIXELS = None  # we enforce our own limit, as a counted failure

_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
_KEEP_MODES = {"RGB", "RGBA", "L", "LA", "P"}
_STRIP_PIXELS = 1 << 22  # pixels converted at a time from 16/32 to 8 bits


class ImagePolicy(BaseModel):
    """Image options shared by every builder's Config."""

    model_config = ConfigDict(extra="forbid")

    max_pixels: int = Field(default=178_956_970, gt=0, description="Refuse images with more pixels (decompression bombs).")
    max_bytes: int = Field(default=64 << 20, gt=0, description="Refuse image files larger than this, before "
                           "reading them (bytes; downloads have fetch.max_bytes).")
    resize_mode: Literal["no", "keep_ratio", "center_crop", "border"] = "no"
    image_size: int = Field(default=256, gt=0)
    resize_only_if_bigger: bool = False
    encode_format: Literal["keep", "jpeg", "png", "webp"] = "keep"
    encode_quality: int = Field(default=95, ge=1, le=100)


class ImageFailure(BaseModel):
    """Why some bytes did not become an Image. ``reason`` is a stable, countable name."""

    reason: Literal["image_missing", "image_empty", "image_unrecognized", "image_corrupt", "image_too_large"]
    message: str


def too_large(name: str, size: int, policy: ImagePolicy) -> ImageFailure | None:
    """``image_too_large`` for a file whose size (from its directory entry or a container's header)
    is over ``policy.max_bytes``: checked before the bytes are read."""
    if size <= policy.max_bytes:
        return None
    return ImageFailure(reason="image_too_large", message=f"{name}: {size} bytes, over image.max_bytes={policy.max_bytes}")


def sniff(data: bytes) -> str | None:
    """The image format of ``data`` from its magic bytes, or None."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def load(data: bytes, policy: ImagePolicy | None = None) -> Image | ImageFailure:
    """Verify ``data`` and return it as an Image (original bytes when possible)."""
    policy = policy or ImagePolicy()
    if not data:
        return ImageFailure(reason="image_empty", message="zero bytes")
    fmt = sniff(data)
    if fmt is None:
        return ImageFailure(reason="image_unrecognized", message=f"not an image ({len(data)} bytes, no known image signature)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            img = PILImage.open(io.BytesIO(data))
            width, height = img.size
            if width * height > policy.max_pixels:
                return ImageFailure(reason="image_too_large",
                                    message=f"{width}x{height} exceeds max_pixels={policy.max_pixels}")
            target = _target_size(width, height, policy)
            if target is not None and fmt == "jpeg":
                img.draft(None, target)  # DCT-domain downscale; the result is never smaller than target
            img.load()
    except Exception as e:  # PIL raises many types for broken files
        return ImageFailure(reason="image_corrupt", message=f"{fmt} does not decode: {type(e).__name__}: {e}")
    return _normalize(data, fmt, img, (width, height), policy)


def _normalize(data: bytes, fmt: str, img: PILImage.Image, size: tuple[int, int],
               policy: ImagePolicy) -> Image | ImageFailure:
    orientation = img.getexif().get(0x0112, 1) if fmt in ("jpeg", "png", "webp", "tiff") else 1
    needs_reencode = (
        fmt not in ("jpeg", "png", "webp")
        or img.mode not in _KEEP_MODES
        or orientation not in (1, None)
        or getattr(img, "n_frames", 1) > 1
        or policy.encode_format not in ("keep", fmt)
    )
    resized = _resize(img, size, policy)
    if resized is not None:
        img, needs_reencode = resized, True
    if not needs_reencode:
        return Image(data=data, format=fmt, width=img.width, height=img.height,
                     sha256=hashlib.sha256(data).hexdigest())
    if orientation not in (1, None):
        img = ImageOps.exif_transpose(img)
    img = _to_8bit(img)
    out_fmt = policy.encode_format if policy.encode_format != "keep" else ("jpeg" if fmt == "jpeg" else "png")
    if out_fmt == "jpeg" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    params = {"quality": policy.encode_quality} if out_fmt in ("jpeg", "webp") else {}
    img.save(buf, format=out_fmt.upper(), **params)
    out = buf.getvalue()
    return Image(data=out, format=out_fmt, width=img.width, height=img.height,
                 sha256=hashlib.sha256(out).hexdigest())


def _to_8bit(img: PILImage.Image) -> PILImage.Image:
    if img.mode in _KEEP_MODES:
        return img
    if img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _luminance_to_8bit(img)
    if img.mode == "F":
        return img.convert("L")
    if img.mode == "1":
        return img.convert("L")
    if img.mode == "PA":
        return img.convert("RGBA")
    return img.convert("RGB")


def _luminance_to_8bit(img: PILImage.Image) -> PILImage.Image:
    """16/32-bit luminance scaled to 8 bits (>> 8 when any value is above 255) rather than clipped, in
    strips of about ``_STRIP_PIXELS``: memory is the decoded image, the 8-bit one and one strip."""
    import numpy as np

    shift = 8 if (img.getextrema()[1] or 0) > 255 else 0
    out = PILImage.new("L", img.size)
    rows = max(1, _STRIP_PIXELS // max(1, img.width))
    for top in range(0, img.height, rows):
        box = (0, top, img.width, min(img.height, top + rows))
        strip = np.asarray(img.crop(box))
        strip = np.clip(strip >> shift, 0, 255).astype(np.uint8)
        out.paste(PILImage.fromarray(strip), box)
    return out


def _target_size(w: int, h: int, policy: ImagePolicy) -> tuple[int, int] | None:
    """The size the image is scaled to before any crop or padding; None when it is not resized."""
    if policy.resize_mode == "no":
        return None
    size = policy.image_size
    if policy.resize_only_if_bigger and max(w, h) <= size:
        return None
    # keep_ratio and center_crop scale the shorter side to size; border the longer one
    scale = size / (max(w, h) if policy.resize_mode == "border" else min(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _resize(img: PILImage.Image, original: tuple[int, int], policy: ImagePolicy) -> PILImage.Image | None:
    """Resize like img2dataset's modes; None when nothing changes. ``original`` is the size in the
    file's header (``img`` may already be smaller, decoded at a reduced DCT scale)."""
    target = _target_size(*original, policy)
    if target is None:
        return None
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if "A" in img.mode or img.mode == "P" else "RGB")
    shrinking = target[0] < img.width or target[1] < img.height
    method = PILImage.Resampling.BOX if shrinking else PILImage.Resampling.LANCZOS
    if target != img.size:
        img = img.resize(target, method)
    size = policy.image_size
    if policy.resize_mode == "center_crop":
        left, top = (img.width - size) // 2, (img.height - size) // 2
        return img.crop((left, top, left + size, top + size))
    if policy.resize_mode == "border":  # centre on a black square
        canvas = PILImage.new(img.mode, (size, size), 0)
        canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
        return canvas
    return img


def dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image's header, without decoding it; None when unreadable."""
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # PIL raises many types for broken files
        return None


def blur_boxes(image: Image, boxes: list[tuple[float, float, float, float]], policy: ImagePolicy) -> Image:
    """``image`` with each box (x_min, y_min, x_max, y_max as fractions of width and height, the
    convention of face-box metadata in web-scale collections) blurred strongly enough to make a face unrecognisable.
    Re-encoded in the image's own format (JPEG at ``policy.encode_quality``)."""
    from PIL import ImageFilter

    img = PILImage.open(io.BytesIO(image.data))
    img.load()
    img = ImageOps.exif_transpose(img) if img.getexif().get(0x0112, 1) not in (1, None) else img
    img = _to_8bit(img)
    for x0, y0, x1, y1 in boxes:
        box = (max(0, int(x0 * img.width)), max(0, int(y0 * img.height)),
               min(img.width, int(round(x1 * img.width))), min(img.height, int(round(y1 * img.height))))
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue
        region = img.crop(box)
        radius = max(2, max(region.size) // 8)
        img.paste(region.filter(ImageFilter.GaussianBlur(radius)), box)
    buf = io.BytesIO()
    fmt = image.format
    if fmt == "jpeg" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    params = {"quality": policy.encode_quality} if fmt in ("jpeg", "webp") else {}
    img.save(buf, format=fmt.upper(), **params)
    out = buf.getvalue()
    return Image(data=out, format=fmt, width=img.width, height=img.height, sha256=hashlib.sha256(out).hexdigest())
