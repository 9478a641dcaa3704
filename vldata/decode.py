"""CPU image decoding for loaders: decode at reduced JPEG DCT scale when the target is small, then
resize (shorter side) and center-crop to the target, giving uint8 HWC RGB arrays.

Pillow's ``draft`` asks libjpeg for a 1/2, 1/4 or 1/8 scale decode that is still at least the size
needed, which is most of the saving on full-resolution photos; other formats decode normally. This
module has no torch dependency; ``collate`` stacks arrays into a uint8 [B,3,H,W] tensor when asked.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image as PILImage


def target_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from an int or a pair."""
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def decode_image(data: bytes, image_size: int | tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 array [H, W, 3]: the whole image, or resized-and-center-cropped to ``image_size``.
    Raises on bytes that do not decode."""
    img = PILImage.open(io.BytesIO(data))
    if image_size is None:
        return np.asarray(img.convert("RGB"))
    H, W = target_size(image_size)
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


def collate_images(arrays: list[np.ndarray]):
    """Stack HWC uint8 arrays into a torch uint8 tensor [B, 3, H, W]."""
    import torch

    if not arrays:
        return torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    batch = np.stack(arrays)
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
