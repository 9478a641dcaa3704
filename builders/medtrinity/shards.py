"""MedTrinity-25M's ``25M_accessible`` shards: zstd-compressed tars, read as a stream by the shared
``vldata.ingest.tarstream`` (never extracted; a break raises ``ContainerBroken`` naming the shard, so
the builder can fail the rows whose images lie past it and build the rest).

``index_shards`` finds every member's shard and position by basename. Knows no rows, keys or Records
and does no sharding or retries; the builder in ``__init__`` decides what a member means.
"""

from __future__ import annotations

from pathlib import Path

from vldata.ingest.tarstream import ContainerBroken, stream_members


def index_shards(shards: list[Path]) -> tuple[dict[str, tuple[int, int]], dict[int, str], int]:
    """One streaming pass over every shard: {basename: (shard index, member position)} (the first
    shard naming a basename wins), {shard index: why it is truncated}, and how many basenames repeat."""
    where: dict[str, tuple[int, int]] = {}
    truncated: dict[int, str] = {}
    duplicates = 0
    for si, shard in enumerate(shards):
        try:
            for pos, (member, _) in enumerate(stream_members(shard)):
                base = member.name.rsplit("/", 1)[-1]
                if base in where:
                    duplicates += 1
                else:
                    where[base] = (si, pos)
        except ContainerBroken as e:
            truncated[si] = str(e)
    return where, truncated, duplicates
