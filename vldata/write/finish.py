"""Finish a format folder after its shards are in place: files for trainers, card, Croissant, manifest.

The manifest ``vldata.json`` is the one file a reader needs: builder, version, config, the Record's
features, and per split the shards with sample counts, bytes and sha256. It is written last, so a
folder with a manifest is complete. A webdataset folder also gets, before it, the files trainers
read beside the tars (timm's ``_info.json``, open_clip's ``sizes.json``, Energon's ``.nv-meta/``),
which the manifest lists with sha256 under ``trainer_files`` together with each tar's Energon sample
offsets (``<shard>.tar.idx``, written with the tar). This module writes the contents of those files
(their names and shapes come from ``vldata.layout``); it does not write shards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vldata.describe import schema as sch
from vldata.layout import (MANIFEST, MANIFEST_VERSION, TRAINER_DOCUMENTS, atomic_write, data_files, file_sha256,
                           sample_offsets, trainer_documents)
from vldata.write.shards import ShardInfo


def manifest_document(builder, fmt: str, shards: dict[str, list[ShardInfo]], image_suffixes: list[str],
                      values: dict[str, dict] | None = None, tables: dict[str, dict] | None = None,
                      trainer_files: list[dict] | None = None, shuffle_seed: int | None = None) -> dict:
    record_type = builder.record_type()
    features = sch.hf_features(record_type) if fmt == "parquet" else sch.wds_features(record_type, image_suffixes)
    return {
        "vldata_manifest": MANIFEST_VERSION,
        "builder": builder.name,
        "version": builder.version,
        "config": builder.config.model_dump(mode="json"),
        "shuffle_seed": shuffle_seed,  # the samples' order in the shards: seeded shuffle, or None for input order
        "format": fmt,
        "record": f"{record_type.__module__}.{record_type.__qualname__}",
        "primary_image": record_type.primary_image,
        "features": features.to_dict(),
        "image_members": image_suffixes if fmt == "webdataset" else [],
        "splits": {
            split: {"num_samples": sum(s.num_samples for s in infos), "num_bytes": sum(s.num_bytes for s in infos),
                    "shards": [s.as_dict() for s in infos],
                    **({"values": {k: v for k, v in values[split].items() if k != "staged"}}
                       if values and split in values else {})}
            for split, infos in shards.items()
        },
        # the builder's side tables (class lists, hierarchies): tables/<name>.parquet
        "tables": {name: {k: v for k, v in t.items() if k != "staged"} for name, t in (tables or {}).items()},
        # webdataset: what timm, open_clip and Energon read beside the tars (write_trainer_files)
        **({"trainer_files": trainer_files} if trainer_files is not None else {}),
    }


def write_trainer_files(builder, folder: Path, shards: dict[str, list[ShardInfo]]) -> list[dict]:
    """Write timm's, open_clip's and Energon's files into a webdataset folder (``layout.trainer_documents``)
    and describe them, with each tar's ``.tar.idx`` (written by the shard writer), as
    ``[{path, num_bytes, sha256}]`` for the manifest."""
    import yaml

    splits = {split: [(s.path, s.num_samples) for s in infos] for split, infos in shards.items()}
    for rel, doc in trainer_documents(builder.name, builder.version, splits).items():
        text = (yaml.safe_dump(doc, sort_keys=False, allow_unicode=True) if rel.endswith(".yaml")
                else json.dumps(doc, indent=1, ensure_ascii=False))
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / rel, text)
    paths = [*(sample_offsets(s.path) for infos in shards.values() for s in infos), *TRAINER_DOCUMENTS]
    return [{"path": rel, "num_bytes": (folder / rel).stat().st_size, "sha256": file_sha256(folder / rel)}
            for rel in paths]


def write_format_folder(builder, sheet, out: Path, fmt: str, shards: dict[str, list[ShardInfo]],
                        image_suffixes: list[str], stats: dict, values: dict[str, dict] | None = None,
                        tables: dict[str, dict] | None = None, shuffle_seed: int | None = None) -> None:
    """Write the trainers' files (webdataset), README.md, croissant.json and (last) vldata.json
    into ``out/<fmt>``."""
    from vldata.describe.card import render_readme
    from vldata.describe.croissant import croissant_document

    folder = out / fmt
    folder.mkdir(parents=True, exist_ok=True)
    for info in (values or {}).values():  # per-row values of the balance fields, for balanced sampling
        (folder / info["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(info["staged"], folder / info["path"])
    for info in (tables or {}).values():
        (folder / info["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(info["staged"], folder / info["path"])
    trainer_files = write_trainer_files(builder, folder, shards) if fmt == "webdataset" else None
    manifest = manifest_document(builder, fmt, shards, image_suffixes, values, tables, trainer_files=trainer_files,
                                 shuffle_seed=shuffle_seed)
    record_type = builder.record_type()
    features = sch.hf_features(record_type) if fmt == "parquet" else sch.wds_features(record_type, image_suffixes)
    readme = render_readme(
        sheet, pretty_title=sheet.hub.pretty_name, fmt=fmt, features=features,
        field_rows=sch.field_table(record_type),
        splits={s: {"num_examples": v["num_samples"], "num_bytes": v["num_bytes"]} for s, v in manifest["splits"].items()},
        data_files={s: data_files(fmt, s) for s in manifest["splits"]},
        stats=stats, config=builder.config,
    )
    atomic_write(folder / "README.md", readme)
    doc = croissant_document(sheet, name=builder.name, version=builder.version, fmt=fmt, record_type=record_type,
                             shards={s: v["shards"] for s, v in manifest["splits"].items()})
    atomic_write(folder / "croissant.json", json.dumps(doc, indent=1, ensure_ascii=False))
    atomic_write(folder / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False))
