"""MetaCLIP substring matching (``vldata.tools.metaclip``) against MetaCLIP's reference code, written
out here as it is (a loop over entries), on crafted captions and on generated ones; the entries file
reader on good and hostile files; ``match_all`` in processes against inline."""

from __future__ import annotations

import functools
import json
import pickle

import numpy as np
import pytest
from fakes.metaclip_reference import reference_spacing, reference_substr_matching
from hypothesis import given, settings
from hypothesis import strategies as st

from vldata.errors import StructuralError
from vldata.tools.metaclip import (
    Matcher,
    entry_counts,
    match_all,
    read_entries,
    spacing,
)

ENTRIES = ["dog", "cat", "a dog", "new york", "york city", "new york city", "St. Louis", "St", "Louis",
           "dog", "café", "東京", "🐶", "Dog", "big red dog", "red", "sunny day", "e.g", "?"]
CAPTIONS = [
    "a dog, a cat.",
    "a dog. a cat;",
    "dog;cat",
    "dog:cat",
    "dog?cat!",
    "dog!",
    "`dog`",
    "dog,cat.dog",
    "a\tdog\nand a\rcat",
    "a\r\ndog",
    "Dog",
    "DOG dogs doggy hotdog",
    "category concat cats cat's",
    "I love new york city",
    "new york, city",
    "new york new york",
    "welcome to St. Louis",
    "St.Louis",
    "St Louis",
    "dog dog dog, dog.",
    "",
    "   ",
    "  dog  ",
    "café au lait, Café",
    "cafe",
    "東京 tower",
    "東京タワー",
    "my 🐶 and 🐶🐶",
    "big red dog",
    "a big  red dog",
    "sunny day!",
    "e.g. this",
    "what?",
    "dog\u00a0cat",  # a no-break space is not a space to the reference
]


def test_reference_captions():
    matcher = Matcher(ENTRIES)
    for caption in CAPTIONS:
        assert matcher.match(caption) == reference_substr_matching(caption, ENTRIES), caption
    # a few answers spelled out, so the reference itself is pinned to what we expect of it
    assert matcher.match("a dog, a cat.") == [0, 1, 2, 9]  # "dog" listed twice: both ids
    assert matcher.match("Dog") == [13]  # case-sensitive: "dog" does not match
    assert matcher.match("category concat cats cat's") == []  # whole tokens only
    assert matcher.match("I love new york city") == [3, 4, 5]  # overlapping entries all count
    assert matcher.match("new york, city") == [3]
    assert matcher.match("welcome to St. Louis") == [7, 8]  # "." is padded, so "St. Louis" never matches
    assert matcher.match("dog dog dog, dog.") == [0, 9]  # once per caption
    assert matcher.match("my 🐶 and 🐶🐶") == [12]
    assert matcher.match("东京") == [] and matcher.match("cafe") == []
    assert matcher.match(None) == [] and matcher.match("") == []


def test_match_many_layout():
    matcher = Matcher(ENTRIES)
    texts = [None, "a dog, a cat.", "", "nothing here", "I love new york city"]
    offsets, ids = matcher.match_many(texts)
    assert offsets.dtype == np.int64 and ids.dtype == np.int32 and len(offsets) == len(texts) + 1
    assert offsets[0] == 0 and offsets[-1] == len(ids)
    for i, text in enumerate(texts):
        assert ids[offsets[i]:offsets[i + 1]].tolist() == (reference_substr_matching(text, ENTRIES) if text else [])
    offsets, ids = matcher.match_many([])
    assert offsets.tolist() == [0] and ids.tolist() == []


def test_empty_entries_and_empty_entry():
    assert Matcher([]).match_many(["dog", None])[0].tolist() == [0, 0, 0]
    # an empty entry is " " + "" + " ": the reference matches it wherever the spaced caption has two
    # spaces in a row (so also in "" itself); we follow
    entries = ["", "a"]
    for caption in ["", "a", "a b", "a, b", "a  b"]:
        assert Matcher(entries).match(caption) == reference_substr_matching(caption, entries), caption


def test_matcher_pickles():
    matcher = pickle.loads(pickle.dumps(Matcher(ENTRIES)))
    for caption in CAPTIONS:
        assert matcher.match(caption) == reference_substr_matching(caption, ENTRIES)


TINY = "ab ,.\t"


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(st.text(TINY, max_size=5), min_size=1, max_size=12),
       captions=st.lists(st.text(TINY, max_size=30), max_size=8))
def test_matches_reference_on_generated_text(entries, captions):
    matcher = Matcher(entries)
    for caption in captions:
        assert matcher.match(caption) == reference_substr_matching(caption, entries)
    offsets, ids = matcher.match_many(captions)
    assert [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(captions))] == \
        [reference_substr_matching(c, entries) for c in captions]


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8")) | st.text(",.;:?!` \t\n\rab"))
def test_spacing_is_the_reference(text):
    assert spacing(text) == reference_spacing(text)
    # the reference's replacements do not interact (each inserts only spaces and its own character),
    # so they may as well be done at once, in any order
    table = str.maketrans({**{p: f" {p} " for p in ",.;:?!`"}, "\t": " ", "\n": " ", "\r": " "})
    assert spacing(text) == f" {text.translate(table)} "


def test_read_entries_lines(tmp_path):
    path = tmp_path / "entries.txt"
    path.write_bytes(b"dog\r\n\r\nnew york\n\n  two  spaces \ntab\there\ncr\rinside\n\xc3\xa9t\xc3\xa9\nlast")
    assert read_entries(path) == ["dog", "new york", "  two  spaces ", "tab\there", "cr\rinside", "été", "last"]
    path.write_bytes("\ufeffdog\ncat\n".encode())
    assert read_entries(path) == ["dog", "cat"]


def test_read_entries_json(tmp_path):
    path = tmp_path / "metadata.json"
    path.write_text("\n  " + json.dumps(["dog", "new york", "St. Louis", "東京"]), encoding="utf-8")
    assert read_entries(str(path)) == ["dog", "new york", "St. Louis", "東京"]


@pytest.mark.parametrize("content, words", [
    (b"dog\ncat\n\xff\xfe\n", ["entries.txt", "line 3", "not UTF-8"]),
    (b'["dog",\n "cat",\n "\xe9"]', ["entries.txt", "line 3", "not UTF-8"]),
    (b'["dog", 3, null]', ["entries.txt", "item 1", "int"]),
    (b'[["dog"]]', ["entries.txt", "item 0", "list"]),
    (b'["dog",', ["entries.txt", "invalid JSON", "line 1"]),
    (b"[]", ["entries.txt", "no entries"]),
    (b"", ["entries.txt", "no entries"]),
    (b"\n\r\n\n", ["entries.txt", "no entries"]),
])
def test_read_entries_refuses(tmp_path, content, words):
    path = tmp_path / "entries.txt"
    path.write_bytes(content)
    with pytest.raises(StructuralError) as e:
        read_entries(path)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_read_entries_refuses_missing_and_huge(tmp_path):
    with pytest.raises(StructuralError, match="missing.txt"):
        read_entries(tmp_path / "missing.txt")
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate((1 << 30) + 1)  # sparse: nothing is written, and read_entries must not read it
    with pytest.raises(StructuralError, match="huge.txt.*limit"):
        read_entries(huge)


PARTS_TEXT = [["a dog, a cat.", None, "I love new york city"], [], ["dog dog", "", "St. Louis", "Dog"],
              ["café 東京 🐶"]]


def test_match_all_in_processes_equals_inline():
    parts = [functools.partial(list, texts) for texts in PARTS_TEXT]
    inline = match_all(parts, ENTRIES, workers=1)
    spawned = match_all(parts, ENTRIES, workers=2)
    assert len(inline) == len(spawned) == len(parts)
    for texts, (offsets, ids), (offsets2, ids2) in zip(PARTS_TEXT, inline, spawned):
        assert np.array_equal(offsets, offsets2) and np.array_equal(ids, ids2)
        assert offsets.dtype == offsets2.dtype == np.int64 and ids.dtype == ids2.dtype == np.int32
        assert [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(texts))] == \
            [reference_substr_matching(t, ENTRIES) if t else [] for t in texts]
    assert match_all([], ENTRIES, workers=2) == []


def test_entry_counts():
    texts = ["a dog, a cat.", "dog dog", "Dog", None, "new york city, new york"]
    ids = Matcher(ENTRIES).match_many(texts)[1]
    counts = entry_counts(ids, len(ENTRIES))
    assert counts.dtype == np.int64 and len(counts) == len(ENTRIES)
    expected = np.zeros(len(ENTRIES), dtype=np.int64)
    for text in texts:
        for i in reference_substr_matching(text, ENTRIES) if text else []:
            expected[i] += 1
    assert counts.tolist() == expected.tolist()
    assert counts[0] == counts[9] == 2 and counts[3] == 1  # per caption, not per occurrence
    assert entry_counts(np.array([], dtype=np.int32), 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        entry_counts(np.array([3], dtype=np.int32), 3)
