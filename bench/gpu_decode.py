"""GPU batch decode against the 2-worker CPU path, on full-resolution JPEGs.

Usage: python bench/gpu_decode.py [--n 2048] [--device cuda]
Self-contained: generates N photo-like full-resolution JPEGs (shorter side 768-1080) in memory,
checks correctness first (a mixed batch: baseline, progressive, CMYK, grayscale JPEGs, PNG, WebP, a
truncated JPEG, random bytes, an EXIF-rotated JPEG -> ok mask and pixels against a PIL reference),
then prints a table: the CPU path (vldata.read.decode.decode_image in 2 worker processes, DCT-scaled
decode + resize + center crop to 224) in images/s, and ``decode_batch(device=...)`` at batch sizes
64, 256 and 1024 (decode + resize + crop on the device, synchronised), with the speed-up over the
CPU path. Without a CUDA device only the CPU rows and the correctness check (on the CPU) run.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZE = 224


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    short = int(rng.integers(768, 1081))
    long = int(short * rng.uniform(1.3, 1.5))
    w, h = (long, short) if seed % 3 else (short, long)
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    base = x * rng.uniform(60, 200, 3) + y * rng.uniform(40, 160, 3)
    base = base + rng.normal(0, 5, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    buf = io.BytesIO()
    PILImage.fromarray(base.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def correctness(device: str) -> str:
    """The acceptance batch; returns a one-line verdict."""

    import vldata

    def enc(img, fmt, **kw):
        b = io.BytesIO()
        img.save(b, format=fmt, **kw)
        return b.getvalue()

    base = PILImage.open(io.BytesIO(photo(1))).resize((320, 240))
    exif = PILImage.Exif()
    exif[0x0112] = 6
    good = [enc(base, "JPEG", quality=95), enc(base, "JPEG", quality=95, progressive=True),
            enc(base.convert("CMYK"), "JPEG"), enc(base.convert("L"), "JPEG"), enc(base, "PNG"),
            enc(base, "WEBP", lossless=True), enc(base, "JPEG", quality=95, exif=exif.tobytes())]
    bad = [good[0][: len(good[0]) // 2], bytes(range(256)) * 8]
    images, ok = vldata.decode_batch(good + bad, device=device, size=SIZE)
    if ok.tolist() != [True] * len(good) + [False] * len(bad):
        return f"FAIL: ok mask {ok.tolist()}"
    worst = float("inf")  # PSNR; inf when every image matches the reference exactly
    for data in good:
        ref = np.asarray(ImageOps.exif_transpose(PILImage.open(io.BytesIO(data))).convert("RGB"))
        img, _ = vldata.decode_batch([data], device=device, size=ref.shape[:2])
        diff = img[0].permute(1, 2, 0).cpu().numpy().astype(float) - ref
        mse = float(np.mean(diff**2))
        worst = min(worst, 10 * np.log10(255**2 / mse) if mse else float("inf"))
    shown = "identical to PIL" if worst == float("inf") else f"worst PSNR vs PIL before resize {worst:.1f} dB"
    return f"OK: mask right, {shown}" + ("" if worst >= 40 else " (< 40!)")


def _cpu_worker(blobs: list[bytes]) -> int:
    from vldata.read.decode import decode_image

    for b in blobs:
        decode_image(b, SIZE)
    return len(blobs)


def cpu_path(blobs: list[bytes], workers: int = 2) -> float:
    chunks = [blobs[i::workers * 4] for i in range(workers * 4)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_cpu_worker, [c[:2] for c in chunks]))  # start the workers
        t0 = time.perf_counter()
        n = sum(pool.map(_cpu_worker, chunks))
    return n / (time.perf_counter() - t0)


def device_path(blobs: list[bytes], device: str, batch: int) -> float:
    import torch

    import vldata

    vldata.decode_batch(blobs[:batch], device=device, size=SIZE)  # warm-up (nvJPEG handles, kernels)
    torch.cuda.synchronize() if device.startswith("cuda") else None
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(blobs) - batch + 1, batch):
        images, ok = vldata.decode_batch(blobs[i:i + batch], device=device, size=SIZE)
        n += int(ok.sum())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    has_cuda = torch.cuda.is_available() and args.device.startswith("cuda")
    print(f"torch {torch.__version__}, device: {torch.cuda.get_device_name(0) if has_cuda else 'none (CPU only)'}")
    print("correctness (cpu):", correctness("cpu"))
    if has_cuda:
        print(f"correctness ({args.device}):", correctness(args.device))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        blobs = list(pool.map(photo, range(args.n)))
    print(f"{args.n} JPEGs, {np.mean([len(b) for b in blobs]) / 1024:.0f} KB mean, made in {time.perf_counter() - t0:.0f}s")
    cpu = cpu_path(blobs)
    print(f"{'path':<28} {'images/s':>10} {'vs CPU':>8}")
    print(f"{'CPU, 2 worker processes':<28} {cpu:>10.1f} {1.0:>7.2f}x")
    if not has_cuda:
        print("no CUDA device here: GPU rows not measured")
        return
    for batch in (64, 256, 1024):
        rate = device_path(blobs, args.device, batch)
        print(f"{f'{args.device} decode_batch, B={batch}':<28} {rate:>10.1f} {rate / cpu:>7.2f}x")


if __name__ == "__main__":
    main()
