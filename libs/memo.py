"""Values derived from immutable objects, found again by identity.

A decision's candidates are tuples of frozen values that the embedded shape passes from one
service to the next unchanged while the catalog stays the same: what is derived from them
(the scoring candidates, their grouping per model, their feature columns) is kept by the
identity of the tuple, so a decision neither rebuilds it nor hashes 50 candidates to find
it. An entry holds its key, so the id cannot be reused by another object while cached.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ByIdentity(Generic[K, V]):
    """At most ``size`` values by the identity of their key (the oldest entry goes first).

    Only for keys that never change (tuples of frozen values): a mutated key would still
    find the value derived from its old content."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: dict[int, tuple[K, V]] = {}

    def get(self, key: K) -> V | None:
        entry = self._entries.get(id(key))
        if entry is not None and entry[0] is key:
            return entry[1]
        return None

    def put(self, key: K, value: V) -> None:
        entries = self._entries
        entries.pop(id(key), None)
        entries[id(key)] = (key, value)
        if len(entries) > self._size:
            del entries[next(iter(entries))]

    def __len__(self) -> int:
        return len(self._entries)
