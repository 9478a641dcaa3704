"""Two ranks under torchrun (gloo, CPU): disjoint keys covering the epoch, equal batch counts, and
an exact resume from a saved state."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import vldata


def test_torchrun_two_ranks(scin_built, tmp_path):
    script = Path(__file__).parent / "fakes" / "ddp_worker.py"
    with socket.socket() as s:  # a free port for the rendezvous (port 0 makes torchrun hang)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={port}", str(script), str(scin_built / "webdataset"), str(tmp_path), "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert len(ranks[0]["full"]) == len(ranks[1]["full"])  # the same number of batches on both ranks
    keys = [k for r in ranks for batch in r["full"] for k in batch]
    src = vldata.open(scin_built / "webdataset")
    everything = {src[i]["key"] for i in range(len(src))}
    assert set(keys) == everything and len(keys) == len(everything) + ranks[0]["padding"]
    rank_sets = [{k for batch in r["full"] for k in batch} for r in ranks]
    repeated = rank_sets[0] & rank_sets[1]
    assert len(repeated) <= ranks[0]["padding"]  # only the counted padding may repeat
    for r in ranks:
        assert r["resumed"] == r["full"]  # stop after 2 batches, save, new loader, load: same batches
