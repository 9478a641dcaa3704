"""A builder from another package: found through the ``vldata.builders`` entry point, with the card
it ships beside its own code, built, validated and read like the builders in this repository.

The package is installed the way pip leaves one on ``sys.path``: the module, its card and a
``.dist-info`` folder whose ``entry_points.txt`` names the builder. Nothing in vldata is told about it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

BUILDER = '''
"""Pets: a folder of PNGs and a captions.csv (file,caption)."""

import csv
import random
from pathlib import Path

from vldata import Builder, Failed, Image, Partition, Record
from vldata.ingest import synthetic


class PetRecord(Record):
    image: Image
    file: str


class PetsBuilder(Builder):
    name = "acme_pets"
    version = "0.1.0"
    summary = "Pets from a third-party package"
    Record = PetRecord
    card = "cards/acme_pets.yaml"

    def partitions(self, raw):
        rows = list(csv.DictReader(open(Path(raw) / "captions.csv", encoding="utf-8")))
        return [Partition(0, "train", {"raw": str(raw), "rows": rows}, len(rows))]

    def records(self, partition, ctx):
        raw = Path(partition.payload["raw"])
        for i, row in enumerate(partition.payload["rows"]):
            path = raw / "images" / row["file"]
            img = ctx.image(path.read_bytes() if path.is_file() else None, f"{row['file']} missing")
            key = f"pet{i:04d}"
            if not isinstance(img, Image):
                yield Failed(key, img.reason, img.message, f"captions.csv:{i + 2}")
            else:
                yield PetRecord(key=key, text=row["caption"], image=img, file=row["file"])

    def write_sample(self, raw, n, seed):
        rng = random.Random(seed)
        (Path(raw) / "images").mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            name = f"pet{i}.png"
            if i != 1:  # one image is missing, as in real folders
                (Path(raw) / "images" / name).write_bytes(synthetic.encode(synthetic.blank(rng, (16, 40))))
            rows.append([name, f"a photo of pet number {i}"])
        synthetic.write_csv(Path(raw) / "captions.csv", ["file", "caption"], rows)
'''


def _install(site: Path) -> None:
    pkg = site / "acme_vl"
    (pkg / "cards").mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(BUILDER))
    card = yaml.safe_load((REPO / "cards" / "scin.yaml").read_text())
    card["summary"] = "Synthetic pet photos with one caption each, from a third-party builder package."
    card["hub"]["pretty_name"] = "ACME Pets"
    (pkg / "cards" / "acme_pets.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    dist = site / "acme_vl-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-vl\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[vldata.builders]\nacme_pets = acme_vl:PetsBuilder\n")


def _vldata(site: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "vldata.cli", *map(str, args)], capture_output=True, text=True,
                          env=env)


def test_a_third_party_builder_and_its_card_work_end_to_end(tmp_path):
    site, raw, out = tmp_path / "site", tmp_path / "raw", tmp_path / "out"
    _install(site)
    listed = _vldata(site, "list")
    assert listed.returncode == 0, listed.stderr
    assert "acme_pets\t0.1.0\tPets from a third-party package" in listed.stdout
    assert _vldata(site, "sample", "acme_pets", raw, "--n", "5").returncode == 0
    built = _vldata(site, "build", "acme_pets", "--raw", raw, "--out", out)
    assert built.returncode == 0, built.stderr
    stats = json.loads((out / "build" / "stats.json").read_text())["splits"]["train"]
    assert (stats["input_rows"], stats["written"], stats["reasons"]["failed"]) == (5, 4, {"image_missing": 1})
    for fmt in ("parquet", "webdataset"):
        readme = (out / fmt / "README.md").read_text()
        assert "pretty_name: ACME Pets" in readme and "from a third-party builder package" in readme
    validated = _vldata(site, "validate", out)
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_a_builder_without_its_card_stops_before_any_work(tmp_path):
    site, raw, out = tmp_path / "site", tmp_path / "raw", tmp_path / "out"
    _install(site)
    (site / "acme_vl" / "cards" / "acme_pets.yaml").unlink()
    assert _vldata(site, "sample", "acme_pets", raw, "--n", "3").returncode == 0
    proc = _vldata(site, "build", "acme_pets", "--raw", raw, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("No such file or directory: '" + str(site / "acme_vl" / "cards" / "acme_pets.yaml") + "'")
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
