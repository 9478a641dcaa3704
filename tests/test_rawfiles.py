"""Finding raw files: sorted, hidden ones skipped, and only regular files (a FIFO or a folder with a
data file's name would never end or cannot be read)."""

from __future__ import annotations

import os

from vldata.ingest.rawfiles import raw_files


def test_only_regular_visible_files_in_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.parquet").write_bytes(b"x")
    (tmp_path / "1.parquet").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "3.parquet").write_bytes(b"x")
    (tmp_path / "dir.parquet").mkdir()
    os.mkfifo(tmp_path / "fifo.parquet")
    root, files = raw_files(tmp_path, "*.parquet")
    assert root == tmp_path and files == [tmp_path / "1.parquet", tmp_path / "b" / "2.parquet"]
    assert raw_files(tmp_path / "1.parquet", "*.parquet") == (tmp_path, [tmp_path / "1.parquet"])
