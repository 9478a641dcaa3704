"""The command line: list, sample, inspect, unknown builder."""

from __future__ import annotations

from conftest import run_cli


def test_list_names_builders():
    proc = run_cli("list", check=True)
    names = [line.split("\t")[0] for line in proc.stdout.splitlines()]
    assert "scin" in names


def test_unknown_builder_is_one_line_error(tmp_path):
    proc = run_cli("build", "nope", "--raw", tmp_path, "--out", tmp_path / "o")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown builder 'nope'" in proc.stderr


def test_sample_then_inspect(tmp_path, scin_built):
    proc = run_cli("sample", "scin", tmp_path / "raw", "--n", "5", check=True)
    assert (tmp_path / "raw" / "dataset" / "scin_cases.csv").exists()
    text = run_cli("inspect", scin_built, check=True).stdout
    assert "train:" in text and "input_rows" in text and "image_missing" in text
    assert "monk_skin_tone_us" in text


def test_python_api_gives_the_same_shards_as_the_cli(scin_raw, scin_built, tmp_path):
    import vldata
    from conftest import shard_hashes

    vldata.build("scin", scin_raw, tmp_path / "api", rows_per_partition=7,
                 shard_bytes={"parquet": 40 << 10, "webdataset": 60 << 10})
    assert shard_hashes(tmp_path / "api") == shard_hashes(scin_built)
    assert "scin" in vldata.list_builders()
    assert vldata.get_builder("scin", view="image").record_type().__name__ == "ScinImage"
