"""Turn raw image bytes into a verified ``Image`` or a failure reason.

Policy, the same for every builder:
- the format is sniffed from the bytes, never taken from a file extension or a server header;
- the image must decode completely; a header whose width × height exceeds ``max_pixels`` is
  refused before decoding (decompression bombs);
- original bytes are kept when they are already what every reader handles the same way: JPEG, PNG
  or WebP, 8 bits per channel, in RGB, RGBA, L, LA or P mode, with no EXIF rotation to apply;
- otherwise the image is re-encoded once: an EXIF orientation is applied to the pixels (readers
  disagree on honouring it), CMYK/YCCK becomes RGB, 16-bit and 32-bit modes become 8-bit, other
  formats (GIF first frame, BMP, TIFF, ...) become PNG. JPEG stays JPEG, everything else is PNG
  unless ``encode_format`` says otherwise;
- resizing (img2dataset's modes) happens only when asked.
This module does no file or network I/O: callers hand it bytes.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from typing import Literal

from PIL import Image as PILImage
from PIL import ImageOps
from pydantic import BaseModel, ConfigDict, Field

from .schema import Image

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


class ImagePolicy(BaseModel):
    """Image options shared by every builder's Config."""

    model_config = ConfigDict(extra="forbid")

    max_pixels: int = Field(default=178_956_970, gt=0, description="Refuse images with more pixels (decompression bombs).")
    resize_mode: Literal["no", "keep_ratio", "center_crop", "border"] = "no"
    image_size: int = Field(default=256, gt=0)
    resize_only_if_bigger: bool = False
    encode_format: Literal["keep", "jpeg", "png", "webp"] = "keep"
    encode_quality: int = Field(default=95, ge=1, le=100)


class ImageFailure(BaseModel):
    """Why some bytes did not become an Image. ``reason`` is a stable, countable name."""

    reason: Literal["image_missing", "image_empty", "image_unrecognized", "image_corrupt", "image_too_large"]
    message: str


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
        return ImageFailure(reason="image_unrecognized", message=f"not an image (starts with {data[:8]!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            img = PILImage.open(io.BytesIO(data))
            width, height = img.size
            if width * height > policy.max_pixels:
                return ImageFailure(reason="image_too_large",
                                    message=f"{width}x{height} exceeds max_pixels={policy.max_pixels}")
            img.load()
    except Exception as e:  # PIL raises many types for broken files
        return ImageFailure(reason="image_corrupt", message=f"{fmt} does not decode: {type(e).__name__}: {e}")
    return _normalize(data, fmt, img, policy)


def _normalize(data: bytes, fmt: str, img: PILImage.Image, policy: ImagePolicy) -> Image | ImageFailure:
    orientation = img.getexif().get(0x0112, 1) if fmt in ("jpeg", "png", "webp", "tiff") else 1
    needs_reencode = (
        fmt not in ("jpeg", "png", "webp")
        or img.mode not in _KEEP_MODES
        or orientation not in (1, None)
        or getattr(img, "n_frames", 1) > 1
        or policy.encode_format not in ("keep", fmt)
    )
    resized = _resize(img, policy)
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
        # scale 16/32-bit luminance to 8 bits rather than clipping it
        import numpy as np

        arr = np.asarray(img, dtype=np.uint32)
        shift = 8 if arr.max(initial=0) > 255 else 0
        return PILImage.fromarray((arr >> shift).astype("uint8"), mode="L")
    if img.mode == "F":
        return img.convert("L")
    if img.mode == "1":
        return img.convert("L")
    if img.mode == "PA":
        return img.convert("RGBA")
    return img.convert("RGB")


def _resize(img: PILImage.Image, policy: ImagePolicy) -> PILImage.Image | None:
    """Resize like img2dataset's modes; None when nothing changes."""
    if policy.resize_mode == "no":
        return None
    size = policy.image_size
    w, h = img.size
    if policy.resize_only_if_bigger and max(w, h) <= size:
        return None
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if "A" in img.mode or img.mode == "P" else "RGB")
    if policy.resize_mode == "keep_ratio":
        scale = size / min(w, h)
        return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), PILImage.Resampling.LANCZOS)
    if policy.resize_mode == "center_crop":
        return ImageOps.fit(img, (size, size), PILImage.Resampling.LANCZOS)
    # border: fit inside size x size, pad with black
    return ImageOps.pad(img, (size, size), PILImage.Resampling.LANCZOS, color=0)
