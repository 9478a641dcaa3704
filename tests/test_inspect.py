"""`vldata inspect`: field statistics with text histograms, and pictures of the samples."""

from __future__ import annotations

import hashlib
import io
import re
import socket

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from vldata.tools import contact_sheet, inspect


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def total_samples(scin_built) -> int:
    import json

    manifest = json.loads((scin_built / "parquet" / "vldata.json").read_text())
    return sum(info["num_samples"] for info in manifest["splits"].values())


def histogram_counts(text: str, title: str) -> list[int]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    counts = []
    for line in lines[start + 1:]:
        found = re.fullmatch(r"\s+-?\d+--?\d+\s+\|#*\s*\| (\d+)", line)
        if not found:
            break
        counts.append(int(found.group(1)))
    return counts


def test_contact_sheet_of_the_scin_sample_is_a_real_png(scin_built, tmp_path):
    png, page = tmp_path / "sheet.png", tmp_path / "sheet.html"
    proc = run_cli("inspect", scin_built, "--png", png, "--html", page, "--n", "8", check=True)
    assert f"wrote contact sheet {png} (8 samples)" in proc.stdout

    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.width >= 4 * 224 and image.height >= 2 * 224  # 4 columns x 2 rows of 224-px thumbnails
    pixels = np.asarray(image, dtype=np.float64)
    assert pixels.std() > 20  # not blank
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # thumbnails and anti-aliased text

    # each cell: a thumbnail that differs from the empty cell colour, and dark text under it
    pad, thumb = 10, 224
    top = 2 * pad + 15 + 3
    for n in range(8):
        x, y = pad + (n % 4) * (thumb + 2 * pad), top + pad + (n // 4) * (pad + thumb + pad // 2 + 6 * 20 + pad)
        cell = pixels[y:y + thumb, x:x + thumb]
        assert (np.abs(cell - contact_sheet.CELL).sum(axis=2) > 30).mean() > 0.01, n
        text = pixels[y + thumb + pad // 2 + 20:y + thumb + pad // 2 + 6 * 20, x:x + thumb]
        assert (text.sum(axis=2) < 200).sum() > 50, n  # glyphs in INK

    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.count("<figure>") == 8
    assert html.count("data:image/png;base64,") == 8 and "A photo of" in html and "accounting" in html


def test_contact_sheet_is_deterministic_and_shows_evenly_spaced_samples(scin_built, tmp_path):
    total = total_samples(scin_built)
    for name in ("a.png", "b.png"):
        run_cli("inspect", scin_built, "--png", tmp_path / name, "--n", "6", check=True)
    assert hashlib.sha256((tmp_path / "a.png").read_bytes()).digest() == \
        hashlib.sha256((tmp_path / "b.png").read_bytes()).digest()
    _, samples = inspect.read_samples(scin_built, 6)
    keys = [s.key for s in samples]
    assert inspect.pick(total, 6) == [i * total // 6 for i in range(6)] and len(keys) == len(set(keys)) == 6
    assert all(s.text and s.image for s in samples)


def test_webdataset_samples_match_the_parquet_ones(scin_built):
    _, from_parquet = inspect.read_samples(scin_built / "parquet", 5)
    _, from_tars = inspect.read_samples(scin_built / "webdataset", 5)
    assert from_parquet == from_tars


def test_inspect_prints_field_statistics_and_histograms(scin_built):
    text = run_cli("inspect", scin_built, check=True).stdout
    total = total_samples(scin_built)
    assert "fields (parquet):" in text and "monk_skin_tone_us" in text and "input_rows" in text
    for title in ("text length (characters of `text`", "image width (px", "image height (px"):
        counts = histogram_counts(text, title)
        assert len(counts) >= 2 and sum(counts) == total, title
    assert re.search(r"^text length .*: n=\d+ min=\d+ mean=[\d.]+ max=\d+$", text, re.MULTILINE)


def test_inspect_of_a_webdataset_only_folder_has_the_same_histograms(scin_built):
    both = run_cli("inspect", scin_built, check=True).stdout
    tars = run_cli("inspect", scin_built / "webdataset", check=True).stdout
    for title in ("text length", "image width", "image height"):
        assert histogram_counts(tars, title) == histogram_counts(both, title)


def test_pictures_of_something_that_is_not_a_build_is_one_error(tmp_path):
    proc = run_cli("inspect", tmp_path, "--png", tmp_path / "x.png")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a vldata build" in proc.stderr


def test_histogram():
    lines = inspect.histogram([1, 2, 2, 3, 10], "sizes", bins=3, width=10)
    assert lines[0] == "sizes: n=5 min=1 mean=3.6 max=10"
    assert [int(line.rsplit(" ", 1)[1]) for line in lines[1:]] == [4, 0, 1]
    assert "|##########|" in lines[1]
    assert inspect.histogram([], "sizes") == ["sizes: no values"]
    assert len(inspect.histogram([7] * 4, "same")) == 2


def test_wrap_fits_the_width_and_marks_cut_text():
    font = contact_sheet._font(15)
    text = "a photo of Steatoda grossa with common name False Black Widow " * 4
    lines = contact_sheet.wrap(text, font, 120, 3)
    assert len(lines) == 3 and lines[-1].endswith("...")
    assert all(font.getlength(line) <= 120 for line in lines)
    assert contact_sheet.wrap("short text", font, 120, 3) == ["short text"]
    long_word = contact_sheet.wrap("x" * 100, font, 60, 2)
    assert len(long_word) == 2 and all(font.getlength(line) <= 60 for line in long_word)


def test_thumbnail_handles_modes_and_broken_bytes():
    def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
        buf = io.BytesIO()
        image.save(buf, fmt)
        return buf.getvalue()

    grey16 = Image.fromarray(np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 16)
    rgba = Image.new("RGBA", (40, 80), (255, 0, 0, 128))
    for data in (encoded(grey16), encoded(rgba), encoded(Image.new("P", (10, 10)))):
        thumb = contact_sheet.thumbnail(data, 32)
        assert thumb.mode == "RGB" and max(thumb.size) <= 32
    assert contact_sheet.thumbnail(b"not an image", 32) is None and contact_sheet.thumbnail(None, 32) is None
