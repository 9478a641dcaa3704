"""Batch image decoding on a device, with a CPU fallback that never fails a batch.

``decode_batch(blobs, device, size)`` sniffs each image's header. Baseline 3-channel JPEGs without
an EXIF rotation go to one batched ``torchvision.io.decode_jpeg(..., device=device)`` call (nvJPEG on
CUDA, libjpeg-turbo on the CPU); progressive, CMYK/YCCK, grayscale and EXIF-rotated JPEGs, PNG, WebP
and anything else go to the CPU path (Pillow), as does any image of a batched call that fails: the
batch is bisected until the failing images are isolated. Images are resized (antialiased) and cropped
on the device; ``crop="random_resized"`` takes its box from ``decode.random_resized_box``
(torchvision's sampler, as on the CPU path), seeded per image by one draw from ``generator``. The
result is a uint8 [B, 3, H, W] tensor and a bool [B] ``ok`` mask; an image that decodes nowhere is
zeros with ok=False. One ``BatchDecoder`` per device, used under a lock; decode in
the main process on CUDA, never in DataLoader workers.
"""

from __future__ import annotations

import io
import struct
import threading
from collections import Counter
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from PIL import ImageOps

from vldata.read.decode import random_resized_box

Crop = Literal["center", "random_resized"]
_SOF_BASELINE = {0xC0, 0xC1}  # baseline / extended sequential Huffman
_SOF_OTHER = {0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_route(data: bytes) -> str:
    """"gpu" for a baseline 3-component JPEG with no EXIF rotation, else why it goes to the CPU."""
    if data[:3] != b"\xff\xd8\xff":
        return "not_jpeg"
    if b"\xff\xd9" not in data[-64:]:  # no end-of-image marker: truncated (libjpeg would pad it grey)
        return "truncated"
    i, n = 2, len(data)
    orientation = 1
    while i + 4 <= n:
        if data[i] != 0xFF:
            return "malformed"
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        segment = data[i + 4:i + 2 + length]
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            orientation = _exif_orientation(segment[6:])
        elif marker in _SOF_BASELINE or marker in _SOF_OTHER:
            if marker in _SOF_OTHER:
                return "progressive_or_lossless"
            components = segment[5] if len(segment) > 5 else 0
            if components != 3:
                return "grayscale" if components == 1 else "cmyk_or_other"
            if _adobe_transform_ycck(data[:i]):
                return "cmyk_or_other"
            return "exif_rotated" if orientation not in (0, 1) else "gpu"
        elif marker == 0xDA:
            break
        i += 2 + length
    return "malformed"


def _adobe_transform_ycck(head: bytes) -> bool:
    j = head.find(b"Adobe")
    return j >= 0 and len(head) > j + 11 and head[j + 11] == 2


def _exif_orientation(tiff: bytes) -> int:
    try:
        endian = "<" if tiff[:2] == b"II" else ">"
        offset = struct.unpack(endian + "I", tiff[4:8])[0]
        count = struct.unpack(endian + "H", tiff[offset:offset + 2])[0]
        for k in range(count):
            entry = tiff[offset + 2 + 12 * k: offset + 14 + 12 * k]
            tag, = struct.unpack(endian + "H", entry[:2])
            if tag == 0x0112:
                return struct.unpack(endian + "H", entry[8:10])[0]
    except (struct.error, IndexError):
        return 1
    return 1


def _cpu_decode(data: bytes) -> torch.Tensor:
    """Pillow decode, EXIF orientation applied, RGB: uint8 [3, h, w]."""
    img = ImageOps.exif_transpose(PILImage.open(io.BytesIO(data)))
    arr = np.asarray(img.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _resize_crop(img: torch.Tensor, size: tuple[int, int], crop: Crop, generator: torch.Generator | None) -> torch.Tensor:
    """uint8 [3, h, w] on any device -> uint8 [3, H, W] (antialiased bilinear)."""
    H, W = size
    _, h, w = img.shape
    if crop == "random_resized":
        top, left, ch, cw = _random_resized_box(h, w, generator)
        img = img[:, top:top + ch, left:left + cw]
        out = F.interpolate(img[None].float(), size=(H, W), mode="bilinear", antialias=True, align_corners=False)
        return out[0].round_().clamp_(0, 255).to(torch.uint8)
    scale = max(H / h, W / w)
    nh, nw = max(H, round(h * scale)), max(W, round(w * scale))
    if (nh, nw) != (h, w):
        img = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", antialias=True,
                            align_corners=False)[0].round_().clamp_(0, 255).to(torch.uint8)
    top, left = (nh - H) // 2, (nw - W) // 2
    return img[:, top:top + H, left:left + W]


def _random_resized_box(h: int, w: int, generator: torch.Generator | None,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) from ``decode.random_resized_box`` (torchvision's sampler), its numpy
    Generator seeded by one draw from ``generator`` (torch's global generator when None)."""
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
    return random_resized_box(w, h, scale, ratio, rng=np.random.default_rng(seed))


class BatchDecoder:
    """Decoder bound to one device; thread-safe; counts where images went and why."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.lock = threading.Lock()
        self.stats: Counter = Counter()

    def decode(self, blobs: list, size: tuple[int, int] | int, crop: Crop = "center",
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = (size, size) if isinstance(size, int) else size
        raw = [_as_bytes(b) for b in blobs]
        decoded: list[torch.Tensor | None] = [None] * len(raw)
        gpu = []
        with self.lock:
            for i, data in enumerate(raw):
                route = jpeg_route(data) if data else "empty"
                if route == "gpu":
                    gpu.append(i)
                else:
                    self.stats[f"cpu_{route}"] += 1
            self._decode_on_device(raw, gpu, decoded)
            out = torch.zeros((len(raw), 3, H, W), dtype=torch.uint8, device=self.device)
            ok = torch.zeros(len(raw), dtype=torch.bool)
            for i, data in enumerate(raw):
                img = decoded[i]
                if img is None:
                    try:
                        img = _cpu_decode(data).to(self.device, non_blocking=True)
                    except Exception:  # noqa: BLE001 - an image that decodes nowhere is zeros with ok=False
                        self.stats["failed"] += 1
                        continue
                out[i] = _resize_crop(img, (H, W), crop, generator)
                ok[i] = True
            self.stats["images"] += len(raw)
        return out, ok

    def _decode_on_device(self, raw: list[bytes], indices: list[int], decoded: list) -> None:
        """Batched decode of ``indices``; on failure, bisect so one bad image costs only itself."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if not indices:
            return
        tensors = [torch.frombuffer(bytearray(raw[i]), dtype=torch.uint8) for i in indices]
        try:
            images = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)
        except Exception:  # noqa: BLE001 - any device failure: bisect, then the CPU path
            if len(indices) == 1:
                self.stats["cpu_after_device_failure"] += 1
                return
            mid = len(indices) // 2
            self._decode_on_device(raw, indices[:mid], decoded)
            self._decode_on_device(raw, indices[mid:], decoded)
            return
        for i, img in zip(indices, images):
            decoded[i] = img
        self.stats["device"] += len(indices)


def _as_bytes(blob) -> bytes:
    if isinstance(blob, torch.Tensor):
        return blob.cpu().numpy().tobytes()
    return bytes(blob) if blob is not None else b""


_decoders: dict[str, BatchDecoder] = {}
_decoders_lock = threading.Lock()


def decoder(device: str | torch.device = "cpu") -> BatchDecoder:
    """The one decoder of ``device`` (created on first use)."""
    key = str(torch.device(device))
    with _decoders_lock:
        if key not in _decoders:
            _decoders[key] = BatchDecoder(key)
        return _decoders[key]


def decode_batch(blobs: list, device: str | torch.device = "cuda", size: tuple[int, int] | int = (224, 224),
                 crop: Crop = "center", generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode encoded images (bytes or uint8 tensors) to uint8 [B, 3, H, W] on ``device`` and a bool
    [B] mask of which decoded; see the module docstring for the routing."""
    return decoder(device).decode(blobs, size, crop, generator)


def split_images(batch: dict) -> list[bytes]:
    """The encoded images of a ``TorchDataset(decode=None)`` batch (flat bytes + ``image_sizes``)."""
    flat = batch["image"].numpy().tobytes()
    out, start = [], 0
    for n in batch["image_sizes"].tolist():
        out.append(flat[start:start + n])
        start += n
    return out


def decode_loader_batch(batch: dict, device: str | torch.device = "cuda", size: tuple[int, int] | int = (224, 224),
                        crop: Crop = "center", generator: torch.Generator | None = None) -> dict:
    """For ``TorchDataset(decode=None)`` batches, in the main process: ``for batch in loader:
    batch = decode_loader_batch(batch, "cuda")`` gives ``image`` (uint8 [B,3,H,W] on the device) and
    ``ok`` (bool [B]) in place of the bytes."""
    images, ok = decode_batch(split_images(batch), device=device, size=size, crop=crop, generator=generator)
    rest = {k: v for k, v in batch.items() if k not in ("image", "image_sizes")}
    return {**rest, "image": images, "ok": ok}
