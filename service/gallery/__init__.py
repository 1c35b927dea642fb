"""The gallery: enrolled subjects in the store of record, searchable through a FAISS index.

`Gallery` (gallery.py) is the one front the service uses. Behind it, one module per part:

* store.py: the store of record (SQL via SQLAlchemy Core): subjects, templates and the
  change log;
* database.py: how the store reaches its database: SQLite or PostgreSQL engines, the single
  writer, snapshot reads, the Alembic migrations (migrations/);
* index.py: a FAISS index over unit vectors keyed by our int64 ids (exact or HNSW, CPU or GPU);
* state.py: the in-memory cache of the store: the template index, each subject's mean
  template and the template -> subject map;
* ranking.py: subjects ranked for a query, by best template or by mean template;
* replication.py: other replicas' writes replayed from the change log, on a timer;
* snapshot.py: an HNSW index saved to disk so a restart reads it back instead of rebuilding;
* rwlock.py: the readers-writer lock between searches and index changes;
* names.py: display names cached in front of the store, forgotten on every write.
"""

from service.gallery.errors import GalleryError, ModelMismatch, SubjectNotFound, TemplateNotFound
from service.gallery.gallery import Gallery, GalleryStats
from service.gallery.ranking import Candidate, MatchRule
from service.gallery.records import NewTemplate

__all__ = [
    "Candidate",
    "Gallery",
    "GalleryError",
    "GalleryStats",
    "MatchRule",
    "ModelMismatch",
    "NewTemplate",
    "SubjectNotFound",
    "TemplateNotFound",
]
