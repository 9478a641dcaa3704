"""Fixed sample builds keep their exact shard bytes: a refactor must not change what is written.

The sha256 of every shard of three builds (SCIN, LAION served from a loopback port, Open Images) was
recorded before the code moved into packages. A change that alters shard bytes on purpose updates
the table below in the same commit and says why. Last updated by the "output everyone reads" work:
parquet written as `datasets` writes Hub-optimized files (page index, CDC, PLAIN uncompressed image
columns), the primary image member always `KEY.jpg`, lower-case member suffixes, and shards in a
seeded shuffle (by default) of the written rows. The LAION shards changed once more when
`LaionRecord` gained the typed DataComp `uid` field (a new column, so every LAION shard).
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
            "b2d5a1c6e4335443fd137b08410a6e1779e78e76151ea896407144717927ef9e",
        "parquet/data/train-00001-of-00002.parquet":
            "cf22b7959fd662e7a21fc2f00a8356371c93083fa57c1e91f17f3faad98e9dc9",
        "webdataset/train-000000.tar":
            "a36289e23daca731d53700aef264eb2d1ea14d9c08a3c01d37ded6cea566749f",
        "webdataset/train-000001.tar":
            "daddbe469472116b3c9c2e2cbb423985e8f5bb7fd5ebb5a73c106c6b7ad27abc",
        "webdataset/train-000002.tar":
            "2ef3cade6b334667a8068672a76c789a3902b4ff1667650a00565a99c00c7ef8",
    },
    "open_images": {
        "parquet/data/test-00000-of-00001.parquet":
            "3c7499299cd7a68192ed9fb2168a0555b142d786a2adcfaf92344516e60323af",
        "parquet/data/train-00000-of-00001.parquet":
            "4b2829f6ae73e5c45309ef3048c7ebd616dcacbc8e1a3fe6160e0fa34c493858",
        "parquet/data/validation-00000-of-00001.parquet":
            "228243baa63cae055eb92ae5629d9a22866516ab6e679ca349764045c0955c96",
        "webdataset/test-000000.tar":
            "50e86675a3d351d36aecd9b4fea4f61e6cc9c6b297d6f4863bbf8931d81ce668",
        "webdataset/train-000000.tar":
            "7cb1eb4743b97202294f89365b8969f00337a4a815a7693dc26a0531c2a1e80b",
        "webdataset/train-000001.tar":
            "cefb34d4193e6fd96e4727c2ae4ef624dfda1cf8c9ff7cd2c032c6870f024dd9",
        "webdataset/validation-000000.tar":
            "e21fff8d1e7aed1f731e8094036172aa031380e5ef71c838ee90f7f14e386c86",
    },
    "scin": {
        "parquet/data/train-00000-of-00004.parquet":
            "6230e5f6c6a84c12c056ca95dea0a8468dc84a0a87c63afd61722f020dd2274f",
        "parquet/data/train-00001-of-00004.parquet":
            "28add1e724cc657b0f17abac18fc7d5b92ce9e735a92ca078abc27adb538e628",
        "parquet/data/train-00002-of-00004.parquet":
            "f2b80147243169eb3725008241aaaf1dfbd28b5665e53530a30fa6c8c37443db",
        "parquet/data/train-00003-of-00004.parquet":
            "8a73e483bc42ca00347d30efef0bda51e97b7c2cbd789b49ec9deb18a43e5e38",
        "webdataset/train-000000.tar":
            "057da7f456a8e3dbdb99058b34a3029a2e88718e89dd5039330cba5ac25553b3",
        "webdataset/train-000001.tar":
            "ce36ebea4ec8bd34860ec2b8cda94b3f4fc4e5b67a5007d80aae6161853fc610",
        "webdataset/train-000002.tar":
            "64132f703660ee224d446acdb45177e1e81f8b2bf98a0141706e0463007bd60d",
        "webdataset/train-000003.tar":
            "b6818e53aeb919083b459f0ae13f258fb7dfabfcc3ce131796401016706abea8",
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
