"""The trainers read a webdataset folder as we write it, with nothing run first: timm's ``wds/``
reader through ``_info.json``, Megatron-Energon through ``.nv-meta/`` and the ``.tar.idx`` beside each
tar (the same bytes ``energon prepare`` would write), open_clip through ``sizes.json``. Also: those
files are listed in the manifest, checked by ``validate``, planned by ``publish``, and do not depend
on the workers; member suffixes are lower case. Generated data only; no network but the loopback
server of the Arboretum sample."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image as PILImage

import vldata
from conftest import run_cli
from vldata.layout import (ENERGON_DATASET, ENERGON_INFO, ENERGON_SPLIT, OPEN_CLIP_SIZES, TIMM_INFO, decode_offsets,
                           sample_offsets)
from vldata.tools.validate import validate

TRAINER_FILES = (TIMM_INFO, OPEN_CLIP_SIZES, ENERGON_INFO, ENERGON_SPLIT, ENERGON_DATASET)


@pytest.fixture(scope="module")
def arboretum_built(tmp_path_factory) -> Path:
    """Arboretum's sample: JPEG and PNG photos, ten text members, a positive integer ``photo_id``."""
    from builders.arboretum.sample import write_sample

    raw = tmp_path_factory.mktemp("arboretum_clients") / "raw"
    write_sample(raw, n=24, seed=3)
    out = raw.parent / "out"
    vldata.build("arboretum", raw, out, shard_bytes={"parquet": 20_000, "webdataset": 30_000}, rows_per_partition=5)
    return out


def written(out: Path) -> dict[str, dict]:
    """Every sample of OUT/webdataset as the tars hold it: key -> {suffix: bytes}."""
    samples: dict[str, dict] = {}
    for tar in sorted((out / "webdataset").glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t:
                key, _, suffix = m.name.partition(".")
                samples.setdefault(key, {})[suffix] = t.extractfile(m).read()
    return samples


def pixels(image: PILImage.Image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# timm


def test_timm_wds_reader_yields_every_sample_once_per_epoch(arboretum_built):
    import timm.data

    samples = written(arboretum_built)
    n = len(samples)
    batch = max(d for d in (4, 3, 2, 1) if n % d == 0)  # an epoch of whole batches: no sample repeated to fill one
    # timm reads a classification target; the json's photo_id is one per sample, so it names the sample
    dataset = timm.data.create_dataset("wds/arboretum", root=str(arboretum_built / "webdataset"), split="train",
                                       is_training=True, batch_size=batch, target_key="photo_id")
    assert dataset.reader.num_samples == n  # from _info.json
    expected = Counter({int(json.loads(m["json"])["photo_id"]): pixels(PILImage.open(io.BytesIO(m["jpg"])))
                        for m in samples.values()}.items())
    epoch = Counter((target, pixels(image)) for image, target in dataset)  # the reader itself: undecoded images
    assert epoch == expected
    loader = timm.data.create_loader(dataset, input_size=(3, 32, 32), batch_size=batch, is_training=True,
                                     use_prefetcher=False, num_workers=0, persistent_workers=False)
    targets = [t for _images, batch_targets in loader for t in batch_targets.tolist()]
    assert sorted(targets) == sorted(t for t, _ in expected)  # every sample once, PNG photos (as KEY.jpg) too


# --------------------------------------------------------------------------------------------
# Megatron-Energon


def energon_keys(folder: Path, num_workers: int, train: bool, n: int) -> list:
    from megatron.energon import WorkerConfig, get_loader, get_train_dataset, get_val_dataset

    config = WorkerConfig(rank=0, world_size=1, num_workers=num_workers)
    if train:  # loops forever: one epoch is the first n samples
        dataset = get_train_dataset(folder, worker_config=config, batch_size=None, shuffle_buffer_size=None,
                                    max_samples_per_sequence=None)
        keys = []
        for sample in get_loader(dataset):
            assert sample.image.ndim == 3 and sample.image.shape[0] == 3 and isinstance(sample.caption, str)
            keys.append((sample.__key__, sample.caption))
            if len(keys) == n:
                return keys
    dataset = get_val_dataset(folder, split_part="train", worker_config=config, batch_size=2)  # once through
    return [(k, c) for batch in get_loader(dataset) for k, c in zip(batch.__key__, batch.caption)]


@pytest.mark.parametrize("num_workers,train", [(0, True), (2, False)])
def test_energon_reads_the_folder_without_prepare(scin_built, num_workers, train):
    folder = scin_built / "webdataset"
    samples = written(scin_built)
    assert not (folder / ".nv-meta" / "index.sqlite").exists()  # nothing energon prepare writes but what we wrote
    keys = energon_keys(folder, num_workers, train, len(samples))
    assert sorted(keys) == sorted((k, m["txt"].decode()) for k, m in samples.items())


def test_tar_idx_is_what_energon_prepare_writes(scin_built, tmp_path):
    """Energon's own ``energon prepare`` on a copy of the tars writes the same ``.tar.idx`` bytes and
    shard counts, also for a key long enough to need a GNU long-name header (written and indexed by
    the shard writer, never re-read)."""
    from megatron.energon.flavors.webdataset.prepare import WebdatasetPreparator

    from vldata.write.shards import TarShards

    long_key = "k" * 150
    writer = TarShards(tmp_path / "staging", "train", target_bytes=1 << 20)
    for key in ("a", long_key, "b"):
        writer.write(key, {"jpg": key.encode() * 3, "txt": b"caption", "json": b"{}"})
    ours = tmp_path / "ours"
    (info,) = writer.finish(ours)
    folders = {"built": (scin_built / "webdataset", json.loads((scin_built / "webdataset" / ENERGON_INFO).read_text())),
               "long": (ours, {"shard_counts": {info.path: 3}})}
    for name, (folder, counts) in folders.items():
        copy = tmp_path / f"prepared-{name}"
        copy.mkdir()
        tars = sorted(p.name for p in folder.glob("*.tar"))
        for tar in tars:
            shutil.copyfile(folder / tar, copy / tar)
        WebdatasetPreparator.prepare_dataset(copy, tars, split_parts_patterns=[("train", ".*")], workers=1)
        for tar in tars:
            assert (copy / sample_offsets(tar)).read_bytes() == (folder / sample_offsets(tar)).read_bytes(), tar
        assert json.loads((copy / ENERGON_INFO).read_text())["shard_counts"] == counts["shard_counts"]
    # "a": three members of a header and one data block each; the long key then needs long-name headers
    offsets = decode_offsets((ours / sample_offsets(info.path)).read_bytes())
    assert offsets[:2] == [0, 3 * 2 * 512] and offsets[2] - offsets[1] > 3 * 2 * 512 and len(offsets) == 4


# --------------------------------------------------------------------------------------------
# open_clip


def test_open_clip_takes_the_sample_count_from_sizes_json(scin_built, monkeypatch):
    import open_clip
    import open_clip_train.data
    from open_clip_train.data import get_dataset_size, get_wds_dataset
    from torchvision import transforms
    from webdataset.tariterators import tar_file_expander

    # open_clip_train's own tar reader fails on the end-of-shard marker webdataset >= 0.2.96 yields
    # (KeyError 'fname'; webdataset/webdataset#384, mlfoundations/open_clip#935), whatever the tars:
    # the fix given there, so that the epoch below can be read
    monkeypatch.setattr(open_clip_train.data, "tar_file_expander",
                        lambda *args, **kwargs: tar_file_expander(*args, **kwargs, eof_value=None))

    manifest = json.loads((scin_built / "webdataset" / "vldata.json").read_text())
    shards = manifest["splits"]["train"]["shards"]
    n = manifest["splits"]["train"]["num_samples"]
    pattern = str(scin_built / "webdataset" / f"train-{{000000..{len(shards) - 1:06d}}}.tar")
    assert get_dataset_size(pattern) == (n, len(shards))
    args = argparse.Namespace(train_data=pattern, val_data=None, train_num_samples=None, dataset_resampled=False,
                              train_data_upsampling_factors=None, seed=0, batch_size=4, workers=0, world_size=1)
    preprocess = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])
    data = get_wds_dataset(args, preprocess, is_train=True, tokenizer=open_clip.get_tokenizer("RN50"))
    assert data.dataloader.num_samples == -(-n // 4) * 4 and data.dataloader.num_batches == -(-n // 4)
    batches = list(data.dataloader)  # one epoch, every sample decoded (the PNG primaries too)
    assert len(batches) == data.dataloader.num_batches
    assert all(images.shape == (4, 3, 32, 32) and texts.shape[0] == 4 for images, texts in batches)


# --------------------------------------------------------------------------------------------
# The files: in the manifest, checked, published, independent of the workers


def test_the_trainer_files_are_in_the_manifest_with_sha256(scin_built):
    folder = scin_built / "webdataset"
    manifest = json.loads((folder / "vldata.json").read_text())
    listed = {f["path"]: f for f in manifest["trainer_files"]}
    tars = [sh["path"] for sh in manifest["splits"]["train"]["shards"]]
    assert set(listed) == {*TRAINER_FILES, *(sample_offsets(t) for t in tars)}
    for rel, entry in listed.items():
        data = (folder / rel).read_bytes()
        assert entry["num_bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    info = json.loads((folder / TIMM_INFO).read_text())["splits"]["train"]
    assert info["filenames"] == tars and sum(info["shard_lengths"]) == info["num_samples"] == len(written(scin_built))
    assert "trainer_files" not in json.loads((scin_built / "parquet" / "vldata.json").read_text())


def tampered(scin_built, tmp_path, rel: str, change) -> list[str]:
    out = tmp_path / "out"
    shutil.copytree(scin_built, out)
    path = out / "webdataset" / rel
    path.write_bytes(change(path.read_bytes()))
    return validate(out)


def shifted_offset(data: bytes) -> bytes:
    offsets = decode_offsets(data)
    offsets[1] += 512
    return b"".join(o.to_bytes(8, "little") for o in offsets)


def miscounted(data: bytes) -> bytes:
    doc = json.loads(data)
    first = next(iter(doc))
    doc[first] += 1
    return json.dumps(doc).encode()


def timm_miscounted(data: bytes) -> bytes:
    doc = json.loads(data)
    doc["splits"]["train"]["shard_lengths"][0] += 1
    return json.dumps(doc).encode()


@pytest.mark.parametrize("rel,change,why", [
    ("train-000001.tar.idx", shifted_offset, "sample offsets do not match train-000001.tar"),
    (OPEN_CLIP_SIZES, miscounted, "does not match the tars"),
    (TIMM_INFO, timm_miscounted, "does not match the tars"),
    (ENERGON_SPLIT, lambda d: d.replace(b"train-000000.tar\n", b""), "does not match the tars"),
])
def test_validate_names_a_tampered_trainer_file(scin_built, tmp_path, rel, change, why):
    problems = tampered(scin_built, tmp_path, rel, change)
    assert any(p.endswith(f"{rel}: sha256 differs from the manifest (altered)") for p in problems), problems
    assert any(p.endswith(f"{rel}: {why}") or f"{rel}: {why}" in p for p in problems), problems


def test_validate_catches_a_file_altered_with_its_manifest_entry(scin_built, tmp_path):
    """The content is checked against the tars, not only against the recorded sha256."""
    out = tmp_path / "out"
    shutil.copytree(scin_built, out)
    folder = out / "webdataset"
    path = folder / OPEN_CLIP_SIZES
    path.write_bytes(miscounted(path.read_bytes()))
    manifest = json.loads((folder / "vldata.json").read_text())
    for entry in manifest["trainer_files"]:
        if entry["path"] == OPEN_CLIP_SIZES:
            entry.update(num_bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    (folder / "vldata.json").write_text(json.dumps(manifest))
    assert validate(out) == [f"{path}: does not match the tars' names and sample counts"]


def test_validate_names_a_missing_trainer_file(scin_built, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(scin_built, out)
    (out / "webdataset" / ENERGON_DATASET).unlink()
    proc = run_cli("validate", out)
    assert proc.returncode == 1 and f"{ENERGON_DATASET}: listed in the manifest but missing" in proc.stdout


def test_publish_plans_the_trainer_files_with_the_shards(scin_built):
    plan = vldata.publish(scin_built, "org/name", dry_run=True)
    wds = next(r for r in plan.repos if r.format == "webdataset")
    manifest = json.loads((scin_built / "webdataset" / "vldata.json").read_text())
    planned = [f.path for f in wds.files]
    assert {f["path"] for f in manifest["trainer_files"]} <= set(planned)
    assert set(TRAINER_FILES) <= {line.split()[0] for line in str(plan).splitlines() if line.startswith("    ")}


def test_trainer_files_do_not_depend_on_the_workers(scin_raw, scin_built, tmp_path):
    out = tmp_path / "out"
    run_cli("build", "scin", "--raw", scin_raw, "--out", out, "--parquet-shard-size", "40KB",
            "--tar-shard-size", "60KB", "--set", "rows_per_partition=3", "--workers", "2", check=True)
    manifest = json.loads((out / "webdataset" / "vldata.json").read_text())
    reference = json.loads((scin_built / "webdataset" / "vldata.json").read_text())
    assert manifest["trainer_files"] == reference["trainer_files"]


# --------------------------------------------------------------------------------------------
# Lower-case member suffixes


def test_no_builder_writes_a_capital_in_a_member_suffix():
    from vldata.describe.schema import member_layout

    for name in vldata.list_builders():
        layout = member_layout(vldata.get_builder(name).record_type())  # refuses a capital
        suffixes = [suffix for suffix, _ in layout.texts] + [f for f in layout.images if f != layout.primary]
        assert all(s == s.lower() for s in suffixes), (name, suffixes)


class CapitalText(vldata.Record):
    text_members: ClassVar[dict[str, str]] = {"taxonTag": "text_taxonTag"}
    image: vldata.Image
    text_taxonTag: str  # a field name may keep its capital; only the member suffix may not


class CapitalImage(vldata.Record):
    image: vldata.Image
    maskImage: vldata.Image


def test_a_record_that_would_write_a_capital_is_refused():
    from vldata.describe.schema import member_layout

    for record in (CapitalText, CapitalImage):
        with pytest.raises(TypeError, match="lower case"):
            member_layout(record)


def test_arboretum_tars_have_lower_case_suffixes_and_one_image_column(arboretum_built):
    samples = written(arboretum_built)
    suffixes = {suffix for members in samples.values() for suffix in members}
    assert suffixes and all(s == s.lower() for s in suffixes)
    assert {"taxontag.txt", "taxontag_com.txt", "common_name.txt"} <= suffixes
    formats = {json.loads(m["json"])["image_info"]["format"] for m in samples.values()}
    assert formats == {"jpeg", "png"} and all("jpg" in m for m in samples.values())  # PNGs too, as they came
    manifest = json.loads((arboretum_built / "webdataset" / "vldata.json").read_text())
    assert manifest["image_members"] == ["jpg"]
    assert "taxontag.txt" in manifest["features"] and not any(f != f.lower() for f in manifest["features"])
    # the card declares one image column for JPEG and PNG photos alike: what the Hub viewer shows
    import datasets
    from datasets.info import DatasetInfosDict

    declared = DatasetInfosDict.from_directory(str(arboretum_built / "webdataset"))["default"].features
    assert [name for name, f in declared.items() if isinstance(f, datasets.Image)] == ["jpg"]
    # the reader of a build follows the manifest: the text types come back under their member names
    source = vldata.open(arboretum_built / "webdataset")
    assert "taxontag.txt" in source[0] and source[0]["image"]
