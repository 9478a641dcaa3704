"""Where partitions run: in this process, in a local process pool, or as Ray tasks.

An executor takes the partitions still to build and yields each one after its part (Arrow stream +
``done`` file) is committed in ``parts_dir``, in completion order. It runs the engine's one
partition function, ``partition.build_partition``, unchanged, so the parts and therefore the shards are
the same whichever executor ran them; ordering, accounting and the reduce stay in the engine.

Ray (``--executor ray``, the ``ray`` extra): each partition is a task that builds its part in a
temporary folder on whichever node runs it and returns the part's bytes through Ray's object store,
so only the driver writes ``parts_dir`` (no shared output filesystem is needed). Ray retries a task
whose worker died (``max_retries``) or that raised (``retry_exceptions``); a part is committed only
from a successful attempt, so a retried partition gives the same part. The driver connects to the
cluster named by ``RAY_ADDRESS`` (or an already initialised Ray), else starts a local one with
``workers`` CPUs. The raw input must be readable at the same path on every node.
An executor must not order, count or write anything but parts.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from vldata.errors import StructuralError
from vldata.layout import atomic_write
from vldata.write.builder import Builder, Partition
from vldata.write.partition import build_partition, part_files

Executor = Callable[[Builder, list[Partition], Path, int], Iterator[Partition]]
RAY_RETRIES = 3


def get_executor(name: str) -> Executor:
    executors = {"local": run_local, "ray": run_ray}
    if name not in executors:
        raise StructuralError(f"unknown executor {name!r} (choose from {', '.join(executors)})")
    return executors[name]


def run_local(builder: Builder, todo: list[Partition], parts_dir: Path, workers: int) -> Iterator[Partition]:
    if workers <= 1:
        for p in todo:
            build_partition(builder, p, parts_dir)
            yield p
        return
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_exit_with_parent, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(build_partition, builder, p, parts_dir): p for p in todo}
        for fut in as_completed(futures):
            fut.result()
            yield futures[fut]
    except BaseException:  # Ctrl-C or a failed partition: drop the queue, stop the workers now
        _stop(pool)
        raise
    pool.shutdown()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel queued partitions and end the workers at once (a running partition would otherwise
    finish first, which for a URL-heavy partition can take minutes). A part is committed only by its
    ``done`` file, so a worker killed mid-partition leaves nothing that ``--resume`` would trust."""
    processes = list(getattr(pool, "_processes", {}).values())  # the executor offers no public kill
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.terminate()
    for proc in processes:
        proc.join(5)


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: leave when the build process is gone (SIGKILL, OOM kill), instead of
    lingering as an orphan that holds the terminal and may still be writing parts. Ctrl-C reaches the
    whole process group; only the build process handles it (it stops the workers), so a worker
    ignores it instead of printing a traceback of its own."""
    import threading
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="vldata-parent-watch").start()


# --------------------------------------------------------------------------------------------
# Ray


def _ray():
    try:
        import ray
    except ImportError:
        raise StructuralError("--executor ray needs Ray: pip install 'vldata[ray]'") from None
    return ray


def build_part_bytes(builder: Builder, part: Partition) -> tuple[bytes, bytes]:
    """The Ray task body: build one partition into a private temporary folder and return its part
    (Arrow stream, done document) as bytes."""
    _maybe_fail_once(part.index)
    with tempfile.TemporaryDirectory(prefix="vldata-part-") as tmp:
        build_partition(builder, part, Path(tmp))
        arrow, done = part_files(Path(tmp), part.index)
        return arrow.read_bytes(), done.read_bytes()


def _maybe_fail_once(index: int) -> None:
    """Fault injection for the retry tests: VLDATA_FAIL_ONCE="<partition>:<kill|raise>:<marker file>"
    makes the first attempt at that partition die (or raise); the marker records that it happened."""
    spec = os.environ.get("VLDATA_FAIL_ONCE")
    if not spec:
        return
    target, how, marker = spec.split(":", 2)
    if int(target) != index or os.path.exists(marker):
        return
    Path(marker).write_text(f"partition {index} failed once ({how}) in pid {os.getpid()}\n")
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected failure of partition {index}")


def _commit(parts_dir: Path, index: int, arrow: bytes, done: bytes) -> None:
    arrow_file, done_file = part_files(parts_dir, index)
    atomic_write(arrow_file, arrow, fsync=True)
    atomic_write(done_file, done, fsync=True)  # last: it commits the part


def run_ray(builder: Builder, todo: list[Partition], parts_dir: Path, workers: int) -> Iterator[Partition]:
    ray = _ray()
    started_here = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
        started_here = True
    try:
        task = ray.remote(num_cpus=1, max_retries=RAY_RETRIES, retry_exceptions=True)(build_part_bytes)
        builder_ref = ray.put(builder)
        pending = {task.remote(builder_ref, p): p for p in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            part = pending.pop(ready[0])
            arrow, done = ray.get(ready[0])
            _commit(parts_dir, part.index, arrow, done)
            yield part
    finally:
        if started_here:
            ray.shutdown()
