"""Pairs protocols: the real CFP protocol files, a hand-made CFP tree, plain pairs lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA
from training.protocols import (
    PairsProtocol,
    read_cfp,
    read_pairs_list,
    stratified_folds,
    write_pairs_list,
)

CFP = DATA / "val" / "cfp"


@pytest.fixture(scope="module")
def cfp_root() -> Path:
    if not (CFP / "Protocol" / "Split").is_dir():
        pytest.skip(f"CFP protocol not found at {CFP}")
    return CFP


# --- the real CFP ------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["FF", "fp"])
def test_real_cfp_protocol(cfp_root, split):
    protocol = read_cfp(cfp_root, split)
    assert protocol.name == f"cfp-{split.lower()}"
    assert len(protocol) == 7000
    assert protocol.same.sum() == 3500
    assert np.array_equal(np.bincount(protocol.fold), [700] * 10)
    for k in range(10):
        assert protocol.same[protocol.fold == k].sum() == 350
    for path in protocol.images:
        assert (cfp_root / path).is_file(), path
    assert all(p.split("/")[3] == "frontal" for p in protocol.left)
    pose = "frontal" if split.upper() == "FF" else "profile"
    assert all(p.split("/")[3] == pose for p in protocol.right)
    person = np.array(
        [
            a.split("/")[2] == b.split("/")[2]
            for a, b in zip(protocol.left, protocol.right, strict=True)
        ]
    )
    assert np.array_equal(person, protocol.same)
    assert protocol.left[0].startswith("Data/Images/")


# --- a hand-made CFP tree ----------------------------------------------------------------


def make_cfp(root: Path) -> Path:
    """Two people; fold 01 and 10 (to check numeric fold order); CRLF and trailing spaces."""
    protocol = root / "Protocol"
    frontal = [
        f"{i} ../Data/Images/00{1 + (i - 1) // 2}/frontal/0{1 + (i - 1) % 2}.jpg"
        for i in range(1, 5)
    ]
    profile = [f"{i} ../Data/Images/00{i}/profile/01.jpg  " for i in range(1, 3)]
    (protocol / "Split" / "FP" / "10").mkdir(parents=True)
    (protocol / "Split" / "FP" / "01").mkdir(parents=True)
    (protocol / "Split" / "FP" / "notes").mkdir(parents=True)  # not a fold: ignored
    (protocol / "Pair_list_F.txt").write_bytes(("\r\n".join(frontal) + "\r\n\r\n").encode())
    (protocol / "Pair_list_P.txt").write_text("\n".join(profile) + "\n")
    (protocol / "Split" / "FP" / "01" / "same.txt").write_text("1,1\n3, 2 \n")
    (protocol / "Split" / "FP" / "01" / "diff.txt").write_text("1,2\n")
    (protocol / "Split" / "FP" / "10" / "same.txt").write_text("2,1\r\n")
    (protocol / "Split" / "FP" / "10" / "diff.txt").write_text("4,1\r\n")
    return root


def test_read_cfp_normalises_paths_and_orders_folds(tmp_path):
    protocol = read_cfp(make_cfp(tmp_path), "FP")
    assert protocol.left == (
        "Data/Images/001/frontal/01.jpg",
        "Data/Images/002/frontal/01.jpg",
        "Data/Images/001/frontal/01.jpg",
        "Data/Images/001/frontal/02.jpg",
        "Data/Images/002/frontal/02.jpg",
    )
    assert protocol.right == (
        "Data/Images/001/profile/01.jpg",
        "Data/Images/002/profile/01.jpg",
        "Data/Images/002/profile/01.jpg",
        "Data/Images/001/profile/01.jpg",
        "Data/Images/001/profile/01.jpg",
    )
    assert protocol.same.tolist() == [True, True, False, True, False]
    assert protocol.fold.tolist() == [0, 0, 0, 1, 1]
    assert protocol.images[0] == "Data/Images/001/frontal/01.jpg"
    assert len(protocol.images) == 6


def test_read_cfp_errors(tmp_path):
    root = make_cfp(tmp_path)
    with pytest.raises(ValueError, match="split"):
        read_cfp(root, "PP")
    (root / "Protocol" / "Split" / "FP" / "10" / "diff.txt").write_text("4,1\n9,1\n")
    with pytest.raises(ValueError, match=r"diff.txt:2: pair 9,1"):
        read_cfp(root, "FP")
    (root / "Protocol" / "Split" / "FP" / "10" / "diff.txt").write_text("4;1\n")
    with pytest.raises(ValueError, match=r"diff.txt:1: expected 'I,J'"):
        read_cfp(root, "FP")


# --- plain pairs lists -------------------------------------------------------------------


def test_pairs_list_parses_comments_labels_and_folds(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_bytes(
        b"\xef\xbb\xbf# my pairs\r\n"
        b"\r\n"
        b"alice/1.jpg alice/2.jpg 1 0\r\n"
        b"  alice/1.jpg   bob\\1.jpg  DIFF 1   # trailing comment\r\n"
        b"./bob/a#1.jpg bob/2.jpg same 1\n"
        b"alice/1.jpg bob/2.jpg 0 0\n"
    )
    protocol = read_pairs_list(path)
    assert protocol.name == "pairs"
    assert protocol.left == ("alice/1.jpg", "alice/1.jpg", "bob/a#1.jpg", "alice/1.jpg")
    assert protocol.right == ("alice/2.jpg", "bob/1.jpg", "bob/2.jpg", "bob/2.jpg")
    assert protocol.same.tolist() == [True, False, True, False]
    assert protocol.fold.tolist() == [0, 1, 1, 0]
    assert read_pairs_list(path, name="x").name == "x"


def test_pairs_list_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    n = 37
    original = PairsProtocol(
        "round-trip",
        tuple(f"id{rng.integers(9)}/{i}.jpg" for i in range(n)),
        tuple(f"id{rng.integers(9)}/{i}.png" for i in range(n)),
        rng.random(n) < 0.5,
        rng.integers(0, 10, n),
    )
    path = write_pairs_list(original, tmp_path / "out.txt")
    back = read_pairs_list(path, name="round-trip")
    assert back.name == original.name
    assert back.left == original.left and back.right == original.right
    assert np.array_equal(back.same, original.same)
    assert np.array_equal(back.fold, original.fold)
    assert path.read_text().startswith("#")


def test_pairs_list_without_folds_gets_ten_stratified_folds(tmp_path):
    lines = [f"a/{i}.jpg b/{i}.jpg {int(i % 3 == 0)}" for i in range(95)]
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    protocol = read_pairs_list(path)
    n_same = int(protocol.same.sum())  # 32 same, 63 different
    assert n_same == 32
    assert set(protocol.fold.tolist()) == set(range(10))
    per_fold_same = np.bincount(protocol.fold[protocol.same], minlength=10)
    per_fold_diff = np.bincount(protocol.fold[~protocol.same], minlength=10)
    assert per_fold_same.max() - per_fold_same.min() <= 1 and per_fold_same.sum() == 32
    assert per_fold_diff.max() - per_fold_diff.min() <= 1 and per_fold_diff.sum() == 63
    # Contiguous chunks in file order, within each label.
    assert np.all(np.diff(protocol.fold[protocol.same]) >= 0)
    assert np.all(np.diff(protocol.fold[~protocol.same]) >= 0)
    # Deterministic.
    assert np.array_equal(read_pairs_list(path).fold, protocol.fold)
    assert stratified_folds(np.array([True, False, True]), 10).tolist() == [0, 0, 5]


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("a.jpg b.jpg 1\na.jpg b.jpg\n", 2, "expected 'PATH1 PATH2 LABEL"),
        ("# c\n\na.jpg b.jpg yes\n", 3, "label must be"),
        ("a.jpg b.jpg 1 0\na.jpg c.jpg 0 -1\n", 2, "FOLD must be"),
        ("a.jpg b.jpg 1 0\na.jpg c.jpg 0\n", 2, "every pair has a FOLD"),
        ("a.jpg b.jpg 1 0 extra\n", 1, "5 fields"),
        ("/abs/a.jpg b.jpg 1\n", 1, "relative"),
    ],
)
def test_pairs_list_malformed_lines_name_the_line(tmp_path, body, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(body)
    with pytest.raises(ValueError, match=rf"bad\.txt:{line}: .*{message}"):
        read_pairs_list(path)


def test_pairs_list_needs_pairs_and_writable_paths(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no pairs"):
        read_pairs_list(empty)
    spaced = PairsProtocol("s", ("a b.jpg",), ("c.jpg",), np.array([True]), np.array([0]))
    with pytest.raises(ValueError, match="cannot be written"):
        write_pairs_list(spaced, tmp_path / "s.txt")


def test_protocol_validates_and_is_read_only():
    with pytest.raises(ValueError, match="length"):
        PairsProtocol("x", ("a",), ("b", "c"), np.array([True]), np.array([0]))
    with pytest.raises(ValueError, match="non-negative"):
        PairsProtocol("x", ("a",), ("b",), np.array([True]), np.array([-1]))
    protocol = PairsProtocol("x", ["a"], ["b"], np.array([1]), np.array([0]))
    assert protocol.same.dtype == bool and protocol.left == ("a",)
    with pytest.raises(ValueError):
        protocol.same[0] = False
