"""Batch decoding with device="cpu": the same routing and batch code as on CUDA."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageOps

import vldata
from vldata.read.batch_decode import BatchDecoder, jpeg_route


def photo(w=64, h=48) -> PILImage.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], axis=-1).astype(np.uint8)
    return PILImage.fromarray(arr)


def enc(img: PILImage.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def exif_rotated() -> bytes:
    exif = PILImage.Exif()
    exif[0x0112] = 6
    return enc(photo(), "JPEG", quality=95, exif=exif.tobytes())


def reference(data: bytes) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(PILImage.open(io.BytesIO(data))).convert("RGB"))


GOOD = {
    "baseline": enc(photo(), "JPEG", quality=95),
    "progressive": enc(photo(), "JPEG", quality=95, progressive=True),
    "cmyk": enc(photo().convert("CMYK"), "JPEG", quality=95),
    "grayscale": enc(photo().convert("L"), "JPEG", quality=95),
    "png": enc(photo(), "PNG"),
    "webp": enc(photo(), "WEBP", lossless=True),
    "exif_rotated": exif_rotated(),
}
BAD = {"truncated": GOOD["baseline"][: len(GOOD["baseline"]) // 2], "random": bytes(range(256)) * 4}


def test_routing_by_header():
    routes = {name: jpeg_route(data) for name, data in {**GOOD, **BAD}.items()}
    assert routes == {"baseline": "gpu", "progressive": "progressive_or_lossless", "cmyk": "cmyk_or_other",
                      "grayscale": "grayscale", "png": "not_jpeg", "webp": "not_jpeg", "exif_rotated": "exif_rotated",
                      "truncated": "truncated", "random": "not_jpeg"}


def test_mixed_batch_ok_mask_and_pixels_before_resize():
    names = list(GOOD) + list(BAD)
    blobs = [GOOD.get(n, BAD.get(n)) for n in names]
    dec = BatchDecoder("cpu")
    # size = each image's own size: no resize, so pixels compare with a PIL reference directly
    for name, data in zip(names, blobs):
        if name in BAD:
            continue
        ref = reference(data)
        images, ok = dec.decode([data], size=ref.shape[:2])
        assert ok.tolist() == [True]
        got = images[0].permute(1, 2, 0).numpy().astype(int)
        diff = np.abs(got - ref.astype(int))
        psnr = 10 * np.log10(255**2 / max(np.mean(diff**2), 1e-12))
        assert diff.max() <= 2 or psnr >= 40, (name, diff.max(), psnr)
    images, ok = dec.decode(blobs, size=(32, 40))
    assert images.shape == (len(blobs), 3, 32, 40) and images.dtype == torch.uint8
    assert ok.tolist() == [n in GOOD for n in names]
    assert images[~ok].sum() == 0
    assert dec.stats["device"] >= 1 and dec.stats["cpu_truncated"] >= 1 and dec.stats["failed"] >= 2


def test_exif_rotated_comes_out_upright():
    images, ok = vldata.decode_batch([GOOD["exif_rotated"]], device="cpu", size=(64, 48))  # rotated: 48 wide
    ref = reference(GOOD["exif_rotated"])
    assert ref.shape[:2] == (64, 48) and ok.all()
    assert np.abs(images[0].permute(1, 2, 0).numpy().astype(int) - ref.astype(int)).max() <= 2


def test_a_failing_batched_call_is_bisected_not_lost(monkeypatch):
    import torchvision.io

    real = torchvision.io.decode_jpeg
    poison = GOOD["baseline"][:-2] + b"\x00\x00\xff\xd9"  # passes the header check, "breaks" the device call

    def flaky(tensors, **kw):
        if any(bytes(t.numpy()) == poison for t in tensors):
            raise RuntimeError("simulated nvJPEG failure")
        return real(tensors, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", flaky)
    dec = BatchDecoder("cpu")
    blobs = [GOOD["baseline"]] * 5 + [poison] + [GOOD["baseline"]] * 4
    images, ok = dec.decode(blobs, size=24)
    assert ok.all()  # the poisoned one was retried on the CPU path and decodes there
    assert dec.stats["device"] == 9 and dec.stats["cpu_after_device_failure"] == 1


def test_random_resized_crop_is_seeded():
    blobs = [GOOD["png"], GOOD["baseline"]]
    a, _ = vldata.decode_batch(blobs, device="cpu", size=16, crop="random_resized", generator=torch.Generator().manual_seed(3))
    b, _ = vldata.decode_batch(blobs, device="cpu", size=16, crop="random_resized", generator=torch.Generator().manual_seed(3))
    c, _ = vldata.decode_batch(blobs, device="cpu", size=16, crop="random_resized", generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bytes_from_the_loader_then_decode_equals_cpu_decode(scin_built, num_workers):
    from torch.utils.data import DataLoader

    src = vldata.open(scin_built / "webdataset")
    raw = vldata.TorchDataset(src, batch_size=5, decode=None, seed=4)
    cpu = vldata.TorchDataset(src, batch_size=5, decode="cpu", image_size=32, seed=4)
    raw_batches = list(DataLoader(raw, batch_size=None, num_workers=num_workers))
    cpu_batches = list(DataLoader(cpu, batch_size=None, num_workers=num_workers))
    assert [b["key"] for b in raw_batches] == [b["key"] for b in cpu_batches]
    for rb, cb in zip(raw_batches, cpu_batches):
        decoded = vldata.decode_loader_batch(rb, device="cpu", size=32)
        assert decoded["ok"].all() and decoded["key"] == cb["key"]
        diff = decoded["image"].int() - cb["image"].int()
        psnr = 10 * torch.log10(255**2 / diff.float().pow(2).mean().clamp(min=1e-9))
        assert psnr >= 30, psnr  # the two resize implementations agree to within rounding
