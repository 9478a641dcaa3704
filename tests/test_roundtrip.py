"""Plain `datasets` and `webdataset` read what we write — in a subprocess that never imports vldata."""

from __future__ import annotations

import json
import textwrap

import pyarrow.parquet as pq
from conftest import read_without_vldata

READER = textwrap.dedent('''
    import json, sys, re, glob
    import datasets, webdataset
    out = sys.argv[1]
    result = {}
    pq_ds = datasets.load_dataset(out + "/parquet")
    wds_ds = datasets.load_dataset(out + "/webdataset")
    for name, dd in (("parquet", pq_ds), ("webdataset", wds_ds)):
        split = dd["train"]
        rows = list(split)
        feats = split.features
        if name == "parquet":
            sizes = [r["image"].size for r in rows]
            nested = feats["weighted_condition_label"].feature["weight"].dtype
            keys = [r["key"] for r in rows]
        else:
            sizes = [r["jpg"].size for r in rows]  # the primary image, whatever its format (SCIN's are PNG)
            nested = feats["json"]["weighted_condition_label"].feature["weight"].dtype
            keys = [r["__key__"] for r in rows]
            assert all(isinstance(r["json"]["derm_gradable_fst"], list) for r in rows)
        result[name] = {"n": len(rows), "keys": sorted(keys), "sizes_ok": all(w > 0 and h > 0 for w, h in sizes),
                        "nested_weight_dtype": nested, "year_dtype": (feats["year"] if name == "parquet" else feats["json"]["year"]).dtype}
    tars = sorted(glob.glob(out + "/webdataset/*.tar"))
    samples = list(webdataset.WebDataset(tars, shardshuffle=False))
    result["wds"] = {"n": len(samples), "keys": sorted(s["__key__"] for s in samples),
                     "complete": all("jpg" in s and "txt" in s and "json" in s for s in samples),
                     "json_ok": all(json.loads(s["json"])["case_id"] == s["__key__"] for s in samples),
                     "keys_ok": all(re.fullmatch(r"[A-Za-z0-9_-]+", s["__key__"]) for s in samples)}
    result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("vldata", "builders"))
    print(json.dumps(result))
''')


def test_plain_datasets_and_webdataset_read_everything(scin_built):
    result = read_without_vldata(READER, scin_built)
    manifest = json.loads((scin_built / "parquet" / "vldata.json").read_text())
    written = manifest["splits"]["train"]["num_samples"]
    stats = json.loads((scin_built / "build" / "stats.json").read_text())
    assert written == stats["splits"]["train"]["written"] > 30
    assert len(manifest["splits"]["train"]["shards"]) > 1  # small shard size: several shards
    expected_keys = sorted(pq.read_table(scin_built / "parquet" / "data").column("key").to_pylist())
    for name in ("parquet", "webdataset"):
        r = result[name]
        assert r["n"] == written and r["keys"] == expected_keys and r["sizes_ok"]
        assert r["nested_weight_dtype"] == "float32" and r["year_dtype"] == "int16"
    w = result["wds"]
    assert w["n"] == written and w["keys"] == expected_keys
    assert w["complete"] and w["json_ok"] and w["keys_ok"]


def test_multi_image_cases_carry_their_other_images_as_members(scin_built):
    import tarfile

    members = []
    for tar in sorted((scin_built / "webdataset").glob("*.tar")):
        with tarfile.open(tar) as t:
            members += t.getnames()
    suffixes = {m.split(".", 1)[1] for m in members}
    assert suffixes == {"jpg", "txt", "json", "image_2.png", "image_3.png"}  # the primary is KEY.jpg, always
    manifest = json.loads((scin_built / "webdataset" / "vldata.json").read_text())
    assert manifest["image_members"] == ["jpg", "image_2.png", "image_3.png"]
