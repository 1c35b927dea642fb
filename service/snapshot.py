"""A replica's HNSW index on disk, so a restart reads the graph back instead of building it.

Building an HNSW graph costs O(n log n): 19 minutes for 10^6 templates on one core
(bench/gallery_scale.py), while reading it back is bounded by the disk. The store stays the
truth: a snapshot records the store's creation time, the change seq it reflects and the change
found at that seq, and is used only when the store still has that very change there (not a
reset or another database); the gallery then replays the change log after it, as it does for
other replicas' writes.

Layout: DIRECTORY/snapshot-SEQ/ with both indexes, the template -> subject map and a
manifest written last. A folder without a manifest is an interrupted write and is ignored;
writing goes to a temporary folder renamed into place, so a crash leaves either the previous
snapshot or the new one, never a mixture.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from service.index import VectorIndex
from service.store import Change

log = logging.getLogger(__name__)

FORMAT = "facemargin-index-snapshot-1"
MANIFEST = "manifest.json"
PREFIX = "snapshot-"


@dataclass(frozen=True)
class Manifest:
    format: str
    model_id: str
    embedding_dim: int
    store_created_at: str
    seq: int
    # The change at `seq` as the store had it: what ties the snapshot to this store.
    change: dict | None
    templates: int


@dataclass
class Snapshot:
    manifest: Manifest
    templates: VectorIndex
    means: VectorIndex
    owner: np.ndarray  # template id -> subject code (int32, -1 for none)
    subject_ids: list[str | None]  # code -> subject id; None for a free code


def change_record(change: Change | None) -> dict | None:
    if change is None:
        return None
    return {**asdict(change), "kind": str(change.kind)}


def stage(directory: Path, snapshot: Snapshot) -> Path:
    """Write `snapshot`'s files into a new hidden folder in `directory` and return it; `publish`
    makes it durable and visible. Only this step reads the indexes, so only it needs them held
    still: it writes to the page cache, and the slow part (fsync) comes after."""
    directory.mkdir(parents=True, exist_ok=True)
    # Unique even between containers sharing a volume (each may be pid 1).
    partial = directory / f".partial-{uuid.uuid4().hex}"
    partial.mkdir()
    try:
        snapshot.templates.save(partial / "templates.faiss")
        snapshot.means.save(partial / "means.faiss")
        np.save(partial / "owner.npy", snapshot.owner)
        (partial / "subjects.json").write_text(json.dumps(snapshot.subject_ids))
        (partial / MANIFEST).write_text(json.dumps(asdict(snapshot.manifest)))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return partial


def publish(partial: Path, seq: int) -> Path:
    """Make a staged snapshot durable, rename it to DIRECTORY/snapshot-SEQ beside it and
    remove the older ones (and any interrupted writes)."""
    directory = partial.parent
    final = directory / f"{PREFIX}{seq}"
    try:
        for file in partial.iterdir():
            with file.open("rb") as f:
                os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _fsync_dir(directory)
    for other in directory.iterdir():
        if other != final and (other.name.startswith(PREFIX) or other.name.startswith(".partial-")):
            shutil.rmtree(other, ignore_errors=True)
    return final


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def newest(directory: Path) -> Path | None:
    """The complete snapshot with the highest seq, if any."""
    if not directory.is_dir():
        return None
    found = []
    for folder in directory.iterdir():
        suffix = folder.name.removeprefix(PREFIX)
        if folder.name.startswith(PREFIX) and suffix.isdigit() and (folder / MANIFEST).is_file():
            found.append((int(suffix), folder))
    return max(found)[1] if found else None


def read(folder: Path, templates: VectorIndex, means: VectorIndex) -> Snapshot:
    """Load the snapshot in `folder` into the two (empty, HNSW) indexes given. Raises
    ValueError, OSError or faiss's RuntimeError when it is damaged or incomplete."""
    raw = json.loads((folder / MANIFEST).read_text())
    manifest = Manifest(**raw)
    if manifest.format != FORMAT:
        raise ValueError(f"{folder}: format {manifest.format!r}, expected {FORMAT!r}")
    templates.load(folder / "templates.faiss")
    means.load(folder / "means.faiss")
    owner = np.load(folder / "owner.npy", allow_pickle=False)
    subject_ids = json.loads((folder / "subjects.json").read_text())
    if owner.dtype != np.int32 or owner.ndim != 1 or not isinstance(subject_ids, list):
        raise ValueError(f"{folder}: the subject map is damaged")
    indexed = np.flatnonzero(owner >= 0)
    if len(indexed) != manifest.templates or len(templates) != manifest.templates:
        raise ValueError(
            f"{folder}: holds {len(templates)} templates, expected {manifest.templates}"
        )
    if not np.array_equal(np.sort(templates.ids()), indexed):
        raise ValueError(f"{folder}: the index and the subject map disagree")
    codes = np.unique(owner[indexed])
    if codes.size and (codes[-1] >= len(subject_ids) or any(subject_ids[c] is None for c in codes)):
        raise ValueError(f"{folder}: a template belongs to an unknown subject")
    if not np.array_equal(np.sort(means.ids()), codes.astype(np.int64)):
        raise ValueError(f"{folder}: the subject means do not match the subjects")
    return Snapshot(manifest, templates, means, owner, subject_ids)
