"""CPU image decoding for loaders: encoded bytes to uint8 HWC RGB arrays of the target size, cut by
one of two crops. ``center`` resizes the shorter side to the target and cuts the middle. ``random``
is torchvision's RandomResizedCrop: ``random_resized_box`` is the same sampler drawing from a numpy
Generator, and ``flip`` mirrors with probability 1/2. Every random draw is made by ``plan_crop`` from
the size in the image's header, before any pixel is decoded, so it depends only on the Generator and
the image size, never on which decoder ran.

Knowing the box first lets a JPEG decode at a reduced DCT scale: simplejpeg (libjpeg-turbo) decodes
at the smallest scale whose box still covers the target (1/2, 1/4 or 1/8 for a random box; any k/8
for the center crop), and Pillow's ``draft`` does the same (a little slower) for JPEGs simplejpeg
cannot take; other formats decode whole with Pillow. Resizing is Pillow's antialiased bilinear.
This module has no torch dependency; ``collate_images`` stacks arrays into a uint8 [B,3,H,W] tensor
when asked. It must not read files or know about sources, and it must not draw from any random
state but the Generator it is given; it turns bytes into arrays and nothing else.
"""

from __future__ import annotations

import io
import math
from typing import Literal

import numpy as np
from PIL import Image as PILImage

try:
    import simplejpeg as _simplejpeg
except ImportError:  # optional: Pillow's draft decode is the fallback
    _simplejpeg = None

Crop = Literal["center", "random"]
Box = tuple[int, int, int, int]  # top, left, height, width, in the pixels of the stored image
_JPEG_MAGIC = b"\xff\xd8\xff"
_REDUCTIONS = (8, 4, 2)  # DCT scales 1/8, 1/4, 1/2: the fast ones in libjpeg-turbo and Pillow's draft


def target_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from an int or a pair."""
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def random_resized_box(width: int, height: int, scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3), *, rng: np.random.Generator) -> Box:
    """torchvision's ``RandomResizedCrop.get_params`` drawing from ``rng``: up to ten tries of an area
    uniform in ``scale`` times the image's and an aspect ratio (w/h) log-uniform in ``ratio``; the first
    box that fits is placed uniformly. When none fits, the centered box of the whole image, narrowed
    to the nearest aspect ratio in ``ratio``."""
    if not (width > 0 and height > 0 and 0 <= scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1]):
        raise ValueError(f"random_resized_box: bad size {width}x{height}, scale {scale} or ratio {ratio}")
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def plan_crop(width: int, height: int, crop: Crop = "center", *, scale: tuple[float, float] = (0.08, 1.0),
              ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = False,
              rng: np.random.Generator | None = None) -> tuple[Box | None, bool]:
    """What ``decode_image`` does to a ``width`` x ``height`` image: the box it cuts out and resizes
    (None for ``crop="center"``: shorter side resized to the target, middle cut) and whether it then
    mirrors the result. Draws from ``rng`` the box (``crop="random"``), then the flip (``flip=True``),
    and nothing else."""
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', not {crop!r}")
    if rng is None and (crop == "random" or flip):
        raise ValueError("crop='random' and flip=True draw from rng: pass a seeded numpy Generator")
    box = random_resized_box(width, height, scale, ratio, rng=rng) if crop == "random" else None
    return box, bool(flip and rng.random() < 0.5)


def decode_image(data: bytes, image_size: int | tuple[int, int] | None = None, *, crop: Crop = "center",
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip: bool = False, rng: np.random.Generator | None = None) -> np.ndarray:
    """RGB uint8 array [H, W, 3]: the whole image (``image_size`` None), or cut to ``image_size`` by
    ``crop``: "center" (shorter side resized, middle cut) or "random" (torchvision's
    RandomResizedCrop with ``scale`` and ``ratio``). ``flip`` mirrors horizontally with probability
    1/2. Random draws come from ``rng`` as ``plan_crop`` makes them. Raises on bytes that do not
    decode, and ValueError on a random crop without ``image_size`` or ``rng``."""
    if image_size is None and crop == "random":
        raise ValueError("crop='random' needs an image_size")
    width, height, opened = _header(data)
    box, flipped = plan_crop(width, height, crop, scale=scale, ratio=ratio, flip=flip, rng=rng)
    if image_size is None:
        img = (opened or PILImage.open(io.BytesIO(data))).convert("RGB")
    elif box is None:
        img = _center_crop(data, opened, width, height, target_size(image_size))
    else:
        img = _box_crop(data, opened, width, height, box, target_size(image_size))
    if flipped:
        img = img.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(img)


def _header(data: bytes) -> tuple[int, int, PILImage.Image | None]:
    """(width, height, opened) of the stored image, nothing decoded yet. ``opened`` is the lazily
    opened Pillow image, or None for a JPEG whose header simplejpeg reads (simplejpeg decodes it)."""
    if _simplejpeg is not None and data[:3] == _JPEG_MAGIC:
        try:
            height, width = _simplejpeg.decode_jpeg_header(data)[:2]
            return width, height, None
        except (ValueError, OSError):
            pass
    img = PILImage.open(io.BytesIO(data))
    return img.size[0], img.size[1], img


def _center_crop(data: bytes, opened: PILImage.Image | None, width: int, height: int,
                 size: tuple[int, int]) -> PILImage.Image:
    H, W = size
    img = _decode_jpeg_scaled(data, width, height, H, W) if opened is None else None
    if img is None:
        img = opened or PILImage.open(io.BytesIO(data))
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
    return img


def _decode_jpeg_scaled(data: bytes, w: int, h: int, H: int, W: int) -> PILImage.Image | None:
    """simplejpeg (libjpeg-turbo) decode of a ``w`` x ``h`` JPEG at the smallest k/8 DCT scale covering
    H x W; None when it cannot take this JPEG (unusual sampling): Pillow's draft path then runs.
    Measured on 1024x768 photos: 8.1 ms/img against 9.2 with Pillow's draft and 13.8 without."""
    scale = max(H / h, W / w)
    try:
        arr = _simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=math.ceil(h * scale),
                                      min_width=math.ceil(w * scale))
    except (ValueError, OSError):
        return None
    return PILImage.fromarray(arr)


def _box_crop(data: bytes, opened: PILImage.Image | None, width: int, height: int, box: Box,
              size: tuple[int, int]) -> PILImage.Image:
    """``box`` of the stored image resized to ``size``, decoding a JPEG at the smallest of the DCT
    scales 1/8, 1/4, 1/2 at which the box still covers ``size`` (else at full size)."""
    H, W = size
    top, left, bh, bw = box
    reduction = next((r for r in _REDUCTIONS if bw >= W * r and bh >= H * r), 1)
    arr = None
    if opened is None:
        try:
            arr = _simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // reduction),
                                          min_width=-(-width // reduction))
        except (ValueError, OSError):
            arr = None
    if arr is None:
        img = opened or PILImage.open(io.BytesIO(data))
        if img.format == "JPEG" and reduction > 1:
            img.draft("RGB", (width // reduction, height // reduction))  # Pillow then takes exactly 1/reduction
        img = img.convert("RGB")
        dw, dh = img.size
    else:
        dh, dw = arr.shape[:2]
    # libjpeg scales by a factor f and rounds the size up: source pixel x lands at x * f
    if (dw, dh) == (-(-width // reduction), -(-height // reduction)):
        fx = fy = 1 / reduction
    else:
        fx, fy = dw / width, dh / height
    x0, y0 = left * fx, top * fy
    x1, y1 = min(dw, (left + bw) * fx), min(dh, (top + bh) * fy)
    ix0, iy0, ix1, iy1 = math.floor(x0), math.floor(y0), min(dw, math.ceil(x1)), min(dh, math.ceil(y1))
    # cut first so that no pixel outside the box reaches the resize filter, as in crop-then-resize
    region = PILImage.fromarray(arr[iy0:iy1, ix0:ix1]) if arr is not None else img.crop((ix0, iy0, ix1, iy1))
    return region.resize((W, H), PILImage.Resampling.BILINEAR, box=(x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0),
                         reducing_gap=None)


def collate_images(arrays: list[np.ndarray]):
    """Stack HWC uint8 arrays into a torch uint8 tensor [B, 3, H, W] in channels-last memory format
    (a permuted view of one [B, H, W, 3] buffer: one copy per image, no transpose copy). In a
    DataLoader worker the buffer is allocated in shared memory, so handing the batch to the main
    process copies nothing more."""
    import torch
    from torch.utils.data import get_worker_info

    if not arrays:
        return torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    shape = (len(arrays), *arrays[0].shape)
    if get_worker_info() is not None:
        # born in shared memory, as DataLoader's own collate does: share_memory_() on a new tensor
        # would first fill private pages, then copy them (measured: 187 against 129 us per 224 px image)
        storage = torch.UntypedStorage._new_shared(math.prod(shape))
        batch = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    else:
        batch = torch.empty(shape, dtype=torch.uint8)
    view = batch.numpy()
    for i, a in enumerate(arrays):
        view[i] = a
    return batch.permute(0, 3, 1, 2)
