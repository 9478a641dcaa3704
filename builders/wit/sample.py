"""WIT's synthetic raw input: gzipped TSVs for train/val/test whose image URLs point at a loopback
server laid out as Wikimedia Commons, with the real quirks.

Written for the demo and the tests (``WitBuilder.write_sample``); the blank picture, its encoding
and the TSV writing come from ``vldata.ingest.synthetic``, the inner square is drawn here. Nothing
here is used while building real data, and it must not parse: the columns it writes are those of
``columns``.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from urllib.parse import quote

from vldata.ingest import loopback, synthetic

from .columns import COLUMNS

_PAGES = [  # (language, page title, section, context) in the style of real rows
    ("es", "Hoz y martillo", "Emblemas", "La hoz y el martillo es un símbolo de la unidad obrera y campesina."),
    ("de", "Kleines Hasenmaul", "", "Das Kleine Hasenmaul ist eine Fledermausart aus der Familie der Hasenmäuler."),
    ("ru", "Украинская гривна", "История", "Гри́вна — национальная валюта Украины."),
    ("en", "Deer Park, Wisconsin", "Geography", "Deer Park is a village in St. Croix County, Wisconsin."),
    ("tg", "Душанбе", "", "Душанбе — пойтахти Ҷумҳурии Тоҷикистон."),
    ("fr", "Phare de Cordouan", "Architecture", "Le phare de Cordouan est un phare situé en mer."),
]
_ATTRIBUTIONS = ["English: Lesser bulldog bat (Noctilio albiventris)", "Galego: Logo do Movemento Galego ao Socialismo",
                 "Русский: Банкнота 1 гривна", "Deutsch: Leuchtturm an der Gironde-Mündung", ""]
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif"}


def _picture(rng: random.Random, fmt: str) -> tuple[bytes, int, int]:
    img = synthetic.blank(rng, (24, 96))
    w, h = img.size
    img.paste(synthetic.colour(rng), (w // 4, h // 4, w // 2, h // 2))
    return synthetic.encode(img, fmt, quality=90 if fmt == "JPEG" else None), w, h


def write_sample(raw: Path, n: int = 12, seed: int = 0) -> None:
    """Write ``raw/wit_v1.train.all-0000{0,1}-of-00002.tsv.gz`` (``n`` rows each) and one val and one
    test file (``max(3, n // 4)`` rows each), the images under ``raw/site`` and ``raw/loopback.json``.

    Quirks reproduced (train file 0, rows 0-6): a reference description with an embedded newline
    (quoted); a page titled ``NA`` with no caption but the title; ``false`` booleans; an attribution
    with an ``English: `` label and no reference/alt text; an SVG (``image/svg+xml``); a URL that
    404s; a GIF; an image used on two pages (rows 0 and 7 of train file 0); a percent-encoded
    non-ASCII file name. The other rows are random.
    """
    rng = random.Random(seed)
    raw = Path(raw)
    raw.mkdir(parents=True, exist_ok=True)
    commons = raw / "site" / "wikipedia" / "commons"
    port = loopback.free_port()
    base = f"http://127.0.0.1:{port}"

    def image(name: str, fmt: str = "JPEG") -> tuple[str, str, int, int]:
        """Serve a new picture where Commons would: commons/<md5[0]>/<md5[:2]>/<name>."""
        data, w, h = _picture(rng, fmt)
        digest = hashlib.md5(name.encode()).hexdigest()
        folder = commons / digest[0] / digest[:2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        return f"{base}/wikipedia/commons/{digest[0]}/{digest[:2]}/{quote(name)}", _MIME[fmt], h, w

    def row(language: str, title: str, section: str, context: str, url: str, mime: str, h: int | str, w: int | str,
            reference: str = "", attribution: str = "", alt: str = "", flags: str = "true,false,true") -> list[str]:
        main, lang_id, changed = flags.split(",")
        page_url = f"https://{language}.wikipedia.org/wiki/{quote(title.replace(' ', '_'))}"
        hierarchical = " / ".join(x for x in (title, section) if x)
        return [language, page_url, url, title, section, hierarchical, reference, attribution, alt, mime, str(h),
                str(w), main, lang_id, changed, context, ""]

    shared = image("MGS_logo.jpg")
    special = [
        row("es", "Hoz y martillo", "Emblemas", _PAGES[0][3] + "\nEl símbolo se usó en la Unión Soviética.", *shared,
            reference="Logo del MGS\nen Galicia", attribution=_ATTRIBUTIONS[1], flags="false,false,true"),
        row("en", "NA", "", "NA is a page title too.", *image("NA_logo.png", "PNG"), flags="true,true,false"),
        row("de", "Kleines Hasenmaul", "", _PAGES[1][3], *image("Noctilio_albiventris.jpg"),
            attribution=_ATTRIBUTIONS[0], flags="true,false,false"),
        row("en", "Flag of Europe", "", "The Flag of Europe.", f"{base}/wikipedia/commons/b/b7/Flag_of_Europe.svg",
            "image/svg+xml", 600, 900, reference="The flag of Europe"),
        row("ru", "Украинская гривна", "История", _PAGES[2][3], f"{base}/wikipedia/commons/0/0f/Deleted_file.jpg",
            "image/jpeg", 193, 200, alt="Банкнота"),
        row("fr", "Phare de Cordouan", "", _PAGES[5][3], *image("Cordouan.gif", "GIF"), alt="Le phare"),
        row("tg", "Душанбе", "", _PAGES[4][3], *image("Дом_правительства.jpg"), reference="Дом правительства"),
        row("de", "Logo", "Galerie", "Ein Logo.", *shared, attribution="Galego: Logo do MGS"),
    ]
    files = {("train", 0, 2): n, ("train", 1, 2): n, ("val", 0, 1): max(3, n // 4), ("test", 0, 1): max(3, n // 4)}
    for (split, part, of), count in files.items():
        rows = list(special[:count]) if (split, part) == ("train", 0) else []
        while len(rows) < count:
            language, title, section, context = rng.choice(_PAGES)
            fmt = "PNG" if len(rows) % 2 else "JPEG"
            url, mime, h, w = image(f"{title.replace(' ', '_')}_{split}{part}_{len(rows)}.{fmt.lower()}", fmt)
            rows.append(row(language, title, section, context, url, mime, h, w,
                            reference=rng.choice(["", f"{title} ({len(rows)})"]),
                            attribution=rng.choice(_ATTRIBUTIONS),
                            flags=",".join(rng.choice(["true", "false"]) for _ in range(3))))
        synthetic.write_csv(raw / f"wit_v1.{split}.all-{part:05d}-of-{of:05d}.tsv.gz", list(COLUMNS), rows,
                            delimiter="\t", compress=True)
    loopback.write_service(raw, port, "site")
