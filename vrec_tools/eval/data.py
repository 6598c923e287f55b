"""H&M data for offline evaluation: items, events (as numpy arrays) and the dev split.

``load_items`` / ``load_events`` read the files described in ``/work/shared/data/hm/README.txt``
(article ids stay 10-digit strings). ``Events`` keeps one numpy array per column in replay order
``(t_dat, src_row)``, with customers and articles as integer codes into ``users`` / ``items``
(``items`` is the catalogue order of items.csv, so code ``i`` is row ``i`` of the catalogue's
embedding matrix). ``dev_split`` cuts the log at a date into a training history and the set of
articles each customer bought in the following days.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_HM_DIR",
    "DevSplit",
    "Events",
    "Items",
    "day_number",
    "day_string",
    "dev_split",
    "load_events",
    "load_hm",
    "load_items",
]

DEFAULT_HM_DIR = Path("/work/shared/data/hm")
DEV_CUTOFF = "2020-09-17"
DEV_END = "2020-09-19"


def day_number(day: str | Sequence[str] | np.ndarray) -> int | np.ndarray:
    """``"YYYY-MM-DD"`` -> days since 1970-01-01 (int; int32 array for a sequence)."""
    if isinstance(day, str):
        return int(np.datetime64(day, "D").astype(np.int64))
    return np.asarray(day, dtype="datetime64[D]").astype(np.int32)


def day_string(day: int) -> str:
    return str(np.datetime64(int(day), "D"))


@dataclass(frozen=True)
class Items:
    """The catalogue: ``article_id[i]`` (str), ``product_code[i]`` (int), the raw rows."""

    root: Path
    article_id: np.ndarray  # str (10 digits)
    product_code: np.ndarray  # int64
    product_type: np.ndarray  # str
    image_path: np.ndarray  # str, relative to root
    rows: list[dict[str, str]] = field(repr=False)

    def __len__(self) -> int:
        return len(self.article_id)

    def index(self) -> dict[str, int]:
        """article_id -> catalogue row."""
        return {a: i for i, a in enumerate(self.article_id.tolist())}

    def image_paths(self) -> list[Path]:
        return [self.root / p for p in self.image_path.tolist()]


def load_items(path: str | Path = DEFAULT_HM_DIR) -> Items:
    """Read ``items.csv`` (``path`` may be the file or its folder)."""
    path = Path(path)
    csv_path = path / "items.csv" if path.is_dir() else path
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return Items(
        root=csv_path.parent,
        article_id=np.array([r["article_id"] for r in rows], dtype=str),
        product_code=np.array([int(r["product_code"]) for r in rows], dtype=np.int64),
        product_type=np.array([r.get("product_type_name", "") for r in rows], dtype=str),
        image_path=np.array([r.get("image_path", "") for r in rows], dtype=str),
        rows=rows,
    )


@dataclass(frozen=True)
class Events:
    """Purchase events as column arrays, sorted by ``(day, src_row)``.

    ``user``/``item`` are int32 codes into ``users`` (customer ids) and ``items`` (article ids);
    ``day`` is days since 1970-01-01. Slicing with :meth:`select` keeps both vocabularies.
    """

    day: np.ndarray  # int32
    user: np.ndarray  # int32 -> users
    item: np.ndarray  # int32 -> items
    price: np.ndarray  # float32
    channel: np.ndarray  # int8
    src_row: np.ndarray  # int64
    users: np.ndarray  # str customer ids
    items: np.ndarray  # str article ids

    def __len__(self) -> int:
        return len(self.day)

    def select(self, mask: np.ndarray) -> Events:
        return Events(
            self.day[mask],
            self.user[mask],
            self.item[mask],
            self.price[mask],
            self.channel[mask],
            self.src_row[mask],
            self.users,
            self.items,
        )

    def item_index(self) -> dict[str, int]:
        return {a: i for i, a in enumerate(self.items.tolist())}

    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.users.tolist())}

    def rows(self) -> Iterator[tuple[str, str, str]]:
        """``(t_dat, customer_id, article_id)`` in replay order."""
        for d, u, i in zip(self.day.tolist(), self.user.tolist(), self.item.tolist()):
            yield day_string(d), str(self.users[u]), str(self.items[i])

    @classmethod
    def from_records(
        cls,
        records: Sequence[tuple[str, str, str] | tuple[str, str, str, int]],
        items: Sequence[str] | np.ndarray | None = None,
    ) -> Events:
        """Events from ``(t_dat, customer_id, article_id[, sales_channel_id])`` tuples.

        ``src_row`` is the position in ``records``; the channel defaults to 0, the price is 0.

        ``items`` fixes the article vocabulary (e.g. the catalogue); articles not in it are
        appended. Handy for tests and for logs that are not the H&M CSV.
        """
        n = len(records)
        return cls._build(
            days=[r[0] for r in records],
            customers=[r[1] for r in records],
            articles=[r[2] for r in records],
            price=np.zeros(n, dtype=np.float32),
            channel=np.array([r[3] if len(r) > 3 else 0 for r in records], dtype=np.int8),
            src_row=np.arange(n, dtype=np.int64),
            items=items,
        )

    @classmethod
    def _build(
        cls,
        days: Sequence[str],
        customers: Sequence[str],
        articles: Sequence[str],
        price: np.ndarray,
        channel: np.ndarray,
        src_row: np.ndarray,
        items: Sequence[str] | np.ndarray | None,
    ) -> Events:
        vocab: list[str] = [str(a) for a in items] if items is not None else []
        index = {a: i for i, a in enumerate(vocab)}
        for a in articles:
            if a not in index:
                index[a] = len(vocab)
                vocab.append(a)
        item = np.fromiter((index[a] for a in articles), dtype=np.int32, count=len(articles))
        users, user = np.unique(np.asarray(customers, dtype=str), return_inverse=True)
        day = day_number(list(days)) if len(days) else np.zeros(0, dtype=np.int32)
        order = np.lexsort((src_row, day))
        return cls(
            day=np.asarray(day, dtype=np.int32)[order],
            user=user.astype(np.int32).reshape(-1)[order],
            item=item[order],
            price=np.asarray(price, dtype=np.float32)[order],
            channel=np.asarray(channel, dtype=np.int8)[order],
            src_row=np.asarray(src_row, dtype=np.int64)[order],
            users=users,
            items=np.array(vocab, dtype=str),
        )


def load_events(
    path: str | Path = DEFAULT_HM_DIR, items: Items | Sequence[str] | None = None
) -> Events:
    """Read ``events.csv`` (``path`` may be the file or its folder) in replay order.

    ``items`` (an :class:`Items` or article ids) fixes the article codes; by default the
    ``items.csv`` next to the events file is used when it exists.
    """
    path = Path(path)
    csv_path = path / "events.csv" if path.is_dir() else path
    if items is None and (csv_path.parent / "items.csv").is_file():
        items = load_items(csv_path.parent)
    vocab = items.article_id if isinstance(items, Items) else items
    days: list[str] = []
    customers: list[str] = []
    articles: list[str] = []
    price: list[float] = []
    channel: list[int] = []
    src_row: list[int] = []
    with csv_path.open(newline="") as fh:
        for n, r in enumerate(csv.DictReader(fh)):
            days.append(r["t_dat"])
            customers.append(r["customer_id"])
            articles.append(r["article_id"])
            price.append(float(r["price"] or 0.0))
            channel.append(int(r["sales_channel_id"] or 0))
            src_row.append(int(r["src_row"]) if r.get("src_row") else n)
    return Events._build(
        days,
        customers,
        articles,
        np.array(price, dtype=np.float32),
        np.array(channel, dtype=np.int8),
        np.array(src_row, dtype=np.int64),
        vocab,
    )


def load_hm(path: str | Path = DEFAULT_HM_DIR) -> tuple[Items, Events]:
    items = load_items(path)
    return items, load_events(path, items)


@dataclass(frozen=True)
class DevSplit:
    """``history`` (events before ``cutoff``), ``truth`` (customer -> articles bought from
    ``cutoff`` to ``end`` inclusive) and ``warm`` (truth customers with history).

    Unpacks as ``history, truth, warm = dev_split(events)``.
    """

    history: Events
    truth: dict[str, set[str]]
    warm: set[str]
    cutoff: str
    end: str

    @property
    def cutoff_day(self) -> int:
        return int(day_number(self.cutoff))

    def __iter__(self) -> Iterator[object]:
        return iter((self.history, self.truth, self.warm))


def dev_split(events: Events, cutoff: str = DEV_CUTOFF, end: str = DEV_END) -> DevSplit:
    """Split at ``cutoff``: history ``t_dat < cutoff``; truth ``cutoff <= t_dat <= end``."""
    c, e = day_number(cutoff), day_number(end)
    if e < c:
        raise ValueError(f"end {end} is before cutoff {cutoff}")
    history = events.select(events.day < c)
    in_truth = (events.day >= c) & (events.day <= e)
    truth: dict[str, set[str]] = {}
    users, items = events.users, events.items
    for u, i in zip(events.user[in_truth].tolist(), events.item[in_truth].tolist()):
        truth.setdefault(str(users[u]), set()).add(str(items[i]))
    hist_users = {str(u) for u in users[np.unique(history.user)]}
    warm = {u for u in truth if u in hist_users}
    return DevSplit(history, truth, warm, cutoff, end)


def catalogue_prices(history: Events, cutoff: str | int | None = None) -> np.ndarray:
    """Catalogue price per item code: the median price paid before the cutoff (0: never sold).

    H&M's articles table has no price; what a shop would list is approximated by what its
    customers paid. ``vrec eval`` sends the same values as the products' ``price``.
    """
    c = cutoff_day_number(history, cutoff)
    mask = history.day < c
    item = history.item[mask].astype(np.int64)
    paid = history.price[mask].astype(np.float64)
    out = np.zeros(len(history.items), dtype=np.float64)
    order = np.lexsort((paid, item))
    item, paid = item[order], paid[order]
    bounds = np.searchsorted(item, np.arange(len(history.items) + 1))
    for i in np.flatnonzero(np.diff(bounds)).tolist():
        out[i] = float(np.median(paid[bounds[i] : bounds[i + 1]]))
    return out


def cutoff_day_number(history: Events, cutoff: str | int | None) -> int:
    """The first day not in the history: ``cutoff`` as a day number (default: after its last
    event)."""
    if cutoff is None:
        return int(history.day.max()) + 1 if len(history) else 0
    if isinstance(cutoff, str):
        return int(day_number(cutoff))
    return int(cutoff)
