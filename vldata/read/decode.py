"""CPU image decoding for loaders: decode at reduced JPEG DCT scale when the target is small, then
resize (shorter side) and center-crop to the target, giving uint8 HWC RGB arrays.

JPEGs are decoded by simplejpeg (libjpeg-turbo) at the smallest 1/2, 1/4 or 1/8 scale still at
least the size needed, falling back to Pillow's ``draft`` (same idea, a little slower) for JPEGs it
cannot take; other formats decode normally with Pillow. This
module has no torch dependency; ``collate`` stacks arrays into a uint8 [B,3,H,W] tensor when asked.
It must not read files or know about sources; it turns bytes into arrays and nothing else.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image as PILImage

try:
    import simplejpeg as _simplejpeg
except ImportError:  # optional: Pillow's draft decode is the fallback
    _simplejpeg = None


def target_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from an int or a pair."""
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def decode_image(data: bytes, image_size: int | tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 array [H, W, 3]: the whole image, or resized-and-center-cropped to ``image_size``.
    Raises on bytes that do not decode."""
    if image_size is None:
        return np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB"))
    H, W = target_size(image_size)
    img = _decode_jpeg_scaled(data, H, W) if data[:3] == b"\xff\xd8\xff" else None
    if img is None:
        img = PILImage.open(io.BytesIO(data))
        w, h = img.size
        scale = max(H / h, W / w)
        if img.format == "JPEG" and scale < 1:
            img.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))  # DCT-domain downscale, >= needed
        img = img.convert("RGB")
    w, h = img.size
    scale = max(H / h, W / w)
    new = (max(W, round(w * scale)), max(H, round(h * scale)))
    if new != (w, h):
        img = img.resize(new, PILImage.Resampling.BILINEAR, reducing_gap=None)
    left, top = (new[0] - W) // 2, (new[1] - H) // 2
    if new != (W, H):
        img = img.crop((left, top, left + W, top + H))
    return np.asarray(img)


def _decode_jpeg_scaled(data: bytes, H: int, W: int) -> PILImage.Image | None:
    """simplejpeg (libjpeg-turbo) decode at the smallest DCT scale covering H x W; None when it is
    not installed or cannot take this JPEG (CMYK, unusual sampling): Pillow's draft path then runs.
    Measured on 1024x768 photos: 8.1 ms/img against 9.2 with Pillow's draft and 13.8 without."""
    if _simplejpeg is None:
        return None
    try:
        header = _simplejpeg.decode_jpeg_header(data)
        h, w = header[0], header[1]
        scale = max(H / h, W / w)
        arr = _simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=math.ceil(h * scale),
                                      min_width=math.ceil(w * scale))
    except (ValueError, OSError):
        return None
    return PILImage.fromarray(arr)


def collate_images(arrays: list[np.ndarray]):
    """Stack HWC uint8 arrays into a torch uint8 tensor [B, 3, H, W] in channels-last memory format
    (a permuted view of one [B, H, W, 3] buffer: one copy per image, no transpose copy). In a
    DataLoader worker the buffer is allocated in shared memory, so handing the batch to the main
    process copies nothing more."""
    import torch
    from torch.utils.data import get_worker_info

    if not arrays:
        return torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    batch = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8)
    if get_worker_info() is not None:
        batch.share_memory_()
    view = batch.numpy()
    for i, a in enumerate(arrays):
        view[i] = a
    return batch.permute(0, 3, 1, 2)
