"""MetaCLIP's substring matching of captions against a list of entries (``vldata select --metaclip``).

MetaCLIP (Xu et al., "Demystifying CLIP Data") curates by counting, for each entry of its metadata
(words, phrases, titles), the captions that contain it. Its reference code
(facebookresearch/MetaCLIP, ``metaclip/substr_matching.py``) pads punctuation with spaces, turns tabs
and line breaks into spaces, and asks ``f" {entry} " in f" {text} "`` for every entry: case-sensitive,
whole tokens, each entry at most once per caption, overlapping entries all counted ("new york" and
"york city" both match "new york city"). This module gives exactly those answers, with one
Aho-Corasick automaton over the spaced entries instead of a loop over 500k entries per caption, and
spreads partitions over processes. Entry ids are positions in the entries list, so they line up with
the positions in MetaCLIP's metadata.json. Besides the partitions its callers hand it, it reads only
the user's entries file; it writes no file and never copies the entries anywhere (MetaCLIP's
metadata is licensed CC-BY-NC): worker processes receive them through their initializer, in memory.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import ahocorasick
import numpy as np

from vldata.errors import StructuralError

MAX_ENTRIES_BYTES = 1 << 30
Part = Callable[[], Sequence[str | None]]


def spacing(text: str) -> str:
    """The reference's ``spacing``: ``text`` between spaces, punctuation padded with spaces, tabs and
    line breaks made spaces."""
    # Chained str.replace, in the reference's order: matching calls this once per caption, and it is
    # several times faster than str.translate with a table of strings (0.6 against 4.2 us measured on
    # a 90-character caption).
    return (f" {text} ".replace(",", " , ").replace(".", " . ").replace(";", " ; ").replace(":", " : ")
            .replace("?", " ? ").replace("!", " ! ").replace("`", " ` ")
            .replace("\t", " ").replace("\n", " ").replace("\r", " "))


def read_entries(path: str | os.PathLike) -> list[str]:
    """The entries in ``path``: MetaCLIP's metadata JSON (a list of strings; recognised by ``[`` as the
    first non-whitespace byte) or text with one entry per line. Lines lose only their ``\\n`` or
    ``\\r\\n`` ending; empty lines are skipped; JSON items are kept as they are, empty ones included,
    so ids stay the JSON positions. Raises ``StructuralError`` (one line naming the file) for a file
    that is missing, over 1 GiB, not UTF-8, not a JSON list of strings, or without entries."""
    name = os.fspath(path)
    try:
        size = os.stat(path).st_size
        if size > MAX_ENTRIES_BYTES:
            raise StructuralError(f"entries file {name} is {size:,} bytes; the limit is {MAX_ENTRIES_BYTES:,}")
        with open(path, "rb") as f:
            data = f.read(min(os.fstat(f.fileno()).st_size, MAX_ENTRIES_BYTES) + 1)  # +1: a file that grew
    except OSError as e:
        raise StructuralError(f"cannot read entries file {name}: {e.strerror or e}") from None
    if len(data) > MAX_ENTRIES_BYTES:  # it grew between stat and read
        raise StructuralError(f"entries file {name} is over {MAX_ENTRIES_BYTES:,} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise StructuralError(f"entries file {name}: line {line} is not UTF-8 (byte {e.start})") from None
    text = text.removeprefix("\ufeff")  # a BOM would otherwise stick to the first entry
    if text.lstrip(" \t\r\n").startswith("["):
        entries = _json_entries(name, text)
    else:
        # split on "\n" only: splitlines() would also break on \v, \f, \x1c-\x1e, \x85, \u2028...
        entries = [line.removesuffix("\r") for line in text.split("\n")]
        entries = [e for e in entries if e]
    if not entries:
        raise StructuralError(f"entries file {name} holds no entries")
    return entries


def _json_entries(name: str, text: str) -> list[str]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise StructuralError(f"entries file {name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(items, list):
        raise StructuralError(f"entries file {name}: JSON must be a list of strings, got {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise StructuralError(f"entries file {name}: JSON item {i} is {type(item).__name__} {item!r:.60}, "
                                  "not a string")
    return items


class Matcher:
    """Which entries each caption contains, as the reference's ``substr_matching`` decides.

    The automaton maps each spaced entry to the first id that spells it; an entry string listed again
    (the reference matches every copy) adds its later ids to ``_copies``, consulted only if any exist.
    Picklable: the pickle holds the entries and the automaton is rebuilt on load. For 500k entries
    pyahocorasick's own pickle of the automaton round-trips in less CPU (1.4-1.5 s against 2.1-2.5 s
    for entries and rebuild) but weighs 141 MB against 8 MB (bench/metaclip_match.py): the sender
    would pay its serial dump per receiver and a pipe carry 17x the bytes, while rebuilds run in the
    receivers, in parallel.
    """

    def __init__(self, entries: Sequence[str]) -> None:
        self.entries = list(entries)
        self._automaton, self._copies = _automaton(self.entries)

    def __getstate__(self) -> dict:
        return {"entries": self.entries}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["entries"])

    def match(self, text: str | None) -> list[int]:
        """The ids of the entries ``text`` contains, sorted, each once. None matches nothing."""
        return self.match_many([text])[1].tolist()

    def match_many(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """(offsets int64 of length n+1, ids int32): caption i's entries are ``ids[offsets[i]:offsets[i+1]]``,
        sorted, each once."""
        # Built in arrays, not lists of lists: no per-caption Python containers for the GC to scan,
        # and numpy views of them at the end. Walking the automaton is most of the time.
        ids = array("i")
        offsets = array("q", [0])
        if self._automaton is None:  # no entries: nothing matches (and an empty automaton cannot iter)
            offsets.extend([0] * len(texts))
        else:
            find, copies = self._automaton.iter, self._copies
            extend, append = ids.extend, offsets.append
            for text in texts:
                if text is not None:
                    found = sorted({i for _, i in find(spacing(text))})
                    if copies:
                        found = sorted([c for i in found for c in copies.get(i, (i,))])
                    extend(found)
                append(len(ids))
        return np.frombuffer(offsets, dtype=np.int64), np.frombuffer(ids, dtype=np.int32)


def _automaton(entries: list[str]) -> tuple[ahocorasick.Automaton | None, dict[int, tuple[int, ...]]]:
    """Aho-Corasick over the spaced entries, each key's value the first id spelling it, and the ids of
    every entry string listed more than once (first id -> all its ids)."""
    first: dict[str, int] = {}
    copies: dict[int, list[int]] = {}
    for i, entry in enumerate(entries):
        j = first.setdefault(f" {entry} ", i)
        if j != i:
            copies.setdefault(j, [j]).append(i)
    if not first:
        return None, {}
    automaton = ahocorasick.Automaton(ahocorasick.STORE_ANY, ahocorasick.KEY_STRING)
    for key, i in first.items():
        automaton.add_word(key, i)
    automaton.make_automaton()
    return automaton, {j: tuple(ids) for j, ids in copies.items()}


def entry_counts(ids: np.ndarray, num_entries: int) -> np.ndarray:
    """Per entry, how many captions match it (int64, length ``num_entries``): MetaCLIP's count, given
    ``ids`` from ``match_many`` (each caption's ids are distinct, so one id is one caption)."""
    ids = np.asarray(ids)
    if ids.size and int(ids.max()) >= num_entries:
        raise ValueError(f"entry id {int(ids.max())} out of range for {num_entries} entries")
    return np.bincount(ids, minlength=num_entries).astype(np.int64, copy=False)


_worker_matcher: Matcher | None = None


def _start_worker(entries: list[str]) -> None:
    global _worker_matcher
    _worker_matcher = Matcher(entries)


def _match_part(part: Part) -> tuple[np.ndarray, np.ndarray]:
    assert _worker_matcher is not None, "worker started without its initializer"
    return _worker_matcher.match_many(part())


def match_all(parts: Sequence[Part], entries: list[str], workers: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """``match_many`` of each part's texts, in part order. A part is a picklable zero-argument callable
    returning one partition's texts (a ``functools.partial`` of a module-level reader), so workers read
    their own partitions. With ``workers > 1`` and several parts, the parts run in up to ``workers``
    spawned processes, each building the automaton once from ``entries``."""
    if not parts:
        return []
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1 or len(parts) == 1:
        matcher = Matcher(entries)
        return [matcher.match_many(part()) for part in parts]
    # spawn, never fork: the caller may hold threads (pyarrow's pools) whose locks a fork would copy held
    with ProcessPoolExecutor(max_workers=min(workers, len(parts)), mp_context=get_context("spawn"),
                             initializer=_start_worker, initargs=(entries,)) as pool:
        return list(pool.map(_match_part, parts))
