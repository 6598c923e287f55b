"""A/B/n experiments: named variants of the ranking settings, each with a share of the users.

``VREC_VARIANTS`` holds JSON (or the path of a JSON file)::

    {"salt": "2026-12-hybrid-vs-visual",
     "variants": [{"name": "A", "share": 0.5},
                  {"name": "B", "share": 0.5, "set": {"w_visual": 0.0}}]}

A user's variant is a stable hash of the salt and the user id, mapped to ``[0, 1)`` and cut into
consecutive intervals of the shares, in the order given: a change of shares moves only the users
whose point now falls in another interval (the others stay), and a new salt reshuffles everyone.
A variant may change what ranking reads (:data:`RANKING_FIELDS`); the fold (decay, trending,
co-purchase) and the encoder are shared by all users, so they cannot differ per variant.

``shadow`` (an evaluation mode) ranks every user with every variant and publishes each list, so
the variants can be compared on the same users and events (paired); online metrics then follow
each user's own variant.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.settings import RankingSettings

# Settings that only the ranking reads (streams.recommend.RankConfig): Settings.ranking's
RANKING_FIELDS = frozenset(RankingSettings.FIELDS.values())
MAX_VARIANTS = 16
MAX_NAME = 32


@dataclass(frozen=True)
class Variant:
    name: str
    share: float
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    salt: str
    variants: tuple[Variant, ...]
    shadow: bool = False

    def __post_init__(self) -> None:
        if not self.variants or len(self.variants) > MAX_VARIANTS:
            raise ValueError(f"an experiment needs 1..{MAX_VARIANTS} variants")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must differ: {names}")
        for v in self.variants:
            if not v.name or len(v.name.encode()) > MAX_NAME:
                raise ValueError(f"variant name must be 1..{MAX_NAME} bytes: {v.name!r}")
            if not v.share >= 0:
                raise ValueError(f"variant {v.name}: share must be >= 0, got {v.share}")
            bad = sorted(set(v.overrides) - RANKING_FIELDS)
            if bad:
                raise ValueError(
                    f"variant {v.name}: {bad} cannot differ per variant (only the ranking "
                    f"settings can: {sorted(RANKING_FIELDS)})"
                )
        if sum(v.share for v in self.variants) <= 0:
            raise ValueError("the variants' shares add up to 0")
        total = sum(v.share for v in self.variants)
        edges, acc = [], 0.0
        for v in self.variants[:-1]:
            acc += v.share / total
            edges.append(acc)
        object.__setattr__(self, "_edges", tuple(edges))

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    def point(self, user_id: str) -> float:
        """The user's stable point in [0, 1) for this salt."""
        digest = hashlib.blake2b(f"{self.salt}\0{user_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64

    def assign(self, user_id: str) -> str:
        return self.variants[bisect_right(self._edges, self.point(user_id))].name  # type: ignore[attr-defined]

    def split(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        """variant -> the users it ranks (every user in shadow mode), order kept; one hash per
        user."""
        users = list(user_ids)
        if self.shadow:
            return {name: users for name in self.names}
        out: dict[str, list[str]] = {name: [] for name in self.names}
        for u in users:
            out[self.assign(u)].append(u)
        return out

    @classmethod
    def parse(cls, spec: str, *, shadow: bool = False) -> Experiment:
        """From JSON text or the path of a JSON file (ValueError with the reason)."""
        text = spec.strip()
        if not text.startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ValueError(f"VREC_VARIANTS: neither JSON nor a file: {spec[:80]!r}")
            text = path.read_text()
        try:
            doc = json.loads(text)
            variants = tuple(
                Variant(
                    name=str(v["name"]),
                    share=float(v.get("share", 1.0)),
                    overrides=dict(v.get("set", {})),
                )
                for v in doc["variants"]
            )
            return cls(salt=str(doc.get("salt", "")), variants=variants, shadow=shadow)
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"VREC_VARIANTS: invalid experiment: {exc!r}") from None


def from_settings(settings) -> Experiment | None:  # streams.settings.Settings
    section = settings.experiment  # streams.settings.ExperimentSettings
    if not section.variants:
        return None
    return Experiment.parse(section.variants, shadow=section.shadow)


def variant_settings(settings, experiment: Experiment | None) -> dict[str, Any]:
    """variant name -> the Settings it ranks with ("" -> the settings, without an experiment)."""
    if experiment is None:
        return {"": settings}
    out = {}
    for v in experiment.variants:
        # validated like any setting (a wrong type or range fails here, at start-up)
        out[v.name] = type(settings).model_validate({**settings.model_dump(), **v.overrides})
    return out
