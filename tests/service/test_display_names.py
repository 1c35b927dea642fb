"""Display names cached in front of the store: asked once, forgotten on every write this
replica applies (its own or another replica's), and never cached from a read that raced a
write."""

from __future__ import annotations

import numpy as np

from service.gallery import Gallery
from service.gallery.names import DisplayNames
from tests.service.test_gallery import DIM, MODEL, as_templates, unit


def test_names_are_fetched_once_and_forgotten_on_a_write():
    asked: list[list[str]] = []

    def fetch(ids):
        asked.append(list(ids))
        return {s: s.upper() for s in ids if s != "gone"}

    names = DisplayNames(fetch)
    assert names.get(["a", "b", "gone"]) == {"a": "A", "b": "B"}
    assert names.get(["a", "b"]) == {"a": "A", "b": "B"}
    assert asked == [["a", "b", "gone"]]
    names.forget()
    names.get(["a"])
    assert asked[-1] == ["a"]


def test_a_read_that_raced_a_write_is_answered_but_not_cached():
    store = {"a": "old"}
    races = [True]

    def fetch(ids):
        answer = {s: store[s] for s in ids}
        if races.pop() if races else False:
            store["a"] = "new"  # a rename commits while this read is in flight...
            names.forget()  # ...and its writer forgets the cache
        return answer

    names = DisplayNames(fetch)
    assert names.get(["a"]) == {"a": "old"}  # what the store said when asked
    assert names.get(["a"]) == {"a": "new"}  # asked again, not the stale "old" from a cache


def test_renames_reach_identify_on_this_replica_and_the_other(tmp_path):
    url = f"sqlite:///{tmp_path / 'gallery.db'}"
    rng = np.random.default_rng(0)
    vectors = unit(rng, 1)
    with Gallery.open(url, MODEL, DIM) as one, Gallery.open(url, MODEL, DIM) as other:
        one.enroll("alice", as_templates(vectors), display_name="Alice")
        other.catch_up()
        assert one.display_names(["alice"]) == {"alice": "Alice"}
        assert other.display_names(["alice"]) == {"alice": "Alice"}  # now cached there too

        one.enroll("alice", as_templates(unit(rng, 1)), display_name="Alice Liddell")
        assert one.display_names(["alice"]) == {"alice": "Alice Liddell"}  # own write
        assert other.display_names(["alice"]) == {"alice": "Alice"}  # not replayed yet
        other.catch_up()
        assert other.display_names(["alice"]) == {"alice": "Alice Liddell"}

        one.delete_subject("alice")
        assert one.display_names(["alice"]) == {}
        other.catch_up()
        assert other.display_names(["alice"]) == {}
