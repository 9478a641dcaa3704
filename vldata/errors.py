"""The exceptions every side of vldata raises; a leaf module that imports nothing.

``StructuralError`` is the one-line refusal of unusable input or settings before any work starts (the
CLI prints it and exits 2); ``ShardError`` names a shard that cannot be read as its manifest says, ``SampleError`` one sample of it.
Row-level problems are never exceptions: they are counted outcomes (``write.builder.Failed``).
"""

from __future__ import annotations


class StructuralError(Exception):
    """The input or the configuration is unusable as a whole; the message is one line naming the
    file, column or key. Raised before any work starts."""


class ShardError(RuntimeError):
    """A shard cannot be read as the manifest describes it (truncated, missing, altered)."""


class SampleError(ShardError):
    """One sample of a shard cannot be read (a member that does not decode); the shard's other
    samples can. Training loops skip and count it; the message names the shard and the sample."""


class BuildInterrupted(Exception):
    """Ctrl-C stopped a build; the message is the one line the CLI prints (what is done, and that
    ``--resume`` finishes it)."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one short line (library messages often span several): ``Type: message``."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
