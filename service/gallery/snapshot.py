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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from service.gallery.index import VectorIndex
from service.gallery.records import Change
from service.gallery.state import IndexState
from service.gallery.store import Store

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


# -- the gallery's use: one thread at a time (`Gallery.open`, then the sync thread, then
# `Gallery.close` once syncing has stopped).


def stage_state(
    directory: Path, store: Store, state: IndexState, last_seq: int
) -> tuple[Path, Manifest] | None:
    """The state's files written but not yet durable or visible; the caller holds the
    gallery's write mutex (searches go on meanwhile: the mutex alone keeps the index still).
    None when writing failed: a full disk or a lost database must not take the gallery down
    (or keep it from closing), and without a snapshot the next open rebuilds from the store."""
    try:
        change = store.changes_since(last_seq - 1, 1) if last_seq else []
        manifest = Manifest(
            format=FORMAT,
            model_id=store.model_id,
            embedding_dim=store.embedding_dim,
            store_created_at=store.created_at,
            seq=last_seq,
            change=change_record(change[0] if change else None),
            templates=len(state.templates),
        )
        saved = Snapshot(
            manifest, state.templates, state.means, state.owner, state.saved_subject_ids()
        )
        return stage(directory, saved), manifest
    except Exception:
        log.exception("cannot write the index snapshot to %s", directory)
        return None


def publish_staged(staged: tuple[Path, Manifest] | None) -> int | None:
    """Make what `stage_state` wrote durable and visible; needs no lock. The seq published,
    or None when nothing was."""
    if staged is None:
        return None
    partial, manifest = staged
    try:
        folder = publish(partial, manifest.seq)
    except Exception:
        log.exception("cannot write the index snapshot to %s", partial.parent)
        return None
    log.info("index snapshot written: %s (%d templates)", folder, manifest.templates)
    return manifest.seq


def load_state(
    directory: Path, store: Store, new_index: Callable[[], VectorIndex]
) -> tuple[IndexState, int] | None:
    """The state of the newest snapshot in `directory` and its seq, if it matches `store`."""
    folder = newest(directory)
    if folder is None:
        return None
    try:
        loaded = read(folder, new_index(), new_index())
    except (ValueError, OSError, RuntimeError, TypeError, KeyError) as error:
        log.warning("index snapshot %s unusable, rebuilding from the store: %s", folder, error)
        return None
    reason = mismatch(loaded.manifest, store)
    if reason is not None:
        log.warning("index snapshot %s not used, rebuilding from the store: %s", folder, reason)
        return None
    state = IndexState.restored(
        loaded.templates, loaded.means, loaded.owner, loaded.subject_ids, new_index
    )
    log.info(
        "gallery loaded from %s: %d templates of %d subjects up to change %d",
        folder,
        len(state.templates),
        len(state.members),
        loaded.manifest.seq,
    )
    return state, loaded.manifest.seq


def mismatch(manifest: Manifest, store: Store) -> str | None:
    """Why a snapshot does not belong to this store, or None when it does."""
    if (manifest.model_id, manifest.embedding_dim) != (store.model_id, store.embedding_dim):
        return f"made for model {manifest.model_id}, the store holds {store.model_id}"
    if manifest.store_created_at != store.created_at:
        return "made from another store (created at another time)"
    if manifest.seq > store.max_seq():
        return f"reflects change {manifest.seq}, the store ends at {store.max_seq()}"
    if manifest.seq:
        found = store.changes_since(manifest.seq - 1, 1)
        here = change_record(found[0]) if found else None
        if here != manifest.change:
            return f"change {manifest.seq} differs in the store (another or a reset database)"
    return None
