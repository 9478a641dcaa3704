"""Raw input and build output on any fsspec filesystem (s3://, gs://, hf://, memory://, ...).

The engine works on local folders: appending parts, renaming staged shards and resuming all need a
POSIX filesystem, and object stores have no rename. So a remote ``--raw`` is mirrored once into a
local cache (files already there with the same size are kept; images referenced by URL are still
fetched by the builder), and a remote ``--out`` is built in a local work folder and then uploaded:
every shard and side file first, each format folder's ``vldata.json`` last. A remote folder is
therefore complete exactly when its manifest exists (readers need nothing else); ``--overwrite``
deletes the remote manifests before anything else is replaced. The work folder is kept until the
upload finished, so an interrupted build or upload is finished by ``--resume``.
It must not build: it only moves finished files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import fsspec

from vldata.errors import StructuralError
from vldata.layout import BUILD_DIR, FAILURES, MANIFEST, STATS, cache_slot

BUILD_FILES = (f"{BUILD_DIR}/{STATS}", f"{BUILD_DIR}/{FAILURES}")


def is_remote(path: str | os.PathLike) -> bool:
    """A URL with a protocol other than ``file``; local paths and ``file://`` URLs are not remote."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | os.PathLike) -> Path:
    text = str(path)
    return Path(text[len("file://"):]) if text.startswith("file://") else Path(text)


def stage_raw(url: str, storage_options: dict | None = None) -> Path:
    """Mirror the remote folder ``url`` into the local cache; returns the local folder. Files whose
    size matches are not downloaded again; local files no longer present remotely are removed."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not fs.isdir(root):
        raise StructuralError(f"raw input {url} does not exist or is not a folder")
    dest = cache_slot("raw", url)
    root = root.rstrip("/")
    wanted: set[Path] = set()
    for remote, info in sorted(fs.find(root, detail=True).items()):
        local = dest / remote[len(root):].lstrip("/")
        wanted.add(local)
        if local.exists() and local.stat().st_size == info["size"]:
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".part")
        fs.get_file(remote, str(tmp))
        os.replace(tmp, local)
    if dest.exists():
        for p in sorted(dest.rglob("*"), reverse=True):
            if p.is_file() and p not in wanted:
                p.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def work_folder(url: str) -> Path:
    """The local folder where a build for the remote ``url`` is made (and resumed)."""
    return cache_slot("work", url)


def check_remote_out(url: str, resume: bool, overwrite: bool, storage_options: dict | None = None) -> None:
    """Refuse, before any work, to build over a remote folder that holds something else."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not fs.exists(root) or overwrite or resume:
        return
    if fs.ls(root, detail=False):
        raise StructuralError(f"{url} is not empty; pass --resume to finish a build there or --overwrite to replace it")


def remote_complete(url: str, formats: tuple[str, ...], storage_options: dict | None = None) -> bool:
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return all(fs.exists(f"{root}/{fmt}/{MANIFEST}") for fmt in formats) and fs.exists(f"{root}/{BUILD_FILES[0]}")


def fetch_build_summary(url: str, work: Path, formats: tuple[str, ...], storage_options: dict | None = None) -> None:
    """Copy a finished remote build's manifests and stats into ``work`` (to report on it)."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    for rel in [f"{fmt}/{MANIFEST}" for fmt in formats] + [BUILD_FILES[0]]:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{root}/{rel}", str(work / rel))


def upload_build(work: Path, url: str, formats: tuple[str, ...], overwrite: bool = False,
                 storage_options: dict | None = None) -> list[str]:
    """Upload a finished local build to ``url``; manifests last. Returns the remote paths written."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    root = root.rstrip("/")
    if overwrite:
        for fmt in formats:  # first make the old build visibly incomplete, then replace it
            if fs.exists(f"{root}/{fmt}/{MANIFEST}"):
                fs.rm(f"{root}/{fmt}/{MANIFEST}")
        if fs.exists(root):
            fs.rm(root, recursive=True)
    written = []
    manifests = []
    files = [p for fmt in formats for p in sorted((work / fmt).rglob("*")) if p.is_file()]
    files += [work / rel for rel in BUILD_FILES if (work / rel).exists()]
    for p in files:
        rel = p.relative_to(work).as_posix()
        if p.name == MANIFEST:
            manifests.append((p, rel))
            continue
        _put(fs, p, f"{root}/{rel}")
        written.append(f"{root}/{rel}")
    for p, rel in manifests:  # the commit point of each format folder
        _put(fs, p, f"{root}/{rel}")
        written.append(f"{root}/{rel}")
    return written


def _put(fs, local: Path, remote: str) -> None:
    fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
    fs.put_file(str(local), remote)


def remove_work(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


