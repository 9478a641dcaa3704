"""Shared by the bench scripts: run one command in a fresh wrapper process and report its wall time,
CPU seconds (all processes of the command) and the peak RSS of its largest process."""

from __future__ import annotations

import json
import subprocess
import sys

_WRAPPER = """
import resource, subprocess, sys, time, json
t0 = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, capture_output=True)
wall = time.perf_counter() - t0
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": wall, "cpu": r.ru_utime + r.ru_stime, "maxrss_mb": r.ru_maxrss / 1024}))
"""


def measure_command(cmd: list[str]) -> dict:
    """{"wall", "cpu", "maxrss_mb"} of ``cmd``, measured from a wrapper so that they are its own."""
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], check=True, capture_output=True, text=True)
    return json.loads(proc.stdout)
