"""Publish a built dataset to the Hugging Face Hub: plan first (pure, local), then upload.

``plan_publish`` turns OUT (or one format folder) into a ``PublishPlan``: one dataset repo per format
(``ORG/NAME`` for parquet, ``ORG/NAME-wds`` for webdataset, since one Hub repo cannot hold both
configs), the exact files the manifest references plus the card, Croissant and manifest, and the
commits that will carry them (a tar with its member index and Energon's ``.tar.idx``; timm's,
open_clip's and Energon's files, which count all the tars, after the last tar). It checks everything
it can before any network call: the manifest, every shard's presence and size, and the Hub's
limits. ``publish`` then creates the repos and makes the commits through ``huggingface_hub`` only,
shards first and the three metadata files last, so a repo looks complete only once everything is
there (the manifest is the commit point). Re-running
after an interruption resumes: the Hub skips files it already has. The token is handed to
``HfApi`` untouched and never printed or logged. Nothing here builds, validates content, or hashes
shards (``vldata validate`` does that).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from vldata.errors import StructuralError
from vldata.layout import CARD_FILES, FORMATS, MANIFEST, format_folders, inside, read_manifest, sample_offsets
from vldata.tools.inspect import human_size

logger = logging.getLogger(__name__)

REPO_SUFFIX = {"parquet": "", "webdataset": "-wds"}
METADATA_FILES = (*CARD_FILES, MANIFEST)
SHARD_SIZE_OPTION = {"parquet": "--parquet-shard-size", "webdataset": "--tar-shard-size"}
# Files of an earlier build that the loaders' globs would still pick up if left in the repo.
STALE_PATTERNS = {"parquet": ("data/*.parquet", "values/*.parquet", "tables/*.parquet", "subsets/*.parquet"),
                  "webdataset": ("*.tar", "*.idx.json", "*.tar.idx", "values/*.parquet", "tables/*.parquet",
                                 "subsets/*.parquet")}
# Hub limits (https://huggingface.co/docs/hub/repositories-recommendations): entries per folder is
# a hard limit of the Hub's tree listing; 50 GB is the largest file it accepts; commits of more
# than ~100 files risk server-side timeouts.
FILES_PER_FOLDER_LIMIT = 10_000
MAX_FILE_BYTES = 50 * 1000**3
FILES_PER_COMMIT = 100
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class PlannedFile:
    path: str  # relative to the format folder, and the path in the repo
    size: int


@dataclass
class PlannedCommit:
    message: str
    files: list[PlannedFile]


@dataclass
class RepoPlan:
    repo_id: str
    format: str
    folder: Path
    files: list[PlannedFile]  # upload order: shards (each with its indexes), values, trainers' files, metadata
    commits: list[PlannedCommit]  # the last one carries README.md, croissant.json, vldata.json
    ignored: list[str] = field(default_factory=list)  # files in the folder the manifest does not reference

    @property
    def num_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class PublishPlan:
    repos: list[RepoPlan]
    private: bool = False
    revision: str | None = None
    endpoint: str = "https://huggingface.co"

    def url(self, repo: RepoPlan) -> str:
        return _repo_url(self.endpoint, repo.repo_id, self.revision)

    def __str__(self) -> str:
        visibility = "private" if self.private else "public"
        lines = [f"publish plan: {len(self.repos)} dataset repo(s), {visibility}, "
                 f"revision {self.revision or 'main (default branch)'}"]
        for repo in self.repos:
            lines += ["", f"repo {repo.repo_id}  ({repo.format}, from {repo.folder})", f"  url: {self.url(repo)}",
                      f"  files ({len(repo.files)}, {human_size(repo.num_bytes)}):"]
            width = max(len(f.path) for f in repo.files)
            lines += [f"    {f.path:<{width}}  {f.size:>14,} B" for f in repo.files]
            lines.append(f"  commits ({len(repo.commits)}):")
            for i, commit in enumerate(repo.commits, 1):
                size = sum(f.size for f in commit.files)
                lines.append(f"    {i}. {commit.message}  [{len(commit.files)} files, {human_size(size)}]")
            lines.append("    (the last commit also deletes shards of an earlier build, if the repo holds any)")
            if repo.ignored:
                lines.append(f"  not uploaded (not in the manifest): {', '.join(repo.ignored)}")
        files = sum(len(r.files) for r in self.repos)
        commits = sum(len(r.commits) for r in self.repos)
        total = sum(r.num_bytes for r in self.repos)
        lines += ["", f"total: {len(self.repos)} repo(s), {files} files, {human_size(total)}, {commits} commits"]
        return "\n".join(lines)


def _repo_url(endpoint: str, repo_id: str, revision: str | None) -> str:
    url = f"{endpoint.rstrip('/')}/datasets/{repo_id}"
    return f"{url}/tree/{revision}" if revision else url


def check_repo_id(repo_id: str) -> None:
    """``ORG/NAME`` with the Hub's naming rules, also for the ``-wds`` sibling."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id):
        raise StructuralError(f"repo id must look like ORG/NAME, got {repo_id!r}")
    for candidate in {repo_id + suffix for suffix in REPO_SUFFIX.values()}:
        try:
            validate_repo_id(candidate)
        except HFValidationError as e:
            raise StructuralError(f"repo id {candidate!r} is not valid on the Hub: {e}") from None


def check_hub_limits(paths: list[str], fmt: str, files_per_folder_limit: int = FILES_PER_FOLDER_LIMIT) -> None:
    """Refuse a file list the Hub would refuse: too many entries (files and subfolders) in one folder."""
    entries: dict[str, set[str]] = {}
    for path in paths:
        parts = PurePosixPath(path).parts
        for depth in range(len(parts)):
            entries.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    entries.setdefault("", set()).add(".gitattributes")  # the Hub adds it to every new repo
    for folder, names in sorted(entries.items()):
        if len(names) > files_per_folder_limit:
            where = f"folder {folder}/" if folder else "the top folder"
            raise StructuralError(
                f"{fmt}: {len(names):,} entries in {where} of the repo, the Hub allows at most "
                f"{files_per_folder_limit:,} per folder; rebuild with a larger {SHARD_SIZE_OPTION[fmt]}")


def _format_folders(path: Path) -> dict[str, Path]:
    """The format folders to publish, by the format their manifest declares."""
    folders = [Path(f) for f in format_folders(path, unfinished=True)]
    if not folders:
        raise StructuralError(f"{path}: no {MANIFEST} here and no parquet/ or webdataset/ folder (not a vldata build)")
    found: dict[str, Path] = {}
    for folder in folders:
        if not (folder / MANIFEST).is_file():
            raise StructuralError(f"{folder / MANIFEST}: missing (the build did not finish; rerun it with --resume)")
        fmt = _read_manifest(folder).get("format")
        if fmt not in FORMATS or fmt in found:
            raise StructuralError(f"{folder / MANIFEST}: unexpected format {fmt!r}")
        found[fmt] = folder
    return found


def _read_manifest(folder: Path) -> dict:
    try:
        return read_manifest(folder)
    except (OSError, ValueError) as e:
        raise StructuralError(f"{folder / MANIFEST}: unreadable manifest ({e})") from None


def _local_file(folder: Path, rel: str) -> Path:
    if not inside(rel):
        raise StructuralError(f"{folder / MANIFEST}: path {rel!r} points outside the folder")
    file = folder / rel
    if not file.is_file():
        raise StructuralError(f"{file}: missing (listed in {folder / MANIFEST})")
    return file


def _planned(folder: Path, rel: str) -> PlannedFile:
    return PlannedFile(rel, _local_file(folder, rel).stat().st_size)


def _referenced_groups(folder: Path, manifest: dict) -> list[list[PlannedFile]]:
    """Files the manifest references, grouped so a shard and its indexes share a commit, and then
    the trainers' files that describe all the shards (``_info.json``, ``sizes.json``, ``.nv-meta/``),
    one group each after every shard: a trainer must not find them before the shards they count."""
    trainer = [f["path"] for f in manifest.get("trainer_files", [])]
    groups: list[list[PlannedFile]] = []
    for split, info in manifest.get("splits", {}).items():
        for shard in info.get("shards", []):
            file = _local_file(folder, shard["path"])
            size = file.stat().st_size
            if size != shard["num_bytes"]:
                raise StructuralError(f"{file}: {size:,} bytes, the manifest says {shard['num_bytes']:,} "
                                      f"(altered or truncated; rebuild split {split!r})")
            group = [PlannedFile(shard["path"], size)]
            if shard.get("index"):
                group.append(_planned(folder, shard["index"]))
            if sample_offsets(shard["path"]) in trainer:
                group.append(_planned(folder, sample_offsets(shard["path"])))
            groups.append(group)
        if info.get("values"):
            rel = info["values"]["path"]
            groups.append([PlannedFile(rel, _local_file(folder, rel).stat().st_size)])
    for table in manifest.get("tables", {}).values():  # the builder's side tables (class lists, ...)
        groups.append([PlannedFile(table["path"], _local_file(folder, table["path"]).stat().st_size)])
    for entry in manifest.get("subsets", {}).values():  # selections (vldata select) with their entry counts
        groups.append([_planned(folder, entry["path"])] +
                      ([_planned(folder, entry["counts"]["path"])] if entry.get("counts") else []))
    grouped = {f.path for group in groups for f in group}
    return groups + [[_planned(folder, rel)] for rel in trainer if rel not in grouped]


def _commits(fmt: str, groups: list[list[PlannedFile]], metadata: list[PlannedFile],
             files_per_commit: int) -> list[PlannedCommit]:
    batches: list[list[PlannedFile]] = []
    for group in groups:
        if not batches or len(batches[-1]) + len(group) > files_per_commit:
            batches.append([])
        batches[-1].extend(group)
    commits = [PlannedCommit(f"vldata: upload {fmt} shards ({i}/{len(batches)})", batch)
               for i, batch in enumerate(batches, 1)]
    return commits + [PlannedCommit("vldata: dataset card, croissant.json and manifest", metadata)]


def plan_repo(folder: Path, repo_id: str, fmt: str, files_per_commit: int = FILES_PER_COMMIT,
              files_per_folder_limit: int = FILES_PER_FOLDER_LIMIT) -> RepoPlan:
    """What goes to one repo from one format folder; raises StructuralError on anything the Hub or a
    reader would trip over."""
    manifest = _read_manifest(folder)
    if manifest.get("format") != fmt:
        raise StructuralError(f"{folder / MANIFEST}: format {manifest.get('format')!r}, expected {fmt!r}")
    groups = _referenced_groups(folder, manifest)
    metadata = [_planned(folder, name) for name in METADATA_FILES]
    files = [f for group in groups for f in group] + metadata
    duplicates = [p for p, n in Counter(f.path for f in files).items() if n > 1]
    if duplicates:
        raise StructuralError(f"{folder / MANIFEST}: {duplicates[0]} is listed twice")
    check_hub_limits([f.path for f in files], fmt, files_per_folder_limit)
    too_big = [f for f in files if f.size > MAX_FILE_BYTES]
    if too_big:
        raise StructuralError(f"{folder / too_big[0].path}: {human_size(too_big[0].size)}, the Hub accepts files up to "
                              f"{human_size(MAX_FILE_BYTES)}; rebuild with a smaller {SHARD_SIZE_OPTION[fmt]}")
    planned = {f.path for f in files}
    ignored = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                     if p.is_file() and p.relative_to(folder).as_posix() not in planned)
    return RepoPlan(repo_id=repo_id, format=fmt, folder=folder, files=files,
                    commits=_commits(fmt, groups, metadata, files_per_commit), ignored=ignored)


def plan_publish(path: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
                 files_per_commit: int = FILES_PER_COMMIT,
                 files_per_folder_limit: int = FILES_PER_FOLDER_LIMIT) -> PublishPlan:
    """The whole plan, computed locally (no network): one repo per format folder found at ``path``."""
    from huggingface_hub import constants

    check_repo_id(repo_id)
    if files_per_commit < 1:
        raise StructuralError(f"files_per_commit must be at least 1, got {files_per_commit}")
    folders = _format_folders(Path(path))
    repos = [plan_repo(folders[fmt], repo_id + REPO_SUFFIX[fmt], fmt, files_per_commit, files_per_folder_limit)
             for fmt in FORMATS if fmt in folders]
    return PublishPlan(repos=repos, private=private, revision=revision, endpoint=constants.ENDPOINT)


def publish(path: str | Path, repo_id: str, private: bool = False, dry_run: bool = False,
            revision: str | None = None, token: str | None = None, api=None,
            files_per_commit: int = FILES_PER_COMMIT, files_per_folder_limit: int = FILES_PER_FOLDER_LIMIT,
            progress: Callable[[str], None] | None = None) -> PublishPlan:
    """Upload OUT (or one format folder) to ``repo_id`` (parquet) and ``repo_id-wds`` (webdataset).

    ``token=None`` lets huggingface_hub find it (``HF_TOKEN``, ``hf auth login``); ``api`` replaces the
    ``HfApi`` built from it. ``dry_run`` returns the plan without constructing a client. ``progress``
    receives one line per commit (default: this module's logger at INFO)."""
    plan = plan_publish(path, repo_id, private=private, revision=revision, files_per_commit=files_per_commit,
                        files_per_folder_limit=files_per_folder_limit)
    if dry_run:
        return plan
    from huggingface_hub import HfApi

    say = progress or logger.info
    api = api if api is not None else HfApi(token=token)
    plan.endpoint = api.endpoint
    for repo in plan.repos:
        _upload_repo(api, repo, plan, say)
    for repo in plan.repos:
        say(f"{repo.repo_id}: {plan.url(repo)}")
    return plan


def _upload_repo(api, repo: RepoPlan, plan: PublishPlan, say: Callable[[str], None]) -> None:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api.create_repo(repo.repo_id, repo_type="dataset", private=plan.private, exist_ok=True)
    if plan.revision:
        api.create_branch(repo.repo_id, repo_type="dataset", branch=plan.revision, exist_ok=True)
    for i, commit in enumerate(repo.commits, 1):
        operations: list = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(repo.folder / f.path))
                            for f in commit.files]
        stale: list[str] = []
        if i == len(repo.commits):
            # A rebuild with other shard names would otherwise leave old shards for the loaders' globs.
            stale = _stale_files(api.list_repo_files(repo.repo_id, repo_type="dataset", revision=plan.revision),
                                 repo)
            operations += [CommitOperationDelete(path_in_repo=p, is_folder=False) for p in stale]
        removing = f", removing {len(stale)} stale file(s) of an earlier build" if stale else ""
        say(f"{repo.repo_id}: commit {i}/{len(repo.commits)}: {commit.message} "
            f"[{len(commit.files)} files, {human_size(sum(f.size for f in commit.files))}{removing}]")
        api.create_commit(repo.repo_id, operations, commit_message=commit.message, repo_type="dataset",
                          revision=plan.revision)


def _stale_files(remote: list[str], repo: RepoPlan) -> list[str]:
    planned = {f.path for f in repo.files}
    patterns = STALE_PATTERNS[repo.format]
    return sorted(p for p in remote if p not in planned and any(_glob_match(p, pat) for pat in patterns))


def _glob_match(path: str, pattern: str) -> bool:
    """fnmatch where ``*`` stays inside one folder (``*.tar`` matches ``a.tar``, not ``x/a.tar``)."""
    return path.count("/") == pattern.count("/") and fnmatch.fnmatchcase(path, pattern)
