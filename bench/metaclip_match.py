"""MetaCLIP substring matching (``vldata.tools.metaclip``) against pyahocorasick used directly and
against the reference's loop over entries.

Usage: python bench/metaclip_match.py [--entries 500000] [--captions 100000] [--loop-prefix 100] [--rounds 3]
                                     [--seed 0]

Generates, with a fixed seed, a vocabulary of 200k word forms (random letters at English letter
frequencies), entries like MetaCLIP's 500k (single words, some capitalized, two- and three-word
phrases; all distinct) and captions of 5-25 words drawn Zipf-like from the same vocabulary, with
commas, full stops and capital letters. Then, in CPU seconds (``time.process_time``) of this
process: building the automaton (``Matcher(entries)``); pickling a Matcher (entries, rebuilt on load)
against pickling the automaton itself; (1) ``Matcher.match_many`` over all captions; (2) pyahocorasick
used the plain way (spaced entries in an ``Automaton``, the reference's ``spacing``, the sorted set of
ids per caption) over all captions; (3) the reference's loop over entries on a prefix of the
captions only, extrapolated. (1) and (2) run --rounds times, alternately, and the least CPU time of
each is kept (the machine may be shared). (1) must equal (2) on every caption and (3) on the prefix,
or the script raises. Last, ``match_all`` wall-clock with 1 and 2 workers over 10 parts read from
text files in a temporary folder (spawned processes each build their own automaton: that is
included), the best of --rounds. It prints figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import functools
import os
import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # MetaCLIP's reference, tests/fakes

import ahocorasick
from fakes.metaclip_reference import reference_spacing, reference_substr_matching

from vldata.tools.metaclip import Matcher, entry_counts, match_all

# English letter frequencies (percent), a..z: words share prefixes the way real ones do
LETTER_FREQ = [8.2, 1.5, 2.8, 4.3, 12.7, 2.2, 2.0, 6.1, 7.0, 0.15, 0.77, 4.0, 2.4, 6.7, 7.5, 1.9, 0.095, 6.0, 6.3,
               9.1, 2.8, 0.98, 2.4, 0.15, 2.0, 0.074]


def make_vocab(rng: np.random.Generator, size: int) -> list[str]:
    p = np.array(LETTER_FREQ) / sum(LETTER_FREQ)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    seen: set[str] = set()
    vocab: list[str] = []
    while len(vocab) < size:
        lengths = rng.integers(2, 11, size=size)
        chars = letters[rng.choice(26, size=(size, 10), p=p)]
        for row, n in zip(chars, lengths):
            word = row[:n].tobytes().decode()
            if word not in seen:
                seen.add(word)
                vocab.append(word)
                if len(vocab) == size:
                    break
    return vocab


def make_data(seed: int, n_entries: int, n_captions: int, vocab_size: int = 200_000) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    vocab = make_vocab(rng, vocab_size)
    zipf = 1.0 / (np.arange(vocab_size) + 2.7)
    zipf /= zipf.sum()

    def draw(n: int) -> np.ndarray:
        return rng.choice(vocab_size, size=n, p=zipf)

    entries: dict[str, None] = {}  # insertion-ordered set
    # single words: half of the vocabulary beyond the 100 most frequent (MetaCLIP's unigrams are
    # common but not stop words), capitalized forms of some more
    singles = rng.permutation(np.arange(100, vocab_size))[: int(0.5 * (vocab_size - 100))]
    entries.update((vocab[i], None) for i in singles)
    entries.update((vocab[i].capitalize(), None) for i in rng.choice(vocab_size, size=n_entries // 10, replace=False))
    while len(entries) < n_entries:  # two- and three-word phrases of Zipf-drawn words, 3:1
        lengths = rng.choice([2, 2, 2, 3], size=n_entries)
        words = draw(3 * n_entries).reshape(-1, 3)
        caps = rng.random(n_entries) < 0.1
        for n, row, cap in zip(lengths, words, caps):
            phrase = " ".join(vocab[i] for i in row[:n])
            entries[phrase.capitalize() if cap else phrase] = None
            if len(entries) == n_entries:
                break
    entries_list = list(entries)
    order = rng.permutation(len(entries_list))
    entries_list = [entries_list[i] for i in order]

    lengths = rng.integers(5, 26, size=n_captions)
    words = draw(int(lengths.sum()))
    capital = rng.random(len(words)) < 0.05
    comma = rng.random(len(words)) < 0.08
    stop = rng.random(n_captions) < 0.6
    captions = []
    start = 0
    for c, n in enumerate(lengths):
        out = []
        for k in range(start, start + n):
            w = vocab[words[k]]
            if capital[k] or k == start:
                w = w.capitalize()
            out.append(w + "," if comma[k] and k < start + n - 1 else w)
        captions.append(" ".join(out) + ("." if stop[c] else ""))
        start += n
    return entries_list, captions


def read_lines(path: str) -> list[str]:
    """One part's captions (a part for ``match_all``: module level, so a spawned worker can unpickle it)."""
    return Path(path).read_text(encoding="utf-8").split("\n")


def cpu_children() -> float:
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return c.ru_utime + c.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--captions", type=int, default=100_000)
    ap.add_argument("--loop-prefix", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    entries, captions = make_data(args.seed, args.entries, args.captions)
    words = sum(len(c.split()) for c in captions)
    print(f"data: {len(entries):,} entries, {len(captions):,} captions ({words / len(captions):.1f} words, "
          f"{sum(map(len, captions)) / len(captions):.0f} chars on average), generated in "
          f"{time.perf_counter() - t0:.1f} s, seed {args.seed}")

    c0 = time.process_time()
    matcher = Matcher(entries)
    build = time.process_time() - c0
    print(f"Matcher(entries): automaton built in {build:.2f} CPU s")

    c0 = time.process_time()
    blob = pickle.dumps(matcher)
    pickle.loads(blob)
    ours_pickle = time.process_time() - c0
    c0 = time.process_time()
    automaton_blob = pickle.dumps(matcher._automaton)
    pickle.loads(automaton_blob)
    automaton_pickle = time.process_time() - c0
    print(f"pickle round trip: Matcher (entries, rebuilt on load) {ours_pickle:.2f} CPU s, {len(blob) / 1e6:.1f} MB; "
          f"pyahocorasick's own pickle of the automaton {automaton_pickle:.2f} CPU s, {len(automaton_blob) / 1e6:.1f} MB")
    del automaton_blob

    c0 = time.process_time()
    automaton = ahocorasick.Automaton()
    for i, entry in enumerate(entries):
        automaton.add_word(f" {entry} ", i)
    automaton.make_automaton()
    direct_build = time.process_time() - c0

    ours = direct_time = float("inf")
    for _ in range(args.rounds):
        direct = offsets = ids = None  # free the last round's results outside the timed parts
        c0 = time.process_time()
        offsets, ids = matcher.match_many(captions)
        ours = min(ours, time.process_time() - c0)
        c0 = time.process_time()
        direct = [sorted({i for _, i in automaton.iter(reference_spacing(text))}) for text in captions]
        direct_time = min(direct_time, time.process_time() - c0)
    per_caption = np.diff(offsets)
    counts = entry_counts(ids, len(entries))
    print(f"matches per caption: mean {per_caption.mean():.2f}, median {int(np.median(per_caption))}, "
          f"none {np.mean(per_caption == 0):.1%}; entries matched at least once: {np.count_nonzero(counts):,}")

    ours_lists = [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(captions))]
    if ours_lists != direct:
        bad = next(i for i in range(len(captions)) if ours_lists[i] != direct[i])
        raise AssertionError(f"caption {bad} {captions[bad]!r}: ours {ours_lists[bad]} != direct {direct[bad]}")

    prefix = captions[: args.loop_prefix]
    c0 = time.process_time()
    loop = [reference_substr_matching(text, entries) for text in prefix]
    loop_time = time.process_time() - c0
    if ours_lists[: len(prefix)] != loop:
        bad = next(i for i in range(len(prefix)) if ours_lists[i] != loop[i])
        raise AssertionError(f"caption {bad} {captions[bad]!r}: ours {ours_lists[bad]} != reference {loop[bad]}")
    print("matches identical: ours == pyahocorasick direct on all captions, == reference loop on the prefix")

    with tempfile.TemporaryDirectory(prefix="vldata-metaclip-") as tmp:
        n_parts = 10
        step = -(-len(captions) // n_parts)
        parts = []
        for p in range(n_parts):
            path = os.path.join(tmp, f"part{p}.txt")
            Path(path).write_text("\n".join(captions[p * step:(p + 1) * step]), encoding="utf-8")
            parts.append(functools.partial(read_lines, path))
        walls = {}
        for _ in range(args.rounds):
            for workers in (1, 2):
                t0, k0 = time.perf_counter(), time.process_time() + cpu_children()
                results = match_all(parts, entries, workers=workers)
                measured = (time.perf_counter() - t0, time.process_time() + cpu_children() - k0)
                walls[workers] = min(walls.get(workers, measured), measured)
                got_offsets = np.concatenate([[0]] + [r[0][1:] + sum(len(q[1]) for q in results[:j])
                                                      for j, r in enumerate(results)])
                if not (np.array_equal(np.concatenate([r[1] for r in results]), ids)
                        and np.array_equal(got_offsets, offsets)):
                    raise AssertionError(f"match_all(workers={workers}) differs from match_many")

    n = len(captions)
    rows = [
        ("ours: Matcher.match_many", n, ours, f"{build:.2f}"),
        ("pyahocorasick direct", n, direct_time, f"{direct_build:.2f}"),
        (f"reference loop (first {len(prefix)} captions)", len(prefix), loop_time, "-"),
    ]
    print()
    print(f"(1), (2): least CPU of {args.rounds} rounds; match_all: least wall of {args.rounds}")
    print("| method | captions | CPU s | captions/CPU-s | build CPU s |")
    print("|---|---:|---:|---:|---:|")
    for name, count, seconds, built in rows:
        print(f"| {name} | {count:,} | {seconds:.2f} | {count / seconds:,.0f} | {built} |")
    for workers, (wall, cpu) in walls.items():
        print(f"| match_all, workers={workers} (wall, incl. start and build) | {n:,} | {cpu:.2f} (all processes) | "
              f"{n / wall:,.0f} per wall-s | - |")
    print()
    loop_rate = len(prefix) / loop_time
    print(f"ours vs reference loop: {n / ours / loop_rate:,.0f}x (the loop ran on {len(prefix)} captions only; "
          f"extrapolated it would take {n / loop_rate / 3600:.1f} CPU h for all {n:,})")
    print(f"ours vs pyahocorasick direct: {direct_time / ours:.2f}x")
    print(f"match_all workers=2 vs workers=1 (wall): {walls[1][0] / walls[2][0]:.2f}x; os.cpu_count()={os.cpu_count()}")


if __name__ == "__main__":
    main()
