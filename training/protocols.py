"""Face verification protocols: lists of image pairs, each labelled same/different person and
assigned to a cross-validation fold. Two readers produce the same `PairsProtocol`:

CFP (Celebrities in Frontal-Profile), as published (`read_cfp`)
    ``ROOT/Protocol/Pair_list_F.txt`` and ``Pair_list_P.txt`` hold lines ``INDEX PATH`` with
    PATH relative to ``Protocol/`` (``../Data/Images/001/frontal/01.jpg``).
    ``ROOT/Protocol/Split/{FF,FP}/<01..10>/{same,diff}.txt`` hold lines ``I,J``: I is a 1-based
    index into Pair_list_F, J into Pair_list_F (FF, frontal-frontal) or Pair_list_P (FP,
    frontal-profile). Folder ``01`` is fold 0, ``02`` fold 1, ... Each fold lists its same
    pairs, then its different pairs. Paths come out relative to ROOT
    (``Data/Images/001/frontal/01.jpg``).

Plain pairs list (`read_pairs_list` / `write_pairs_list`), a format anyone can produce
    UTF-8 text, one pair per line::

        # comment
        PATH1 PATH2 LABEL [FOLD]

    - fields are separated by whitespace, so paths cannot contain whitespace;
    - PATH1, PATH2: image paths relative to the folder holding the list (``/`` or ``\\``
      separators; absolute paths are refused);
    - LABEL: ``1`` or ``same`` for the same person, ``0`` or ``diff`` for different people
      (case-insensitive);
    - FOLD: optional non-negative integer, used as given. Either every pair has a FOLD or none
      has; without FOLDs the pairs get ``n_folds`` (10) folds, stratified: the same pairs, in
      file order, are cut into 10 contiguous chunks whose sizes differ by at most one, and so
      are the different pairs. Every fold thus holds the same share of each label, and pairs
      written next to each other (often the same people) stay in one fold.
    - ``#`` starts a comment (at the start of a line or after whitespace); blank lines are
      ignored; Windows line endings and a UTF-8 byte-order mark are accepted.

    A malformed line raises ``ValueError`` naming the file and line number.

All paths in a `PairsProtocol` are POSIX-style and relative to the protocol's image root, so
the same protocol can point at the original photos or at a mirror of aligned crops.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CFP_SPLITS = ("FF", "FP")
DEFAULT_FOLDS = 10

_LABELS = {"1": True, "same": True, "0": False, "diff": False}
# A '#' opens a comment only at the start of a line or after whitespace, so a path such as
# "a#1.jpg" survives.
_COMMENT = re.compile(r"(^|\s)#.*$")


@dataclass(frozen=True, eq=False)
class PairsProtocol:
    """P image pairs with labels and folds. Arrays are validated and made read-only."""

    name: str
    left: tuple[str, ...]  # POSIX paths relative to the protocol's image root
    right: tuple[str, ...]
    same: np.ndarray  # bool (P,): True where both images show the same person
    fold: np.ndarray  # int (P,): cross-validation fold, 0..K-1 (K = 10 for CFP)

    def __post_init__(self) -> None:
        left, right = tuple(self.left), tuple(self.right)
        same = np.asarray(self.same)
        fold = np.asarray(self.fold)
        n = len(left)
        if len(right) != n or same.shape != (n,) or fold.shape != (n,):
            raise ValueError(
                f"protocol {self.name!r}: left, right, same and fold must all have length {n}; "
                f"got {len(right)}, {same.shape}, {fold.shape}"
            )
        if same.dtype != np.bool_:
            if n and not np.isin(same, (0, 1)).all():
                raise ValueError(f"protocol {self.name!r}: same must be boolean (or 0/1)")
            same = same.astype(bool)
        if n and (not np.issubdtype(fold.dtype, np.integer) or fold.min() < 0):
            raise ValueError(f"protocol {self.name!r}: fold must hold non-negative integers")
        same = same.copy()
        fold = fold.astype(np.int64, copy=True)
        same.setflags(write=False)
        fold.setflags(write=False)
        # frozen dataclass: assign the normalised values through object.__setattr__
        object.__setattr__(self, "left", left)
        object.__setattr__(self, "right", right)
        object.__setattr__(self, "same", same)
        object.__setattr__(self, "fold", fold)

    def __len__(self) -> int:
        return len(self.left)

    @property
    def images(self) -> tuple[str, ...]:
        """Every image the protocol uses, once, sorted (what has to be embedded)."""
        return tuple(sorted(set(self.left) | set(self.right)))


# --- CFP ---------------------------------------------------------------------------------


def _cfp_path(raw: str, where: str) -> str:
    """A Pair_list path (relative to Protocol/) as a POSIX path relative to the CFP root."""
    path = posixpath.normpath(posixpath.join("Protocol", raw.strip().replace("\\", "/")))
    if posixpath.isabs(path) or path == ".." or path.startswith("../"):
        raise ValueError(f"{where}: path {raw.strip()!r} leaves the CFP folder")
    return path


def _read_cfp_list(path: Path) -> dict[int, str]:
    """`INDEX PATH` lines to {index: path relative to the CFP root}."""
    images: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{where}: expected 'INDEX PATH', got {line.strip()!r}")
        index = int(parts[0])
        if index in images:
            raise ValueError(f"{where}: index {index} appears twice")
        images[index] = _cfp_path(parts[1], where)
    return images


def _read_cfp_pairs(path: Path) -> list[tuple[int, int, int]]:
    """`I,J` lines to (I, J, line number)."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"{path}:{number}: expected 'I,J', got {line.strip()!r}")
        pairs.append((int(parts[0]), int(parts[1]), number))
    return pairs


def read_cfp(root: Path, split: str) -> PairsProtocol:
    """The CFP protocol `split` ("FF" or "FP", any case) from the CFP folder `root` (the one
    holding Data/ and Protocol/). Name "cfp-ff" / "cfp-fp"; paths relative to `root`."""
    split = split.upper()
    if split not in CFP_SPLITS:
        raise ValueError(f"CFP split must be one of {CFP_SPLITS}, got {split!r}")
    protocol = Path(root) / "Protocol"
    frontal = _read_cfp_list(protocol / "Pair_list_F.txt")
    second = frontal if split == "FF" else _read_cfp_list(protocol / "Pair_list_P.txt")
    split_dir = protocol / "Split" / split
    # Fold folders are numbered 01..10; order them by number, not by name.
    fold_dirs = sorted(
        (d for d in split_dir.iterdir() if d.is_dir() and d.name.isdigit()),
        key=lambda d: int(d.name),
    )
    if not fold_dirs:
        raise ValueError(f"no numbered fold folders in {split_dir}")
    left: list[str] = []
    right: list[str] = []
    same: list[bool] = []
    fold: list[int] = []
    for k, fold_dir in enumerate(fold_dirs):
        for label, filename in ((True, "same.txt"), (False, "diff.txt")):
            path = fold_dir / filename
            for i, j, number in _read_cfp_pairs(path):
                if i not in frontal or j not in second:
                    raise ValueError(f"{path}:{number}: pair {i},{j} indexes no listed image")
                left.append(frontal[i])
                right.append(second[j])
                same.append(label)
                fold.append(k)
    return PairsProtocol(
        f"cfp-{split.lower()}", tuple(left), tuple(right), np.array(same), np.array(fold)
    )


# --- plain pairs lists -------------------------------------------------------------------


def _list_path(raw: str, where: str) -> str:
    path = posixpath.normpath(raw.replace("\\", "/"))
    if posixpath.isabs(path) or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"{where}: path {raw!r} must be relative to the list's folder")
    return path


def stratified_folds(same: np.ndarray, n_folds: int = DEFAULT_FOLDS) -> np.ndarray:
    """Folds for pairs that have none: each label's pairs, in order, cut into `n_folds`
    contiguous chunks of sizes differing by at most one."""
    if n_folds < 1:
        raise ValueError(f"n_folds must be at least 1, got {n_folds}")
    same = np.asarray(same, dtype=bool)
    fold = np.empty(len(same), dtype=np.int64)
    for label in (True, False):
        members = np.flatnonzero(same == label)
        fold[members] = np.arange(len(members)) * n_folds // max(len(members), 1)
    return fold


def read_pairs_list(
    path: Path, name: str | None = None, n_folds: int = DEFAULT_FOLDS
) -> PairsProtocol:
    """A plain pairs list (format in the module docstring). `name` defaults to the file stem."""
    path = Path(path)
    left: list[str] = []
    right: list[str] = []
    same: list[bool] = []
    folds: list[int] = []
    has_fold: bool | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        fields = _COMMENT.sub("", line).split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) not in (3, 4):
            raise ValueError(
                f"{where}: expected 'PATH1 PATH2 LABEL [FOLD]', got {len(fields)} fields: "
                f"{line.strip()!r}"
            )
        label = _LABELS.get(fields[2].lower())
        if label is None:
            raise ValueError(f"{where}: label must be 1/0 or same/diff, got {fields[2]!r}")
        if has_fold is None:
            has_fold = len(fields) == 4
        elif has_fold != (len(fields) == 4):
            raise ValueError(f"{where}: either every pair has a FOLD or none has")
        if has_fold:
            if not fields[3].isdigit():
                raise ValueError(f"{where}: FOLD must be a non-negative integer, got {fields[3]!r}")
            folds.append(int(fields[3]))
        left.append(_list_path(fields[0], where))
        right.append(_list_path(fields[1], where))
        same.append(label)
    if not left:
        raise ValueError(f"{path}: no pairs")
    same_array = np.array(same, dtype=bool)
    fold = np.array(folds, dtype=np.int64) if has_fold else stratified_folds(same_array, n_folds)
    return PairsProtocol(name or path.stem, tuple(left), tuple(right), same_array, fold)


def write_pairs_list(protocol: PairsProtocol, path: Path) -> Path:
    """Write `protocol` as a plain pairs list with explicit folds (`read_pairs_list` reads it
    back unchanged). Its paths are written as they are: relative to `path`'s folder."""
    path = Path(path)
    lines = [f"# {protocol.name}: {len(protocol)} pairs, PATH1 PATH2 LABEL(1 same, 0 diff) FOLD"]
    for a, b, s, k in zip(protocol.left, protocol.right, protocol.same, protocol.fold, strict=True):
        for p in (a, b):
            if not p or any(c.isspace() for c in p) or p.startswith("#"):
                raise ValueError(f"path {p!r} cannot be written to a pairs list")
        lines.append(f"{a} {b} {int(s)} {int(k)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
