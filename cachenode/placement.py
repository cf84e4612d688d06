"""Placement without metadata: cluster members and rendezvous hashing of block keys over them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import xxhash


@dataclass
class Member:
    """One cache node as loaders and nodes see it; `healthy` is updated by health checks."""

    id: str
    url: str
    healthy: bool = True
    transports: dict[str, str] = field(default_factory=dict)  # name -> address, besides HTTP

    def to_json(self) -> dict:
        return {"id": self.id, "url": self.url, "healthy": self.healthy, "transports": self.transports}

    @classmethod
    def from_json(cls, m: dict) -> "Member":
        return cls(m["id"], m["url"], m["healthy"], dict(m.get("transports") or {}))


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
