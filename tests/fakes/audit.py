"""Record what this process opens and connects to, through Python's audit hooks (PEP 578).

``with recording() as events: ...`` gives ``(event, target)`` pairs for every ``open`` (builtins,
io, os) and ``socket.connect`` while the block runs: the proof that a URL was never opened as a file.
Audit hooks cannot be removed, so one hook is installed once and only records while asked to.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

_EVENTS: list[tuple[str, str]] = []
_ACTIVE = [0]


def _hook(event: str, args: tuple) -> None:
    if _ACTIVE[0] and event in ("open", "socket.connect"):
        _EVENTS.append((event, str(args[1] if event == "socket.connect" else args[0])))


sys.addaudithook(_hook)


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[str, str]]]:
    _EVENTS.clear()
    _ACTIVE[0] += 1
    try:
        yield _EVENTS
    finally:
        _ACTIVE[0] -= 1
