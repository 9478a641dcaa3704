"""Hub publishing: the plan (files, repos, commits, limits) and the calls made to huggingface_hub.

No test here touches the network: the dry run runs with an unreachable endpoint and offline mode,
and the upload tests replace ``HfApi``'s methods and refuse every socket connection. The live test
runs only when ``HF_TOKEN`` and ``VLDATA_TEST_HUB_REPO`` are both set.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

import huggingface_hub
import pytest
from conftest import run_cli

import vldata
from vldata.errors import StructuralError
from vldata.cli import main as cli_main
from vldata.tools.publish import check_hub_limits, plan_publish, publish

FAKE_TOKEN = "hf_FAKEtoken1234567890"
METADATA = {"README.md", "croissant.json", "vldata.json"}


def expected_files(folder: Path) -> dict[str, int]:
    """What the manifest says should be uploaded, by relative path, with sizes from disk."""
    manifest = json.loads((folder / "vldata.json").read_text())
    paths = set(METADATA)
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            paths.add(shard["path"])
            if "index" in shard:
                paths.add(shard["index"])
        if "values" in info:
            paths.add(info["values"]["path"])
    paths.update(t["path"] for t in manifest.get("tables", {}).values())
    paths.update(f["path"] for f in manifest.get("trainer_files", []))  # timm, open_clip, Energon
    return {p: (folder / p).stat().st_size for p in paths}


def plan_sections(text: str) -> dict[str, dict[str, int]]:
    """Repo id -> {file: size} parsed from the rendered plan."""
    sections: dict[str, dict[str, int]] = {}
    current = None
    in_files = False
    for line in text.splitlines():
        if line.startswith("repo "):
            current = line.split()[1]
            sections[current] = {}
        elif line.startswith("  files ("):
            in_files = True
        elif line.startswith("    ") and in_files:
            path, size, unit = line.split()
            assert unit == "B"
            sections[current][path] = int(size.replace(",", ""))
        else:
            in_files = False
    return sections


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails loudly (and is recorded)."""
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError(f"test: network call to {address} refused")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture
def hub(monkeypatch, no_network):
    """``HfApi``'s methods replaced at the method boundary by recorders."""
    calls: list[tuple[str, tuple, dict]] = []
    remote: dict[str, list[str]] = {}

    def recorder(name, result=None):
        def method(self, *args, **kwargs):
            calls.append((name, args, kwargs))
            return result(*args, **kwargs) if callable(result) else result
        return method

    for name in ("create_repo", "create_branch", "create_commit"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, recorder(name))
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        recorder("list_repo_files", lambda repo_id, **kw: [".gitattributes", *remote.get(repo_id, [])]))
    for name in ("upload_folder", "upload_file", "upload_large_folder", "repo_info", "whoami"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, recorder(name), raising=False)
    return calls, remote


def commits_by_repo(calls) -> dict[str, list[list]]:
    out: dict[str, list[list]] = {}
    for name, args, _kwargs in calls:
        if name == "create_commit":
            out.setdefault(args[0], []).append(list(args[1]))
    return out


def test_dry_run_cli_lists_exactly_the_files_of_both_repos(scin_built):
    env = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": FAKE_TOKEN}
    proc = run_cli("publish", scin_built, "--repo", "org/name", "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    sections = plan_sections(proc.stdout)
    assert sections == {"org/name": expected_files(scin_built / "parquet"),
                        "org/name-wds": expected_files(scin_built / "webdataset")}
    assert sum(p.endswith(".tar") for p in sections["org/name-wds"]) > 1  # several shards, with their indexes
    assert sum(p.endswith(".idx.json") for p in sections["org/name-wds"]) > 1
    assert sum(p.endswith(".tar.idx") for p in sections["org/name-wds"]) > 1
    assert {"_info.json", "sizes.json", ".nv-meta/.info.json", ".nv-meta/split.yaml",
            ".nv-meta/dataset.yaml"} <= set(sections["org/name-wds"])
    assert sum(p.startswith("data/") for p in sections["org/name"]) > 1
    # the endpoint is the unreachable one: any call would have failed the command
    assert "http://127.0.0.1:9/datasets/org/name-wds" in proc.stdout
    assert "nothing was uploaded" in proc.stdout
    assert FAKE_TOKEN not in proc.stdout + proc.stderr


def test_dry_run_never_builds_a_client(scin_built, monkeypatch, no_network):
    def no_client(*args, **kwargs):
        raise AssertionError("HfApi constructed in a dry run")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_client)
    plan = vldata.publish(scin_built, "org/name", private=True, dry_run=True)
    assert [r.repo_id for r in plan.repos] == ["org/name", "org/name-wds"]
    assert "private" in str(plan) and no_network == []


def test_stray_files_are_not_planned(scin_built, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(scin_built / "parquet", out / "parquet")
    (out / "parquet" / "data" / "train-00000-of-00009.parquet.tmp").write_bytes(b"partial")
    (out / "parquet" / "notes.txt").write_text("scratch")
    (repo,) = plan_publish(out, "org/name").repos
    assert {f.path: f.size for f in repo.files} == expected_files(out / "parquet")
    assert repo.ignored == ["data/train-00000-of-00009.parquet.tmp", "notes.txt"]


@pytest.mark.parametrize("private,revision", [(True, "v1.0"), (False, None)])
def test_upload_calls(scin_built, hub, monkeypatch, capsys, caplog, private, revision):
    calls, remote = hub
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    caplog.set_level(logging.DEBUG)
    # an earlier build left shards the new card's globs would pick up, and the user added a file
    remote["org/name"] = ["data/train-00000-of-00099.parquet", "README.md", "extra/notes.md"]
    remote["org/name-wds"] = ["train-000777.tar", "train-000777.idx.json", "train-000000.tar"]
    args = ["publish", str(scin_built), "--repo", "org/name"]
    args += ["--private"] if private else []
    args += ["--revision", revision] if revision else []
    assert cli_main(args) == 0

    assert all(kw.get("repo_type") == "dataset" for _name, _args, kw in calls)
    assert [(n, a[0]) for n, a, _ in calls if n == "create_repo"] == [("create_repo", "org/name"),
                                                                      ("create_repo", "org/name-wds")]
    assert all(kw["private"] is private and kw["exist_ok"] is True for n, _a, kw in calls if n == "create_repo")
    branches = [(a[0], kw["branch"]) for n, a, kw in calls if n == "create_branch"]
    assert branches == ([("org/name", revision), ("org/name-wds", revision)] if revision else [])
    assert all(kw["revision"] == revision for n, _a, kw in calls if n in ("create_commit", "list_repo_files"))
    assert not [n for n, _a, _kw in calls if n not in ("create_repo", "create_branch", "create_commit",
                                                       "list_repo_files")]

    commits = commits_by_repo(calls)
    assert set(commits) == {"org/name", "org/name-wds"}
    for repo_id, folder, stale in [("org/name", scin_built / "parquet", ["data/train-00000-of-00099.parquet"]),
                                   ("org/name-wds", scin_built / "webdataset",
                                    ["train-000777.idx.json", "train-000777.tar"])]:
        adds = [op for ops in commits[repo_id] for op in ops if isinstance(op, huggingface_hub.CommitOperationAdd)]
        uploaded = {op.path_in_repo: Path(op.path_or_fileobj) for op in adds}
        assert len(adds) == len(uploaded)  # each file once
        assert uploaded == {p: folder / p for p in expected_files(folder)}
        *first, last = commits[repo_id]
        assert len(first) >= 1
        assert {op.path_in_repo for op in last if isinstance(op, huggingface_hub.CommitOperationAdd)} == METADATA
        assert not any(op.path_in_repo in METADATA for ops in first for op in ops)
        deleted = sorted(op.path_in_repo for op in last if isinstance(op, huggingface_hub.CommitOperationDelete))
        assert deleted == stale
        assert not any(isinstance(op, huggingface_hub.CommitOperationDelete) for ops in first for op in ops)

    out, err = capsys.readouterr()
    assert out.count("commit ") == sum(len(c) for c in commits.values())
    assert "https://huggingface.co/datasets/org/name-wds" in out
    everything = out + err + caplog.text + "".join(str(r.args) for r in caplog.records)
    assert FAKE_TOKEN not in everything


def test_explicit_token_reaches_the_client_and_no_output(scin_built, hub, monkeypatch, capsys, caplog):
    calls, _remote = hub
    caplog.set_level(logging.DEBUG)
    seen = []
    real_init = huggingface_hub.HfApi.__init__

    def init(self, *args, **kwargs):
        seen.append(kwargs.get("token"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(huggingface_hub.HfApi, "__init__", init)
    publish(scin_built / "webdataset", "org/name", token=FAKE_TOKEN, files_per_commit=3)
    assert seen == [FAKE_TOKEN]
    commits = commits_by_repo(calls)["org/name-wds"]
    assert all(len(ops) <= 3 for ops in commits) and len(commits) > 3
    for ops in commits[:-1]:  # a tar and its indexes travel together
        paths = [op.path_in_repo for op in ops]
        assert all(p.replace(".tar", ".idx.json") in paths and p + ".idx" in paths for p in paths if p.endswith(".tar"))
    order = [op.path_in_repo for ops in commits for op in ops]  # the trainers' counts come after every tar
    assert max(i for i, p in enumerate(order) if p.endswith(".tar")) < order.index("_info.json")
    out, err = capsys.readouterr()
    assert FAKE_TOKEN not in out + err + caplog.text


def test_too_many_files_in_a_folder_is_refused():
    check_hub_limits([f"data/train-{i:05d}.parquet" for i in range(10_000)], "parquet")  # at the limit: fine
    with pytest.raises(StructuralError, match=r"10,001 entries in folder data/.*--parquet-shard-size"):
        check_hub_limits([f"data/train-{i:05d}.parquet" for i in range(10_001)], "parquet")
    with pytest.raises(StructuralError, match=r"top folder.*--tar-shard-size"):
        check_hub_limits([f"train-{i:06d}.tar" for i in range(10_000)], "webdataset")  # + .gitattributes


def test_limit_is_checked_before_any_call(scin_built, hub):
    calls, _remote = hub
    with pytest.raises(StructuralError, match="--tar-shard-size"):
        publish(scin_built, "org/name", files_per_folder_limit=8)
    assert calls == []


def test_parquet_only_build_plans_one_repo(scin_built, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(scin_built / "parquet", out / "parquet")
    shutil.copytree(scin_built / "build", out / "build")
    plan = plan_publish(out, "org/name")
    assert [(r.repo_id, r.format) for r in plan.repos] == [("org/name", "parquet")]
    assert not any(f.path.startswith("build") for f in plan.repos[0].files)
    (repo,) = plan_publish(scin_built / "webdataset", "org/name").repos
    assert repo.repo_id == "org/name-wds"


def test_missing_or_truncated_shard_is_named(scin_built, tmp_path, hub):
    calls, _remote = hub
    out = tmp_path / "out"
    shutil.copytree(scin_built, out)
    manifest = json.loads((out / "webdataset" / "vldata.json").read_text())
    victim = manifest["splits"]["train"]["shards"][1]["path"]
    (out / "webdataset" / victim).unlink()
    with pytest.raises(StructuralError, match=f"{victim}: missing"):
        publish(out, "org/name")
    shutil.copyfile(scin_built / "webdataset" / victim, out / "webdataset" / victim)
    with open(out / "webdataset" / victim, "r+b") as f:
        f.truncate(1024)
    proc = run_cli("publish", out, "--repo", "org/name", "--dry-run")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert victim in proc.stderr and "1,024 bytes" in proc.stderr
    assert calls == []


@pytest.mark.parametrize("repo_id", ["name", "a/b/c", "org/na..me", "-org/name", "org/name.git", ""])
def test_bad_repo_id(scin_built, repo_id):
    with pytest.raises(StructuralError, match="repo id"):
        publish(scin_built, repo_id, dry_run=True)


@pytest.mark.skipif(not (os.environ.get("HF_TOKEN") and os.environ.get("VLDATA_TEST_HUB_REPO")),
                    reason="live Hub test: set HF_TOKEN and VLDATA_TEST_HUB_REPO=ORG/NAME (a scratch repo)")
def test_live_publish_and_load_back(scin_built):
    import datasets

    repo_id = os.environ["VLDATA_TEST_HUB_REPO"]
    api = huggingface_hub.HfApi()
    plan = publish(scin_built, repo_id, private=True)
    try:
        for repo in plan.repos:
            assert api.repo_info(repo.repo_id, repo_type="dataset").private is True
            expected = json.loads((repo.folder / "vldata.json").read_text())["splits"]["train"]["num_samples"]
            ds = datasets.load_dataset(repo.repo_id, split="train", download_mode="force_redownload")
            assert len(ds) == expected
    finally:
        for repo in plan.repos:
            api.delete_repo(repo.repo_id, repo_type="dataset", missing_ok=True)
