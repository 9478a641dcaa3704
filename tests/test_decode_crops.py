"""Random-resized crops and flips on the CPU decode path (vldata.read.decode): the box sampler draws
what torchvision's RandomResizedCrop draws, draws depend only on the seed and the image size, and the
DCT-scaled fast path gives what a full decode, crop and resize give."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from torchvision.transforms import RandomResizedCrop

from vldata.read import decode
from vldata.read.batch_decode import _random_resized_box
from vldata.read.decode import decode_image, plan_crop, random_resized_box

DRAWS = 10_000
# two-sample Kolmogorov-Smirnov critical value for 10k vs 10k draws at alpha = 1e-6 (about 0.038)
KS_CRITICAL = math.sqrt(-math.log(1e-6 / 2) / 2) * math.sqrt(2 / DRAWS)
SHAPES = {"square": (500, 500), "4:3": (640, 480), "10:1": (1000, 100), "1:10": (100, 1000)}  # width, height


def photo(w: int = 320, h: int = 240, seed: int = 0) -> np.ndarray:
    """Photo-like RGB: gradients, a few blobs and noise, so that crops and resizes are distinguishable."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(seed)
    arr = np.stack([xx * 255 / w, yy * 255 / h, 127 + 100 * np.sin(xx / 17) * np.cos(yy / 23)], axis=-1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, max(6, min(w, h) / 4))
        arr[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(arr + rng.normal(0, 12, arr.shape), 0, 255).astype(np.uint8)


def enc(arr: np.ndarray, fmt: str = "JPEG", mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).convert(mode).save(buf, format=fmt, **kw)
    return buf.getvalue()


def reference(data: bytes, box, size: tuple[int, int], flipped: bool = False) -> np.ndarray:
    """Full Pillow decode, crop ``box`` (top, left, h, w), bilinear resize to ``size`` (H, W)."""
    top, left, h, w = box
    img = PILImage.open(io.BytesIO(data)).convert("RGB").crop((left, top, left + w, top + h))
    out = np.asarray(img.resize(size[::-1], PILImage.Resampling.BILINEAR))
    return out[:, ::-1] if flipped else out


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                        - np.searchsorted(b, grid, side="right") / len(b)).max())


def box_features(boxes: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
    top, left, h, w = boxes.T
    return {"area_fraction": h * w / (width * height), "log_aspect": np.log(w / h),
            "center_x": (left + w / 2) / width, "center_y": (top + h / 2) / height}


def torchvision_boxes(width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=0) -> np.ndarray:
    img = torch.empty((1, height, width), dtype=torch.uint8)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return np.array([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(DRAWS)])


def numpy_boxes(width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([random_resized_box(width, height, scale, ratio, rng=rng) for _ in range(DRAWS)])


def batch_decode_boxes(width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=1) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return np.array([_random_resized_box(height, width, generator, scale, ratio) for _ in range(DRAWS)])


def fallback_box(width: int, height: int) -> tuple[int, int, int, int]:
    """torchvision's fallback for the default ratio (3/4, 4/3), written out."""
    if width / height > 4 / 3:
        w, h = round(height * 4 / 3), height
    elif width / height < 3 / 4:
        w, h = width, round(width * 4 / 3)
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("sampler", [numpy_boxes, batch_decode_boxes], ids=["decode", "batch_decode"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_box_distribution_matches_torchvision(shape, sampler):
    width, height = SHAPES[shape]
    ours, theirs = sampler(width, height), torchvision_boxes(width, height)
    assert (ours[:, 2] > 0).all() and (ours[:, 0] + ours[:, 2] <= height).all()
    assert (ours[:, 3] > 0).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    ours_f, theirs_f = box_features(ours, width, height), box_features(theirs, width, height)
    for name in ours_f:
        assert ks_statistic(ours_f[name], theirs_f[name]) < KS_CRITICAL, (shape, name)
    fallback = fallback_box(width, height)
    p_ours, p_theirs = (np.all(b == fallback, axis=1).mean() for b in (ours, theirs))
    tolerance = 5 * math.sqrt(max(p_theirs * (1 - p_theirs), 1 / DRAWS) * 2 / DRAWS)
    assert abs(p_ours - p_theirs) <= tolerance, (shape, p_ours, p_theirs)
    if shape in ("10:1", "1:10"):
        assert p_theirs > 0.3  # the fallback is really exercised there


def test_the_ks_threshold_tells_a_different_scale_apart():
    width, height = SHAPES["4:3"]
    ours = box_features(numpy_boxes(width, height, scale=(0.12, 1.0)), width, height)
    theirs = box_features(torchvision_boxes(width, height), width, height)
    assert ks_statistic(ours["area_fraction"], theirs["area_fraction"]) > KS_CRITICAL


def test_box_statistics_with_a_narrow_scale():
    width, height = SHAPES["4:3"]
    ours = box_features(numpy_boxes(width, height, scale=(0.9, 1.0)), width, height)
    theirs = box_features(torchvision_boxes(width, height, scale=(0.9, 1.0)), width, height)
    for name in ours:
        assert ks_statistic(ours[name], theirs[name]) < KS_CRITICAL, name


JPEG = enc(photo(), quality=90)


def test_same_seed_same_bytes_other_seed_other_crop():
    def run(seed):
        return decode_image(JPEG, 64, crop="random", flip=True, rng=np.random.default_rng(seed))

    assert run(7).tobytes() == run(7).tobytes()
    boxes = {plan_crop(320, 240, "random", rng=np.random.default_rng(seed))[0] for seed in range(20)}
    assert len(boxes) == 20
    assert run(7).tobytes() != run(8).tobytes()


def test_draws_are_the_box_then_the_flip_and_nothing_else():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    decode_image(JPEG, 32, crop="random", flip=True, rng=rng_a)
    plan_crop(320, 240, "random", flip=True, rng=rng_b)
    assert rng_a.random() == rng_b.random()  # the same state after: a decode draws only what plan_crop draws


def test_flip_about_half_the_time_and_an_exact_mirror():
    flips = [plan_crop(320, 240, "random", flip=True, rng=np.random.default_rng(s))[1] for s in range(400)]
    assert 150 <= sum(flips) <= 250
    for seed in range(6):
        _, flipped = plan_crop(320, 240, "random", flip=True, rng=np.random.default_rng(seed))
        with_flip = decode_image(JPEG, (40, 56), crop="random", flip=True, rng=np.random.default_rng(seed))
        without = decode_image(JPEG, (40, 56), crop="random", rng=np.random.default_rng(seed))
        assert np.array_equal(with_flip, without[:, ::-1] if flipped else without)
    center = decode_image(JPEG, 48)
    for seed in range(4):
        _, flipped = plan_crop(320, 240, "center", flip=True, rng=np.random.default_rng(seed))
        out = decode_image(JPEG, 48, flip=True, rng=np.random.default_rng(seed))
        assert np.array_equal(out, center[:, ::-1] if flipped else center)


def test_random_draws_need_an_rng_and_a_size():
    with pytest.raises(ValueError, match="rng"):
        decode_image(JPEG, 32, crop="random")
    with pytest.raises(ValueError, match="rng"):
        decode_image(JPEG, 32, flip=True)
    with pytest.raises(ValueError, match="image_size"):
        decode_image(JPEG, crop="random", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="crop"):
        decode_image(JPEG, 32, crop="random_resized", rng=np.random.default_rng(0))


class SpyJpeg:
    """simplejpeg with a record of the size of each decode."""

    def __init__(self):
        import simplejpeg

        self.real, self.shapes = simplejpeg, []

    def decode_jpeg_header(self, data):
        return self.real.decode_jpeg_header(data)

    def decode_jpeg(self, data, **kw):
        arr = self.real.decode_jpeg(data, **kw)
        self.shapes.append(arr.shape[:2])
        return arr


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.9, 1.0)])
def test_dct_scaled_crop_is_close_to_full_decode_crop_resize(monkeypatch, scale):
    big = photo(640, 480, seed=1)
    data = enc(big, quality=90)
    spy = SpyJpeg()
    monkeypatch.setattr(decode, "_simplejpeg", spy)
    size = (48, 64)
    for seed in range(24):
        box, flipped = plan_crop(640, 480, "random", scale=scale, flip=True, rng=np.random.default_rng(seed))
        out = decode_image(data, size, crop="random", scale=scale, flip=True, rng=np.random.default_rng(seed))
        assert out.shape == (48, 64, 3) and out.dtype == np.uint8
        assert mean_abs_diff(out, reference(data, box, size, flipped)) < 6, (seed, box)
        reduction = 640 // spy.shapes[-1][1]
        assert box[3] >= 64 * reduction and box[2] >= 48 * reduction  # the box still covers the target
        assert reduction == 8 or box[3] < 64 * reduction * 2 or box[2] < 48 * reduction * 2  # and is the smallest
    assert any(shape != (480, 640) for shape in spy.shapes)  # the reduced DCT scales were used


def test_pillow_draft_path_takes_the_same_box(monkeypatch):
    data = enc(photo(640, 480, seed=2), quality=90)
    fast = [decode_image(data, 56, crop="random", rng=np.random.default_rng(s)) for s in range(8)]
    monkeypatch.setattr(decode, "_simplejpeg", None)
    for seed, expected in enumerate(fast):
        box, _ = plan_crop(640, 480, "random", rng=np.random.default_rng(seed))
        out = decode_image(data, 56, crop="random", rng=np.random.default_rng(seed))
        assert out.shape == (56, 56, 3)
        assert mean_abs_diff(out, expected) < 3 and mean_abs_diff(out, reference(data, box, (56, 56))) < 6


@pytest.mark.parametrize("size, shape", [(32, (32, 32, 3)), ((24, 40), (24, 40, 3)), ((50, 7), (50, 7, 3))])
def test_output_shape_is_exactly_the_target(size, shape):
    for seed in range(5):
        assert decode_image(JPEG, size, crop="random", rng=np.random.default_rng(seed)).shape == shape


@pytest.mark.parametrize("fmt, kw", [("PNG", {}), ("WEBP", {"lossless": True}), ("JPEG", {"progressive": True,
                                                                                           "quality": 95})])
def test_other_formats_take_the_same_box_for_the_same_rng(fmt, kw):
    arr = photo(seed=3)
    data, jpeg = enc(arr, fmt, **kw), enc(arr, quality=95)
    for seed in range(6):
        box, _ = plan_crop(320, 240, "random", rng=np.random.default_rng(seed))
        out = decode_image(data, 40, crop="random", rng=np.random.default_rng(seed))
        if fmt != "JPEG":  # lossless, decoded whole by Pillow: exactly crop then resize
            assert np.array_equal(out, reference(data, box, (40, 40)))
        assert mean_abs_diff(out, decode_image(jpeg, 40, crop="random", rng=np.random.default_rng(seed))) < 4


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_come_out_rgb(mode):
    data = enc(photo(seed=4), mode=mode, quality=95)
    for seed in range(4):
        box, _ = plan_crop(320, 240, "random", rng=np.random.default_rng(seed))
        out = decode_image(data, (30, 20), crop="random", rng=np.random.default_rng(seed))
        assert out.shape == (30, 20, 3) and out.dtype == np.uint8
        assert mean_abs_diff(out, reference(data, box, (30, 20))) < 6
        if mode == "L":
            assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("w, h", [(5, 3), (1, 1), (20, 200)])
def test_images_smaller_than_the_target_upscale(w, h):
    arr = photo(w, h, seed=5)
    for fmt in ("JPEG", "PNG"):
        data = enc(arr, fmt)
        for seed in range(4):
            box, _ = plan_crop(w, h, "random", rng=np.random.default_rng(seed))
            out = decode_image(data, 64, crop="random", rng=np.random.default_rng(seed))
            assert out.shape == (64, 64, 3)
            assert mean_abs_diff(out, reference(data, box, (64, 64))) < 6
