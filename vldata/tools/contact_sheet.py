"""Pictures of a built dataset: a PNG contact sheet and an HTML page of samples.

``render`` lays out samples (from ``inspect.read_samples``) as a grid of thumbnails, each with its key
and its text wrapped to the cell width underneath, in Pillow's bundled TrueType font; ``html`` writes
the same samples with the text summary as one self-contained page. The choice of samples is made by
``inspect``; this module only draws and never reads shards itself.
"""

from __future__ import annotations

import base64
import html as html_lib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from vldata.tools.inspect import Sample, read_samples

BACKGROUND = (255, 255, 255)
CELL = (236, 236, 236)
INK = (25, 25, 25)
MUTED = (110, 110, 110)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # TrueType when Pillow has FreeType (>= 10.1)


def thumbnail(data: bytes | None, size: int) -> Image.Image | None:
    """The image fitted into ``size`` x ``size`` (aspect kept), as RGB; None when it does not decode."""
    if not data:
        return None
    try:
        image = Image.open(io.BytesIO(data))
        image = ImageOps.exif_transpose(image)
        image.draft("RGB", (size, size))  # JPEG: decode at reduced scale
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float grey: stretch to 8 bits
            a = np.asarray(image, dtype=np.float64)
            span = float(a.max() - a.min()) or 1.0
            image = Image.fromarray(((a - a.min()) * 255.0 / span).astype(np.uint8))
        if image.mode in ("RGBA", "LA", "P", "PA"):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, BACKGROUND)
            image.paste(rgba, mask=rgba.getchannel("A"))
        image = image.convert("RGB")
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        return image
    except Exception:  # a broken image gets a placeholder, not a failed sheet
        return None


def wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels in at most ``max_lines`` lines; a word longer than a line is
    cut; when text remains, the last line ends in "..."."""
    words, lines, line, i = text.split(), [], "", 0
    while i < len(words) and len(lines) < max_lines:
        candidate = f"{line} {words[i]}" if line else words[i]
        if font.getlength(candidate) <= width:
            line, i = candidate, i + 1
            continue
        if line:
            lines.append(line)
            line = ""
        else:  # one word wider than the line: cut it where it still fits
            word = words[i]
            cut = next((k for k in range(len(word) - 1, 0, -1) if font.getlength(word[:k]) <= width), 1)
            lines.append(word[:cut])
            words[i] = word[cut:]
    if line and len(lines) < max_lines:
        lines.append(line)
        line = ""
    if (i < len(words) or line) and lines:
        last = lines[-1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "..."
    return lines


def render(samples: list[Sample], *, title: str = "", columns: int = 4, thumb: int = 224, text_lines: int = 5,
           font_size: int = 15) -> Image.Image:
    """A contact sheet: ``columns`` cells per row, each a thumbnail over the sample's key and text."""
    font, small, header = _font(font_size), _font(font_size - 2), _font(font_size + 3)
    pad, line_h = 10, font_size + 5
    cell_w, text_h = thumb + 2 * pad, (text_lines + 1) * line_h
    cell_h = pad + thumb + pad // 2 + text_h + pad
    rows = max(1, -(-len(samples) // columns))
    top = 2 * pad + font_size + 3 if title else 0
    sheet = Image.new("RGB", (columns * cell_w + pad, top + rows * cell_h + pad), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad), title, font=header, fill=INK)
    for n, sample in enumerate(samples):
        x, y = pad + (n % columns) * cell_w, top + pad + (n // columns) * cell_h
        draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=CELL)
        image = thumbnail(sample.image, thumb)
        if image is None:
            draw.text((x + pad, y + thumb // 2 - line_h), "(no decodable image)", font=small, fill=MUTED)
        else:
            sheet.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
        ty = y + thumb + pad // 2
        key = wrap(f"{sample.split} / {sample.key}", small, thumb, 1)
        draw.text((x, ty), key[0] if key else "", font=small, fill=MUTED)
        for k, line in enumerate(wrap(sample.text or "(no text)", font, thumb, text_lines)):
            draw.text((x, ty + (k + 1) * line_h), line, font=font, fill=INK)
    return sheet


def html(samples: list[Sample], *, title: str, summary: str, thumb: int = 224) -> str:
    """One self-contained HTML page: the summary as preformatted text and a grid of samples."""
    cells = []
    for sample in samples:
        image = thumbnail(sample.image, thumb)
        if image is None:
            picture = '<div class="missing">(no decodable image)</div>'
        else:
            buf = io.BytesIO()
            image.save(buf, "PNG")
            picture = f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
        cells.append(f'<figure>{picture}<figcaption><code>{html_lib.escape(sample.split)} / '
                     f'{html_lib.escape(sample.key)}</code><br>{html_lib.escape(sample.text)}</figcaption></figure>')
    style = ("body{font-family:sans-serif;margin:1em}main{display:grid;gap:12px;"
             f"grid-template-columns:repeat(auto-fill,{thumb + 16}px)}}figure{{margin:0}}"
             f"img,.missing{{width:{thumb}px;height:{thumb}px;object-fit:contain;background:#ececec}}"
             "figcaption{font-size:13px;overflow-wrap:anywhere}code{color:#666}pre{font-size:12px}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html_lib.escape(title)}</title>'
            f'<style>{style}</style></head><body><h1>{html_lib.escape(title)}</h1>'
            f'<main>{"".join(cells)}</main><h2>Summary</h2><pre>{html_lib.escape(summary)}</pre></body></html>\n')


def write_pictures(path: str | Path, *, png: str | Path | None = None, html_file: str | Path | None = None,
                   n: int = 16, columns: int = 4, summary: str = "") -> list[str]:
    """Write the contact sheet (``png``) and/or the HTML page of a build; returns one line per file."""
    manifest, samples = read_samples(path, n)
    total = sum(info["num_samples"] for info in manifest["splits"].values())
    title = (f"{manifest['builder']} {manifest['version']} - {len(samples)} of {total} samples, evenly spaced "
             f"({manifest['format']})")
    done = []
    if png:
        render(samples, title=title, columns=columns).save(png, "PNG")
        done.append(f"wrote contact sheet {png} ({len(samples)} samples)")
    if html_file:
        Path(html_file).write_text(html(samples, title=title, summary=summary), encoding="utf-8")
        done.append(f"wrote {html_file} ({len(samples)} samples)")
    return done
