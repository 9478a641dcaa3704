"""The progress a ``TorchDataset`` shares with its DataLoader workers, in shared memory.

A DataLoader worker iterates its own copy of the dataset (forked, or pickled for spawn), and with
``persistent_workers=True`` that copy lives across epochs: an epoch set on the dataset in the main
process after the workers started would never reach it. So the state that decides which epoch a pass
reads lives here, in a few shared integers that the main process and every worker see: the epoch and
position to start from (written by ``set_epoch``/``load_state_dict`` in the main process), how many
workers took part in the current pass and how many finished their slice, the samples skipped, and
the epoch position the pass's plan starts at (non-zero only after an elastic resume).

The rule for a pass that begins without a new ``set_epoch``: when every worker of the previous pass
finished its slice, the next epoch begins; otherwise (a pass that was broken off) the current epoch
starts again from the last explicit state. Fresh, persistent and in-process iteration follow the same
rule, so the epochs a loop sees never depend on ``num_workers`` or ``persistent_workers``.

Pickled outside of process spawning (``copy.deepcopy``, saving a dataset), it becomes an independent
copy with the same values. This module knows nothing of torch, sources or plans.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import context as mp_context

_GENERATION, _EPOCH, _POSITION, _WORKERS, _FINISHED, _SKIPPED, _START = range(7)


class SharedProgress:
    """Seven shared int64 slots under one lock (created in the spawn context, so that both forked and
    spawned DataLoader workers can inherit it)."""

    def __init__(self, values: list[int] | None = None):
        self._slots = multiprocessing.get_context("spawn").Array("q", values or [0] * 7)

    def __reduce__(self):
        if mp_context.get_spawning_popen() is not None:  # handing it to a worker being spawned
            return _inherit, (self._slots,)
        with self._slots.get_lock():
            return SharedProgress, (list(self._slots),)

    def restart(self, epoch: int, position: int, start: int = 0) -> None:
        """An explicit state from the main process: the next pass starts here."""
        with self._slots.get_lock():
            s = self._slots
            s[_GENERATION] += 1
            s[_EPOCH], s[_POSITION], s[_START], s[_WORKERS], s[_FINISHED] = epoch, position, start, 0, 0

    def begin(self, workers: int) -> tuple[int, int, int, int]:
        """A worker (or the main process, ``workers=1``) starts a pass: (generation, epoch, position,
        start)."""
        with self._slots.get_lock():
            s = self._slots
            if s[_WORKERS] and s[_FINISHED] >= s[_WORKERS]:  # the previous pass was read to its end
                s[_GENERATION] += 1
                s[_EPOCH], s[_POSITION], s[_START], s[_FINISHED] = s[_EPOCH] + 1, 0, 0, 0
            s[_WORKERS] = workers
            return s[_GENERATION], s[_EPOCH], s[_POSITION], s[_START]

    def finish(self, generation: int) -> None:
        """A worker read its whole slice of the pass it began at ``generation``."""
        with self._slots.get_lock():
            if self._slots[_GENERATION] == generation:
                self._slots[_FINISHED] += 1

    def add_skipped(self, n: int = 1) -> None:
        with self._slots.get_lock():
            self._slots[_SKIPPED] += n

    @property
    def skipped(self) -> int:
        return self._slots[_SKIPPED]

    @property
    def epoch(self) -> int:
        return self._slots[_EPOCH]


def _inherit(slots) -> SharedProgress:
    progress = SharedProgress.__new__(SharedProgress)
    progress._slots = slots
    return progress
