"""Placement without metadata: rendezvous hashing of block keys over member ids."""

from __future__ import annotations

from typing import Iterable

import xxhash


def score(key: str, member_id: str) -> int:
    """xxh3_64(key + member id): the member with the highest score owns the key."""
    return xxhash.xxh3_64_intdigest((key + member_id).encode())


def rank(key: str, member_ids: Iterable[str]) -> list[str]:
    """Members in preference order for `key`: the owner first, then the fallbacks.

    Adding or removing a member only moves the keys it wins or held; every other key keeps its
    owner, because each member's score for a key does not depend on who else is in the list.
    """
    return sorted(member_ids, key=lambda m: (score(key, m), m), reverse=True)


def owner(key: str, member_ids: Iterable[str]) -> str:
    ranked = rank(key, member_ids)
    if not ranked:
        raise ValueError("no members to place a block on")
    return ranked[0]
