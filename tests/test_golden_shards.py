"""Fixed sample builds keep their exact shard bytes: a refactor must not change what is written.

The sha256 of every shard of three builds (SCIN, LAION served from a loopback port, Open Images) was
recorded before the code moved into packages. A change that alters shard bytes on purpose updates
the table below in the same commit and says why.
"""

from __future__ import annotations

import pytest

import vldata
from conftest import shard_hashes

LAION_PORT = 47613  # the sample's URLs carry the port: fixed, so that the url column is the same every run
SMALL = {"parquet": 40_000, "webdataset": 60_000}

GOLDEN = {
    "laion": {
        "parquet/data/train-00000-of-00002.parquet":
            "58e96ec3efdd68d8926134990152ca3b46fef550778392a4de0f78864945cbd0",
        "parquet/data/train-00001-of-00002.parquet":
            "ea2975f640a8c2cf32534c72936581daaa00162ab1f2bebcb9e042cf3b6413a4",
        "webdataset/train-000000.tar":
            "9dc37bd8bf58e6c7525dce5b1e30b20ad7b45b4a5fecf5167459fb52e40d1cfa",
        "webdataset/train-000001.tar":
            "4fc6675f0baaba94a1f46e3a18d308b371fd703b819830e51af738e4908b4fe2",
        "webdataset/train-000002.tar":
            "9d544ba584edd9c1b3a1954b8dca9cac0021e4d0fcec231783b27c40fdfd55e1",
    },
    "open_images": {
        "parquet/data/test-00000-of-00001.parquet":
            "7ea90adfb6338ad44b0b011623fdc5f63f569f53ff999899a8c09e4a63d027b2",
        "parquet/data/train-00000-of-00002.parquet":
            "4ca67a49e88a5a0826b012041b57c1ad832fc3f2b55a1753d6a9633d95f6c66c",
        "parquet/data/train-00001-of-00002.parquet":
            "309e3daf2265e12b10ce69588a0dd79e395a82c48f68e8eddae990d3a7971ba3",
        "parquet/data/validation-00000-of-00001.parquet":
            "6766299239f3851948c45534b99f46a5b98e6f0c45082154ea6a2cac3fab4b5f",
        "webdataset/test-000000.tar":
            "1c57174bd78564935ab9572e5a60e10a1a1d7cee47d59b05c81761da93ebf703",
        "webdataset/train-000000.tar":
            "610ccf3be15edd5c65c431aa7b4687c82aa4d8e6b8934e655e3b1df41054b994",
        "webdataset/train-000001.tar":
            "1c7adc9d7f824c0ecfcb7fd98a7f8e11750f539b7827aef18665b382e5dae51d",
        "webdataset/validation-000000.tar":
            "ae68c62b6fb9155a455390a0f7c8d53bb4fd3d2b873b9fca5e81721e6777865c",
    },
    "scin": {
        "parquet/data/train-00000-of-00004.parquet":
            "06125e5da684768619358c158db8bc6840f4d8c096929804cc17dbd4658fcaeb",
        "parquet/data/train-00001-of-00004.parquet":
            "6cadaa3b12864a64dd4b284d8dd7a0936d06d0726b3eb0ce7c0a903ca69d61a7",
        "parquet/data/train-00002-of-00004.parquet":
            "bf495b7e28af25582b4bc4c678926b6957c42168e98bdea94f42158360955e70",
        "parquet/data/train-00003-of-00004.parquet":
            "091c9ee4a400e5e243cc3141d9d0bcfa6217a29b41025c037406e958898f7580",
        "webdataset/train-000000.tar":
            "de567c083ca0a1ebd8c396363cfd7e40450c2439646cb25fe6f6c235f9d3aca3",
        "webdataset/train-000001.tar":
            "00a72ac9d6785c681634d87abe62c883d4355e3635c662a4bae23b308826ec0b",
        "webdataset/train-000002.tar":
            "ffd2849894297c1037a5a3b03c8f8d6480bdd2495aee4829f9001b7965e98c07",
        "webdataset/train-000003.tar":
            "c97f49a811b4dc335bb4e4866f12760b448f108950ded26cf84fd416471093f3",
    },
}


def _build(name: str, tmp_path, monkeypatch) -> dict[str, str]:
    from vldata.ingest import loopback

    monkeypatch.setattr(loopback, "free_port", lambda: LAION_PORT)
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    vldata.get_builder(name).write_sample(raw, 24, 3)
    vldata.build(name, raw, out, shard_bytes=SMALL)
    return shard_hashes(out)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_sample_build_has_the_recorded_shards(name, tmp_path, monkeypatch):
    hashes = _build(name, tmp_path, monkeypatch)
    assert len(hashes) >= 2
    assert hashes == GOLDEN[name]
