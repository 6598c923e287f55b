"""Why an item is in a list: one reason per recommended item, and the user's item behind it.

Every ranker (hybrid, visual, trending) gives each item a :class:`Reason`, the signal that
contributed most to its score, and, where one exists, the item of the user's own history that
caused it (``because``): the purchase itself for a repurchase, the bought sibling, the co-purchase
seed, the most similar item the user touched. The web API turns both into text; consumers of
the ``recommendations`` topic read them as they are.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """The signal behind a recommended item (its value is what records carry)."""

    REPURCHASE = "repurchase"  # the user bought this item before
    SIBLING = "sibling"  # another colour or size of a product the user bought
    COPURCHASE = "copurchase"  # bought together with one of the user's purchases
    VISUAL = "visual"  # looks like what the user viewed or bought
    TRENDING = "trending"  # popular now

    def __str__(self) -> str:
        return self.value

    @property
    def text(self) -> str:
        """A short human reading of the reason."""
        return _TEXT[self]


_TEXT = {
    Reason.REPURCHASE: "bought before",
    Reason.SIBLING: "same product",
    Reason.COPURCHASE: "bought together",
    Reason.VISUAL: "visually similar",
    Reason.TRENDING: "trending now",
}
