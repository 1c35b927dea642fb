"""What the store takes and gives back: plain frozen records, no SQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np


class ChangeKind(StrEnum):
    enroll = "enroll"
    delete_subject = "delete_subject"
    delete_template = "delete_template"


@dataclass(frozen=True, eq=False)
class NewTemplate:
    embedding: np.ndarray  # (d,) float32
    quality: float | None = None
    image_sha256: str | None = None


@dataclass(frozen=True)
class TemplateRecord:
    id: int
    subject_id: str
    model_id: str
    quality: float | None
    image_sha256: str | None
    created_at: datetime


@dataclass(frozen=True)
class Subject:
    subject_id: str
    display_name: str | None
    metadata: dict[str, Any]
    created_at: datetime
    template_count: int


@dataclass(frozen=True)
class SubjectDetail:
    subject: Subject
    templates: tuple[TemplateRecord, ...]


@dataclass(frozen=True)
class SubjectPage:
    subjects: tuple[Subject, ...]
    total: int  # subjects in the whole gallery, not on this page
    limit: int
    offset: int


@dataclass(frozen=True)
class Change:
    seq: int
    kind: ChangeKind
    subject_id: str
    template_id: int | None


@dataclass(frozen=True)
class WriteResult:
    """What one committed write did, for the replica that made it."""

    template_ids: tuple[int, ...]  # added (enroll) or removed (deletes)
    seq: int  # the last change seq this write appended
    previous_seq: int  # the highest seq in the log just before this write


@dataclass(frozen=True)
class Counts:
    subjects: int
    templates: int
    seq: int  # highest change seq, 0 for an empty log


@dataclass(frozen=True, eq=False)
class EmbeddingChunk:
    ids: np.ndarray  # (n,) int64 template ids
    subject_ids: list[str]
    vectors: np.ndarray  # (n, d) float32


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The templates as of change `seq`, streamed in chunks ordered by subject, then id."""

    seq: int
    chunks: Iterator[EmbeddingChunk] = field(repr=False)
