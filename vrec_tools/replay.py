"""Recorded logs in, topics out: read H&M CSV / vrec JSONL logs and send them in event order.

vrec JSONL: one object per line with "kind" = "product" | "view" | "purchase" and the fields of
ProductUpload or Interaction. H&M: items.csv (articles + image_path) and events.csv
(event_type, t_dat, customer_id, article_id, ..., src_row; replayed in (t_dat, src_row) order).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from streams.events import Interaction, ProductUpload, Tick, json_object
from streams.kafka_security import client_kwargs
from streams.settings import Settings


def _day_ts(day: str) -> float:
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()


@contextmanager
def _rows(path: Path, what: str) -> Iterator[Callable[[int], AbstractContextManager[None]]]:
    """Read ``path``; errors of any row (the callable's context, given the line number) and of
    the file itself become a ValueError naming the file and line."""

    @contextmanager
    def at(line: int) -> Iterator[None]:
        try:
            yield
        except KeyError as exc:
            raise ValueError(f"{path}:{line}: {what} without column {exc}") from None
        except (ValueError, TypeError, AttributeError, csv.Error) as exc:
            raise ValueError(f"{path}:{line}: invalid {what}: {_why(exc)}") from None

    try:
        yield at
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: unreadable CSV: {exc}") from None


def _why(exc: BaseException) -> str:
    from streams.deadletters import describe

    return describe(exc)


def read_hm_items(items_csv: Path, limit: int | None = None) -> list[ProductUpload]:
    """H&M articles as product uploads through the catalogue import's ``hm`` column map
    (vrec_tools.catalogue_import); image paths made absolute (relative to the CSV).

    A bad row or file is a ValueError naming the file and line."""
    from vrec_tools.catalogue_import import HM_MAP, read_products

    return read_products(Path(items_csv), HM_MAP, limit=limit)


def read_hm_events(events_csv: Path) -> list[Interaction]:
    """H&M purchases in replay order; event_id is the CSV line number.

    A bad row or file is a ValueError naming the file and line."""
    rows = []
    with open(events_csv, newline="") as f, _rows(events_csv, "event") as at:
        for line, row in enumerate(csv.DictReader(f), start=2):
            with at(line):
                rows.append((_hm_event(row, line), int(row.get("src_row") or 0), line))
    rows.sort(key=lambda r: (r[0].ts, r[1], r[2]))
    return [event for event, _, _ in rows]


def _hm_event(row: dict[str, str], line: int) -> Interaction:
    channel = row.get("sales_channel_id")
    return Interaction(
        event_id=f"hm:{line}",
        user_id=row["customer_id"],
        item_id=row["article_id"],
        ts=_day_ts(row["t_dat"]) + 12 * 3600,
        kind="purchase" if row.get("event_type", "purchase") == "purchase" else "view",
        channel=int(channel) if channel else None,
    )


def read_jsonl(path: Path) -> tuple[list[ProductUpload], list[Interaction]]:
    """Products and events of a vrec JSONL log, events in time order (file order within equal
    times). A bad line or file is a ValueError naming the file and line."""
    products: list[ProductUpload] = []
    events: list[Interaction] = []
    root = Path(path).resolve().parent
    with open(path, encoding="utf-8") as f, _rows(path, "record") as at:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            with at(n):
                record = _jsonl_record(line, root)
            if isinstance(record, ProductUpload):
                products.append(record)
            else:
                events.append(record)
    events.sort(key=lambda e: e.ts)  # stable: file order within equal times
    return products, events


def _jsonl_record(line: str, root: Path) -> ProductUpload | Interaction:
    doc = json_object(line)
    kind = doc.get("kind")
    if kind == "product":
        p = ProductUpload.model_validate(doc)
        if p.image_path and not Path(p.image_path).is_absolute():
            p = p.model_copy(update={"image_path": str(root / p.image_path)})
        return p
    if kind in ("view", "purchase"):
        return Interaction.model_validate(doc)
    raise ValueError(f"unknown kind {str(kind)[:40]!r}")


def read_log(path: Path) -> tuple[list[ProductUpload], list[Interaction]]:
    """Products and events of a recorded log (H&M events.csv or vrec JSONL)."""
    path = Path(path)
    if path.suffix == ".csv":
        return [], read_hm_events(path)
    return read_jsonl(path)


def write_jsonl(path: Path, records: Iterable[ProductUpload | Interaction]) -> None:
    with open(path, "w") as f:
        for r in records:
            doc = r.model_dump(exclude_none=True)
            if isinstance(r, ProductUpload):
                doc["kind"] = "product"
            f.write(json.dumps(doc) + "\n")


@dataclass
class Record:
    key: bytes | None
    value: bytes
    partition: int
    offset: int
    topic: str


class Replayer:
    """Sends products and events to vrec's input topics (kafka-python producer)."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaProducer

        self.settings = settings
        self.producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap,
            linger_ms=5,
            acks="all",
            retries=5,
            **client_kwargs(settings),
        )

    def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.producer.send(self.settings.topics.full(topic), key=key, value=value)

    def send_products(self, products: Iterable[ProductUpload], progress: bool = False) -> int:
        n = 0
        for p in tqdm(list(products), desc="products", unit="item", disable=not progress):
            self.send_raw("products", p.to_bytes(), key=p.item_id.encode())
            n += 1
        self.producer.flush()
        return n

    def send_events(
        self,
        events: Iterable[Interaction],
        speed: float = 0.0,
        progress: bool = False,
        on_sent: Callable[[Interaction], None] | None = None,
    ) -> int:
        """Send in the given order; speed>0 keeps event-time gaps divided by speed."""
        events = list(events)
        start_wall, start_ts, n = time.monotonic(), None, 0
        for e in tqdm(events, desc="events", unit="ev", disable=not progress):
            if speed > 0:
                start_ts = e.ts if start_ts is None else start_ts
                delay = (e.ts - start_ts) / speed - (time.monotonic() - start_wall)
                if delay > 0:
                    self.producer.flush()
                    time.sleep(delay)
            topic = "purchases" if e.kind == "purchase" else "views"
            self.send_raw(topic, e.to_bytes(), key=e.user_id.encode())
            n += 1
            if on_sent is not None:
                on_sent(e)
        self.producer.flush()
        return n

    def send_tick(self, ts: float) -> None:
        """A clock mark: the days before ``ts`` are over (see streams.events.Tick)."""
        self.send_raw("purchases", Tick(ts=ts).to_bytes())
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()


def read_topic(
    settings: Settings,
    topic: str,
    *,
    until: Callable[[list[Record]], bool] | None = None,
    timeout: float = 60.0,
    idle: float | None = None,
    raw_name: bool = False,
) -> list[Record]:
    """Read a topic from the beginning until ``until(records)`` holds, or idle/timeout passes.

    Only committed records are read (aborted transactions of an exactly-once worker are not).
    """
    from kafka import KafkaConsumer, TopicPartition

    name = topic if raw_name else settings.topics.full(topic)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **client_kwargs(settings),
    )
    try:
        parts = None
        deadline = time.monotonic() + timeout
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(name)
            if not parts:
                time.sleep(0.2)
        if not parts:
            return []
        tps = [TopicPartition(name, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Record] = []
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            for tp_records in batch.values():
                for r in tp_records:
                    out.append(Record(r.key, r.value, r.partition, r.offset, r.topic))
            if batch:
                last_new = time.monotonic()
            if until is not None and until(out):
                break
            if idle is not None and time.monotonic() - last_new > idle:
                break
        return out
    finally:
        consumer.close()
