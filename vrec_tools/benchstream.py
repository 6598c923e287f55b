"""`vrec bench stream` and `vrec bench scale`: a live worker under offered loads, at scale.

``vrec bench stream``: the full catalogue is indexed, then synthetic shoppers drawn from the real
purchase log (:func:`synthetic_log`) are sent at fixed offered loads (``--loads``, events/s, paced
in small time slices), then as fast as possible (``--unthrottled-events``). It prints the
event-to-recommendation latency per load (Recommendation.produced_ts - the wall time the event was
sent, over the recommendations that exist: a worker that publishes one list per user per
micro-batch has fewer recommendations than events) and its two hops (to the ingest agent's
forward on user-events, and from it to the list), the drained throughput, the bytes the
worker wrote to its table changelogs per input event, the worker's RSS growth per user and the
rate at which a clock mark re-ranks the users of the days it closes.

``vrec bench scale --users N``: the same generator for N users, sent through the worker in chunks
(with back-pressure on the consumer lag), then the state per user (RSS, users-table changelog)
and the time a worker restarted with SIGTERM takes to publish again. Every fold writes the user's
whole state to the users changelog, so a large N needs disk for events x state size until the
broker compacts it (the run prints the log dir sizes); with the in-memory table store the
worker holds every user's state in RAM and a restart re-reads the changelog.

Figures are printed (and written with ``--json``), never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from streams.events import Interaction
from streams.kafka_security import client_kwargs
from streams.settings import REPO_ROOT, Settings, get_settings, isolated_run

HM = REPO_ROOT.parent / "shared" / "data" / "hm"
CACHE = REPO_ROOT / ".cache" / "embeddings.sqlite"
TABLES = ("users", "trending", "copurchase", "active")
DAY = 86_400.0
# 2020-09-01 00:00 UTC: synthetic event time starts here (the H&M log ends in Sept. 2020)
DEFAULT_START_TS = datetime(2020, 9, 1, tzinfo=timezone.utc).timestamp()
INPUTS = ("views", "purchases", "user_events")
PROBE_USER = "syn-000000"  # the first synthetic user: `vrec bench scale` restarts and asks it


# -- pure helpers ------------------------------------------------------------------------------
Basket = list[tuple[str, int | None]]  # (item_id, sales channel) bought by a customer on a day


def customer_baskets(
    purchases: Iterable[Interaction], catalogue: set[str] | None = None
) -> list[list[Basket]]:
    """Real customers' purchase histories: per customer (sorted by id) their baskets (one per
    day, in time order) of (item_id, channel); items outside ``catalogue`` are left out."""
    days: dict[str, dict[int, Basket]] = {}
    for e in sorted(purchases, key=lambda e: e.ts):  # stable: log order within a time
        if e.kind != "purchase" or (catalogue is not None and e.item_id not in catalogue):
            continue
        day = int(e.ts // DAY)
        days.setdefault(e.user_id, {}).setdefault(day, []).append((e.item_id, e.channel))
    return [[b for _, b in sorted(days[c].items())] for c in sorted(days)]


def _user_steps(
    rng: random.Random, customers: list[list[Basket]], n: int, view_ratio: float
) -> list[tuple[str, str, int | None, float]]:
    """``n`` events (kind, item_id, channel, seconds since the previous event) of one synthetic
    user: the baskets of random real customers, one after the other, each purchase preceded by
    a view of the item with probability ``view_ratio``."""
    steps: list[tuple[str, str, int | None, float]] = []
    while len(steps) < n:
        for basket in customers[rng.randrange(len(customers))]:
            for i, (item, channel) in enumerate(basket):
                # a new basket comes days later, the next item of a basket minutes later
                gap = rng.expovariate(1 / (1.5 * DAY)) if i == 0 else rng.uniform(60, 1800)
                if rng.random() < view_ratio:
                    steps.append(("view", item, None, gap))
                    gap = rng.uniform(30, 900)  # view, then the purchase of the item
                steps.append(("purchase", item, channel, gap))
    return steps[:n]


def synthetic_log(
    purchases: Iterable[Interaction],
    n_users: int,
    events_per_user: int,
    seed: int = 0,
    start_ts: float = DEFAULT_START_TS,
    *,
    days: float = 14.0,
    view_ratio: float = 0.5,
    catalogue: set[str] | None = None,
    first_user: int = 0,
    prefix: str = "syn",
) -> list[Interaction]:
    """A shop's event stream of ``n_users`` synthetic users, ``events_per_user`` events each.

    Each user's items are real customers' purchase sequences (``purchases``: the real log;
    whole baskets of random customers until the user has enough events), with a view of the
    item before a purchase with probability ``view_ratio``. Within a user, events advance as a
    shopper's would (minutes inside a basket, days between baskets); the user's timeline is
    placed at a random offset in ``[start_ts, start_ts + days)`` (squeezed when longer), so the
    stream spans ``days`` days and exercises the trending window and the day buckets. The result
    is sorted by time: users interleave. Users are ``{prefix}-{index:06d}`` for index in
    ``first_user .. first_user + n_users - 1``, each drawn from its own random stream
    (``seed``, index), so a chunk of users is the same whichever call generates it; event ids
    ``{prefix}:{index}:{n}`` are unique.
    """
    customers = customer_baskets(purchases, catalogue)
    if not customers:
        raise ValueError("no purchases of catalogue items to draw users from")
    if n_users < 0 or events_per_user < 1:
        raise ValueError("need n_users >= 0 and events_per_user >= 1")
    span = days * DAY
    rows: list[tuple[float, int, int, str, str, int | None]] = []
    for u in range(first_user, first_user + n_users):
        rng = random.Random(f"{seed}:{u}")
        steps = _user_steps(rng, customers, events_per_user, view_ratio)
        rel = np.cumsum([0.0] + [gap for *_, gap in steps[1:]])
        if rel[-1] > 0.99 * span:
            rel *= 0.99 * span / rel[-1]
        offset = rng.uniform(0.0, span - rel[-1])
        for j, ((kind, item, channel, _), t) in enumerate(zip(steps, rel)):
            rows.append((round(start_ts + offset + float(t), 3), u, j, kind, item, channel))
    rows.sort()
    return [
        Interaction(
            event_id=f"{prefix}:{u}:{j}",
            user_id=f"{prefix}-{u:06d}",
            item_id=item,
            ts=ts,
            kind=kind,
            channel=channel,
        )
        for ts, u, j, kind, item, channel in rows
    ]


def split_counts(events: Sequence[Any], sizes: Sequence[int]) -> list[Sequence[Any]]:
    """Consecutive slices of ``events`` of the given sizes (the last ones short if it runs out)."""
    out, start = [], 0
    for n in sizes:
        out.append(events[start : start + n])
        start += n
    return out


def due(rate: float, elapsed: float, total: int) -> int:
    """How many events a sender pacing ``rate`` events/s should have sent after ``elapsed`` s."""
    return min(total, int(rate * max(0.0, elapsed)) + 1)


def next_day_start(ts: float, bucket_s: float = DAY) -> float:
    """The start of the bucket (day) after the one ``ts`` falls in."""
    return (math.floor(ts / bucket_s) + 1) * bucket_s


def parse_vmrss(status_text: str) -> int:
    """VmRSS in bytes from the text of /proc/<pid>/status."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            assert unit.lower() == "kb", unit
            return int(value) * 1024
    raise ValueError("no VmRSS line")


def ms_percentiles(seconds: Sequence[float], qs: Sequence[int] = (50, 99)) -> dict[str, float]:
    """{"p50": ms, ...} of latencies in seconds; empty when there are none."""
    if len(seconds) == 0:
        return {}
    arr = np.asarray(seconds, dtype=float) * 1000.0
    return {f"p{q}": round(float(np.percentile(arr, q)), 1) for q in qs}


def first_answers(
    recs: Iterable[tuple[str | None, float, str]], sent_at: dict[str, float]
) -> dict[str, float]:
    """event_id -> produced_ts of the recommendation answering each event in ``sent_at``
    (trigger "event"; the first one if redelivered), in the recommendations' order."""
    out: dict[str, float] = {}
    for event_id, produced_ts, trigger in recs:
        if trigger == "event" and event_id in sent_at and event_id not in out:
            out[event_id] = produced_ts
    return out


def latencies(
    recs: Iterable[tuple[str | None, float, str]], sent_at: dict[str, float]
) -> list[float]:
    """produced_ts - sent wall time of each recommendation answering an event in ``sent_at``
    (:func:`first_answers`)."""
    return [ts - sent_at[e] for e, ts in first_answers(recs, sent_at).items()]


def hop_latencies(
    recs: Iterable[tuple[str | None, float, str]],
    sent_at: dict[str, float],
    forwarded_at: dict[str, float],
) -> tuple[list[float], list[float]]:
    """The two hops of :func:`latencies`, for events with a list and a forward record: sent ->
    forwarded to user-events by the ingest agent, and forwarded -> the list produced."""
    ingest, users = [], []
    for event_id, produced_ts in first_answers(recs, sent_at).items():
        forwarded = forwarded_at.get(event_id)
        if forwarded is not None:
            ingest.append(forwarded - sent_at[event_id])
            users.append(produced_ts - forwarded)
    return ingest, users


# -- broker I/O --------------------------------------------------------------------------------
def _consumer(settings: Settings):
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        **client_kwargs(settings),
    )


def end_offsets(settings: Settings, full_name: str) -> dict:
    """{TopicPartition: end offset} of a topic (full name); {} when it does not exist."""
    from kafka import TopicPartition

    consumer = _consumer(settings)
    try:
        parts = consumer.partitions_for_topic(full_name) or ()
        tps = [TopicPartition(full_name, p) for p in sorted(parts)]
        return consumer.end_offsets(tps) if tps else {}
    finally:
        consumer.close()


def scan_topic(
    settings: Settings,
    full_name: str,
    on_record: Callable[[Any], None],
    *,
    start: dict | None = None,
    timeout: float = 1800.0,
    wait_s: float = 10.0,
) -> int:
    """Feed every record of a topic (full name) from ``start`` (default: the beginning) up to
    its end offsets at the call to ``on_record``; returns how many records were read."""
    from kafka import TopicPartition

    consumer = _consumer(settings)
    try:
        deadline = time.monotonic() + wait_s
        parts = consumer.partitions_for_topic(full_name)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(full_name)
        if not parts:
            return 0
        tps = [TopicPartition(full_name, p) for p in sorted(parts)]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        for tp in tps:
            if start and tp in start:
                consumer.seek(tp, start[tp])
            else:
                consumer.seek_to_beginning(tp)
        todo = {tp for tp in tps if consumer.position(tp) < ends[tp]}
        n, deadline = 0, time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {full_name}: {len(todo)} partitions unfinished")
            for records in consumer.poll(timeout_ms=500, max_records=10_000).values():
                for r in records:
                    on_record(r)
                n += len(records)
            todo = {tp for tp in todo if consumer.position(tp) < ends[tp]}
        return n
    finally:
        consumer.close()


def read_recs(settings: Settings, start: dict | None = None) -> list[tuple[str | None, float, str]]:
    """(event_id, produced_ts, trigger) of the recommendations (from ``start``)."""
    out: list[tuple[str | None, float, str]] = []

    def keep(r) -> None:
        doc = json.loads(r.value)
        out.append((doc.get("event_id"), float(doc["produced_ts"]), doc.get("trigger", "event")))

    scan_topic(settings, settings.topics.full("recommendations"), keep, start=start)
    return out


def read_forwards(settings: Settings) -> dict[str, float]:
    """event_id -> when the ingest agent forwarded it to user-events (the record's timestamp,
    taken when the worker's producer appended it; the first one if redelivered)."""
    out: dict[str, float] = {}

    def keep(r) -> None:
        event_id = json.loads(r.value).get("event_id")
        if event_id is not None and event_id not in out:
            out[event_id] = r.timestamp / 1000.0

    scan_topic(settings, settings.topics.full("user_events"), keep)
    return out


def changelog_name(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


def changelog_size(settings: Settings, table: str) -> dict[str, int]:
    """Records, bytes (len(key) + len(value), every record) and live bytes (the newest record
    per key, deletions dropped: what a compacted changelog keeps) of a table's changelog."""
    live: dict[bytes, int] = {}
    total = 0

    def add(r) -> None:
        nonlocal total
        size = len(r.key or b"") + len(r.value or b"")
        total += size
        if r.value is None:  # tombstone
            live.pop(r.key, None)
        else:
            live[r.key] = size

    n = scan_topic(settings, changelog_name(settings, table), add)
    return {"records": n, "bytes": total, "keys": len(live), "live_bytes": sum(live.values())}


def log_dir_bytes(settings: Settings, full_names: Sequence[str]) -> dict[str, int]:
    """On-disk size of topics from the broker's log dirs (DescribeLogDirs; includes record
    batch headers): the fast estimate when a changelog is too big to read."""
    from kafka import KafkaAdminClient

    wanted = set(full_names)
    out = dict.fromkeys(full_names, 0)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap, **client_kwargs(settings))
    try:
        resp = admin.describe_log_dirs()
        for result in _as_list(resp):
            for log_dir in _get(result, "log_dirs", "results"):
                for topic in _get(log_dir, "topics"):
                    name = _get(topic, "name", "topic")
                    if name in wanted:
                        for part in _get(topic, "partitions"):
                            out[name] += int(_get(part, "partition_size", "size"))
    finally:
        admin.close()
    return out


def _as_list(resp) -> list:
    return resp if isinstance(resp, list) else [resp]


def _get(obj, *names):
    """A field of a kafka-python response (object attribute, dict key or tuple position)."""
    for name in names:
        if isinstance(obj, dict) and name in obj:
            return obj[name]
        if hasattr(obj, name):
            return getattr(obj, name)
    if isinstance(obj, tuple):  # older kafka-python: tuples in schema order
        index = {"log_dirs": 1, "results": 1, "topics": 2, "name": 0, "topic": 0}
        index.update({"partitions": 1, "partition_size": 1, "size": 1})
        return obj[index[names[0]]]
    raise KeyError(names)


class Lag:
    """The worker's consumer lag (end offsets - committed) on views, purchases and user-events."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer

        self.settings = settings
        self.names = [settings.topics.full(t) for t in INPUTS]
        self.admin = KafkaAdminClient(
            bootstrap_servers=settings.bootstrap, **client_kwargs(settings)
        )
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap, **client_kwargs(settings)
        )

    def __call__(self) -> int:
        return sum(end - done for end, done in self.detail().values())

    def detail(self) -> dict[str, tuple[int, int]]:
        """{topic: (end offsets, committed offsets)} summed over partitions."""
        from kafka import TopicPartition

        group = self.settings.app_id
        if hasattr(self.admin, "list_group_offsets"):  # kafka-python >= 3
            committed = self.admin.list_group_offsets({group: None}).get(group, {})
        else:
            committed = self.admin.list_consumer_group_offsets(group)
        tps = [
            TopicPartition(name, p)
            for name in self.names
            for p in sorted(self.consumer.partitions_for_topic(name) or ())
        ]
        ends = self.consumer.end_offsets(tps) if tps else {}
        out = dict.fromkeys(self.names, (0, 0))
        for tp, end in ends.items():
            done = min(end, committed[tp].offset) if tp in committed else 0
            e, d = out[tp.topic]
            out[tp.topic] = (e + end, d + done)
        return out

    def close(self) -> None:
        self.admin.close()
        self.consumer.close()


def worker_rss(pipe) -> int:
    return parse_vmrss(Path(f"/proc/{pipe.worker.proc.pid}/status").read_text())


def delete_run_topics(settings: Settings) -> int:
    """Delete this run's topics (its prefix) and its Faust topics (its app id)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap, **client_kwargs(settings))
    try:
        names = [
            t
            for t in admin.list_topics()
            if t.startswith(settings.topics.prefix) or t.startswith(settings.app_id + "-")
        ]
        if names:
            admin.delete_topics(names)
        return len(names)
    finally:
        admin.close()


# -- sending -----------------------------------------------------------------------------------
def _payloads(settings: Settings, events: Sequence[Interaction]) -> list[tuple[str, bytes, bytes]]:
    topic = {k: settings.topics.full(t) for k, t in (("purchase", "purchases"), ("view", "views"))}
    return [(topic[e.kind], e.user_id.encode(), e.to_bytes()) for e in events]


def send_paced(
    replayer,
    events: Sequence[Interaction],
    rate: float,
    sent_at: dict[str, float],
    slice_s: float = 0.001,
) -> float:
    """Send ``events`` at ``rate`` events/s, noting each one's wall send time in ``sent_at``;
    returns the seconds it took (flushed at the end only). Between bursts the sender sleeps
    until the next event is due, at least ``slice_s``: a burst is what fell due meanwhile."""
    payloads = _payloads(replayer.settings, events)
    send = replayer.producer.send
    n, i = len(events), 0
    t0 = time.monotonic()
    while i < n:
        upto = due(rate, time.monotonic() - t0, n)
        while i < upto:
            topic, key, value = payloads[i]
            sent_at[events[i].event_id] = time.time()
            send(topic, key=key, value=value)
            i += 1
        if i < n:
            wait = t0 + i / rate - time.monotonic()
            time.sleep(max(slice_s, wait))
    replayer.producer.flush()
    return time.monotonic() - t0


def send_all(replayer, events: Sequence[Interaction], sent_at: dict[str, float] | None = None):
    """Send as fast as the producer takes them; flushed at the end."""
    send = replayer.producer.send
    for e, (topic, key, value) in zip(events, _payloads(replayer.settings, events)):
        if sent_at is not None:
            sent_at[e.event_id] = time.time()
        send(topic, key=key, value=value)
    replayer.producer.flush()


# -- shared set-up -----------------------------------------------------------------------------
def _common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--items", type=Path, default=HM / "items.csv")
    ap.add_argument("--events", type=Path, default=HM / "events.csv", help="the real purchases")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--partitions", type=int, choices=(1, 2), default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--view-ratio", type=float, default=0.5, help="P(a view before a purchase)")
    ap.add_argument(
        "--embedding-cache",
        default=str(CACHE) if CACHE.exists() else "",
        help=f"sqlite embedding cache ('' = none); default {CACHE} when it exists",
    )
    ap.add_argument("--batch-max", type=int, help="users agent micro-batch size (new core)")
    ap.add_argument("--batch-within", type=float, help="users agent micro-batch wait, s")
    ap.add_argument(
        "--batch-backlog", type=int, help="records behind from which batches grow (0: never)"
    )
    ap.add_argument("--batch-backlog-within", type=float, help="a growing batch's longest wait, s")
    ap.add_argument("--keep-topics", action="store_true", help="do not delete the run's topics")


def bench_settings(args: argparse.Namespace, kind: str) -> Settings:
    from streams.settings import Settings as S

    update: dict[str, Any] = {"partitions": args.partitions}
    if args.embedding_cache:
        update["embedding_cache"] = str(args.embedding_cache)
    for name, value in (
        ("batch_max", args.batch_max),
        ("batch_within_s", args.batch_within),
        ("batch_backlog", args.batch_backlog),
        ("batch_backlog_within_s", args.batch_backlog_within),
    ):
        if value is not None:
            if name not in S.model_fields:
                raise SystemExit(f"this worker has no setting {name!r} yet")
            update[name] = value
    if get_settings().image_root is None:  # the worker reads the catalogue's images only
        update["image_root"] = Path(args.items).resolve().parent
    return isolated_run(get_settings(), kind, **update)


def load_inputs(args: argparse.Namespace):
    """(products, real purchases of catalogue items, catalogue ids)."""
    from vrec_tools.replay import read_hm_items, read_log

    products = read_hm_items(args.items)
    catalogue = {p.item_id for p in products}
    _, events = read_log(args.events)
    purchases = [e for e in events if e.kind == "purchase" and e.item_id in catalogue]
    return products, purchases, catalogue


@contextlib.contextmanager
def running(settings: Settings, keep_topics: bool = False) -> Iterator[Any]:
    """A broker (started if none answers), a worker and a Pipeline driving it; the run's
    topics are deleted afterwards unless ``keep_topics``."""
    from vrec_tools.harness import Pipeline, local_broker

    with local_broker(settings):
        try:
            with Pipeline(settings) as pipe:
                yield pipe
        finally:
            if not keep_topics:
                try:
                    print(f"deleted {delete_run_topics(settings)} topics of this run")
                except Exception as exc:  # best effort: the figures matter more
                    print(f"could not delete this run's topics: {exc}")


@contextlib.contextmanager
def extra_workers(settings: Settings, workers: int) -> Iterator[list[Any]]:
    """``workers - 1`` more worker processes in the same consumer group (their own data
    folders: each holds its own Qdrant Edge replica)."""
    from vrec_tools.harness import WorkerProcess

    procs = []
    try:
        for n in range(1, workers):
            own = settings.model_copy(update={"data_dir": settings.data_dir / f"worker{n}"})
            procs.append(WorkerProcess(own, own.data_dir / "worker.log").start())
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def _report(out: dict[str, Any], path: Path | None) -> None:
    for k, v in out.items():
        print(f"{k:36s} {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    if path:
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"written to {path}")


def _settings_summary(settings: Settings) -> dict[str, Any]:
    keys = ("partitions", "store", "table_store", "ranker", "processing_guarantee")
    keys += ("batch_max", "batch_within_s", "batch_backlog", "batch_backlog_within_s")
    keys += ("embedding_cache", "app_id")
    dump = settings.model_dump(mode="json")
    return {k: dump[k] for k in keys if k in dump}


def _index(pipe, products, out: dict[str, Any]) -> None:
    print(f"indexing {len(products)} products ...", flush=True)
    t0 = time.monotonic()
    pipe.index(products, timeout=3600)
    out["products"] = len(products)
    out["index_s"] = round(time.monotonic() - t0, 1)
    print(f"indexed in {out['index_s']} s", flush=True)


# -- vrec bench stream -------------------------------------------------------------------------
def add_stream_args(ap: argparse.ArgumentParser) -> None:
    """``vrec bench stream``."""
    _common_args(ap)
    ap.add_argument("--users", type=int, default=4000)
    ap.add_argument("--loads", default="1000,5000", help="offered loads, events/s")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per offered load")
    ap.add_argument("--unthrottled-events", type=int, default=20_000)
    ap.add_argument("--days", type=float, default=14.0, help="event-time span of the log")
    ap.add_argument("--drain-timeout", type=float, default=1800.0)
    ap.add_argument("--legacy-users", type=int, default=300, help="users ranked the old way")
    ap.add_argument(
        "--workers", type=int, default=1, help="worker processes (use with --partitions 2)"
    )


def run_stream(args: argparse.Namespace) -> int:
    loads = [float(x) for x in args.loads.split(",") if x.strip()]

    settings = bench_settings(args, "bench")
    products, purchases, catalogue = load_inputs(args)
    sizes = [int(rate * args.duration) for rate in loads] + [args.unthrottled_events]
    per_user = max(1, math.ceil(sum(sizes) / max(1, args.users)))
    events = synthetic_log(
        purchases,
        args.users,
        per_user,
        args.seed,
        days=args.days,
        view_ratio=args.view_ratio,
        catalogue=catalogue,
    )
    parts = split_counts(events, sizes)
    sent = [e for part in parts for e in part]
    out: dict[str, Any] = {
        "users": args.users,
        "events_per_user": per_user,
        "real_customers": len({e.user_id for e in purchases}),
    }
    print(f"{len(events)} synthetic events of {args.users} users; sending {len(sent)}", flush=True)

    sent_at: dict[str, float] = {}
    load_ids: list[set[str]] = []
    with running(settings, args.keep_topics) as pipe, extra_workers(settings, args.workers):
        replayer = pipe.replayer
        assert replayer is not None
        _index(pipe, products, out)
        rss0 = worker_rss(pipe)
        out["rss_baseline_bytes"] = rss0
        out["workers"] = args.workers
        # kafka-python's first send to a topic blocks on its metadata (~100 ms, the retry
        # backoff): fetch it before the clock starts, as a shop's long-running producer has it
        for topic in ("views", "purchases"):
            replayer.producer.partitions_for(settings.topics.full(topic))

        for rate, part in zip(loads, parts):
            print(f"offered load {rate:g} events/s: {len(part)} events ...", flush=True)
            seconds = send_paced(replayer, part, rate, sent_at)
            t0 = time.monotonic()
            pipe.wait_drained(args.drain_timeout)
            out[f"achieved_rate_at_{rate:g}"] = round(len(part) / seconds, 1)
            out[f"drain_after_send_s_at_{rate:g}"] = round(time.monotonic() - t0, 1)
            load_ids.append({e.event_id for e in part})

        burst = parts[len(loads)]
        burst_at: dict[str, float] = {}
        print(f"unthrottled: {len(burst)} events ...", flush=True)
        t_burst = time.time()
        send_all(replayer, burst, burst_at)
        t_sent = time.time()
        pipe.wait_drained(args.drain_timeout)
        t_drained = time.time()
        sent_at.update(burst_at)
        out["unthrottled_events"] = len(burst)
        out["unthrottled_send_s"] = round(t_sent - t_burst, 2)
        out["unthrottled_drain_s"] = round(t_drained - t_burst, 2)
        out["events_per_s_max"] = round(len(burst) / (t_drained - t_burst), 1) if burst else None

        rss1 = worker_rss(pipe)
        folded_users = len({e.user_id for e in sent})
        out["distinct_users_folded"] = folded_users
        out["rss_after_bytes"] = rss1
        out["rss_bytes_per_user"] = round((rss1 - rss0) / max(1, folded_users), 1)

        # day close: a clock mark at the start of the day after the last event
        rec_ends = end_offsets(settings, settings.topics.full("recommendations"))
        tick_ts = next_day_start(max(e.ts for e in sent), settings.trending_bucket_s)
        print("day close ...", flush=True)
        t0 = time.time()
        pipe.close_days(tick_ts, args.drain_timeout)
        t_closed = time.time()
        closing = [r for r in read_recs(settings, rec_ends) if r[2] == "day_close"]
        out["day_close_users"] = len(closing)
        out["day_close_wall_s"] = round(t_closed - t0, 2)
        if closing:
            last = max(r[1] for r in closing) - t0
            out["day_close_until_last_rec_s"] = round(last, 2)
            out["day_close_users_per_s"] = round(len(closing) / max(last, 1e-3), 1)
            out["day_close_users_per_s_wall"] = round(len(closing) / (t_closed - t0), 1)
        else:
            out["day_close_users_per_s"] = None

        print("reading recommendations and changelogs ...", flush=True)
        recs = read_recs(settings)
        by_event = [r for r in recs if r[2] == "event"]
        forwarded_at = read_forwards(settings)
        out["events_sent"] = len(sent)
        out["recommendations_event"] = len(by_event)
        for rate, ids in zip(loads, load_ids):
            mine = {k: sent_at[k] for k in ids}
            lat = latencies(by_event, mine)
            out[f"recommendations_at_{rate:g}"] = len(lat)
            out[f"events_at_{rate:g}"] = len(ids)
            for q, v in ms_percentiles(lat).items():
                out[f"latency_ms_{q}_at_{rate:g}"] = v
            # where the time goes: views/purchases -> user-events (the ingest hop) and
            # user-events -> the list (the users hop), from the forward records' timestamps
            hops = hop_latencies(by_event, mine, forwarded_at)
            for hop, values in zip(("ingest", "users"), hops):
                for q, v in ms_percentiles(values).items():
                    out[f"latency_ms_{q}_at_{rate:g}_{hop}_hop"] = v
            # the same without the load's first second (a cold start shows here first)
            if mine:
                start = min(mine.values()) + 1.0
                steady = latencies(by_event, {k: t for k, t in mine.items() if t >= start})
                for q, v in ms_percentiles(steady).items():
                    out[f"latency_ms_{q}_at_{rate:g}_after_1s"] = v
        lat = latencies(by_event, burst_at)
        done = [r[1] for r in by_event if r[0] in burst_at]
        if done:
            out["events_per_s_max_until_last_rec"] = round(len(burst) / (max(done) - t_burst), 1)
        for q, v in ms_percentiles(lat).items():
            out[f"latency_ms_{q}_unthrottled"] = v

        sizes_by_table = {t: changelog_size(settings, t) for t in TABLES}
        total = sum(s["bytes"] for s in sizes_by_table.values())
        out["changelog_bytes"] = total
        out["changelog_bytes_per_event"] = round(total / max(1, len(sent)), 1)
        out["changelog_bytes_per_event_by_table"] = {
            t: round(s["bytes"] / max(1, len(sent)), 1) for t, s in sizes_by_table.items()
        }
        out["changelog_by_table"] = sizes_by_table
        users_live = sizes_by_table["users"]["live_bytes"]
        out["users_state_bytes_per_user"] = round(users_live / max(1, folded_users), 1)
        out["dead_letters"] = pipe.count("dead_letters")
        out["settings"] = _settings_summary(settings)
        embeddings = pipe.embeddings()
    print("ranking side by side: the batched core and the pre-rewrite per-event ranker ...")
    out["side_by_side"] = ranking_side_by_side(
        embeddings, sent, settings, legacy_users=args.legacy_users
    )
    _report(out, args.json)
    return 0


def ranking_side_by_side(
    embeddings: Mapping[str, Any],
    events: Sequence[Interaction],
    settings: Settings,
    *,
    legacy_users: int = 300,
) -> dict[str, Any]:
    """The same events in-process, no Kafka: the batched fold + rank of streams.userbatch
    against the pre-rewrite per-event path (fold one event, rank with
    :func:`vrec_tools.legacy_ranking.legacy_hybrid`) for a sample of users at the final state.

    Also counts how many of those users get the same list (ids in order) from both rankers.
    """
    from streams.catalogue import Catalogue
    from streams.ranking import Trending
    from streams.ranking.copurchase import CoPurchase
    from streams.recommend import RankConfig, rank_states
    from streams.userbatch import (
        FoldConfig,
        InputRecord,
        PartitionState,
        fold_batch,
        rank_batch,
        rank_context,
    )
    from streams.userstate import UserState
    from vrec_tools.legacy_ranking import legacy_hybrid, previous_rank_states

    cat = Catalogue()
    for item_id, emb in embeddings.items():
        cat.put(item_id, emb.vector, emb.payload)
    fold_cfg, rank_cfg = FoldConfig.from_settings(settings), RankConfig.from_settings(settings)
    part = PartitionState(
        Trending(
            settings.trending_window_days * DAY,
            settings.trending_bucket_s,
            {"view": settings.weight_view, "purchase": settings.weight_purchase},
        ),
        CoPurchase(settings.copurchase_neighbours),
    )
    table: dict[bytes, bytes] = {}
    records = [InputRecord(0, n, e.to_bytes()) for n, e in enumerate(events)]
    t_fold = t_rank = 0.0
    n_recs = 0
    for start in range(0, len(records), settings.batch_max):
        t0 = time.process_time()
        folded = fold_batch(
            records[start : start + settings.batch_max],
            partition=0,
            part=part,
            users=lambda u: table.get(u.encode()),
            catalogue=cat,
            cfg=fold_cfg,
        )
        t1 = time.process_time()
        recs = rank_batch(folded, rank_context(part, cat, rank_cfg), model_id="bench")
        for r in recs:
            r.to_bytes()
        t2 = time.process_time()
        table.update(folded.writes.users)
        t_fold, t_rank, n_recs = t_fold + t1 - t0, t_rank + t2 - t1, n_recs + len(recs)
    n = len(records)
    sample = [table[k] for k in sorted(table)[:legacy_users]]
    states = {st.user_id: st for st in map(UserState.from_bytes, sample)}
    ctx = rank_context(part, cat, rank_cfg)
    t0 = time.process_time()
    new = rank_states(states, ctx)
    t_new = time.process_time() - t0
    t0 = time.process_time()
    old = {
        u: legacy_hybrid(
            st, config=rank_cfg, trending=part.trending, copurchase=part.copurchase, catalogue=cat
        )
        for u, st in states.items()
    }
    t_old = time.process_time() - t0
    t0 = time.process_time()
    prev = previous_rank_states(states, ctx)
    t_prev = time.process_time() - t0
    same = sum([s.item_id for s in new[u][0]] == [s.item_id for s in old[u][0]] for u in states)
    same_prev = sum([s.item_id for s in new[u][0]] == [s.item_id for s in prev[u]] for u in prev)
    fold_per_event = t_fold / n
    batched_eps = n / (t_fold + t_rank)
    legacy_eps = 1.0 / (fold_per_event + t_old / len(states))  # one ranking per event
    out = {
        "events": n,
        "recommendations": n_recs,
        "cpu_s_fold": round(t_fold, 2),
        "cpu_s_rank": round(t_rank, 2),
        "batched_events_per_cpu_s": round(batched_eps, 1),
        "rank_us_per_user_batched": round(1e6 * t_new / len(states), 1),
        "rank_us_per_user_legacy": round(1e6 * t_old / len(states), 1),
        "legacy_events_per_cpu_s": round(legacy_eps, 1),
        "ratio_events_per_s": round(batched_eps / legacy_eps, 1),
        "ratio_rank_per_user": round(t_old / max(t_new, 1e-9), 1),
        "same_list_users": f"{same}/{len(states)}",
        # this stop's batched ranker against the previous stop's per-user one (git 31be2ef)
        "rank_us_per_user_previous": round(1e6 * t_prev / len(states), 1),
        "ratio_rank_vs_previous": round(t_prev / max(t_new, 1e-9), 2),  # same users, CPU time
        "same_list_users_vs_previous": f"{same_prev}/{len(prev)}",
    }
    for key, value in out.items():
        print(f"  {key:30s} {value}")
    return out


# -- vrec bench scale --------------------------------------------------------------------------
def add_scale_args(ap: argparse.ArgumentParser) -> None:
    """``vrec bench scale``."""
    _common_args(ap)
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--events-per-user", type=int, default=20)
    ap.add_argument("--chunk-users", type=int, default=10_000, help="users generated at a time")
    ap.add_argument("--chunk-days", type=float, default=1.0, help="event-time span of a chunk")
    ap.add_argument("--max-lag", type=int, default=200_000, help="back-pressure: unread events")
    ap.add_argument(
        "--changelog",
        choices=("auto", "read", "logdir"),
        default="auto",
        help="users changelog size: read every record, or the broker's log dir size "
        "(auto: read up to 2M records)",
    )
    ap.add_argument("--drain-timeout", type=float, default=24 * 3600.0)
    ap.add_argument("--recovery-timeout", type=float, default=3600.0)
    ap.add_argument(
        "--seed-states",
        action="store_true",
        help="fold each user's synthetic events in this process (the worker's own fold "
        "function) and write the states straight to the users changelog, then restart the "
        "worker: RSS per user and recovery at sizes a replay through the worker cannot reach",
    )


def run_scale(args: argparse.Namespace) -> int:

    settings = bench_settings(args, "scale")
    products, purchases, catalogue = load_inputs(args)
    if args.seed_states:
        return _scale_seeded(args, settings, products, purchases, catalogue)
    n_events = args.users * args.events_per_user
    out: dict[str, Any] = {"users": args.users, "events_per_user": args.events_per_user}
    lag = None
    with running(settings, args.keep_topics) as pipe:
        replayer = pipe.replayer
        assert replayer is not None
        _index(pipe, products, out)
        rss0 = worker_rss(pipe)
        lag = Lag(settings)
        last_ts, sent, probe_item = 0.0, 0, None
        t0 = time.monotonic()
        for first in range(0, args.users, args.chunk_users):
            n = min(args.chunk_users, args.users - first)
            chunk = synthetic_log(
                purchases,
                n,
                args.events_per_user,
                args.seed,
                DEFAULT_START_TS + (first // args.chunk_users) * args.chunk_days * DAY,
                days=args.chunk_days,
                view_ratio=args.view_ratio,
                catalogue=catalogue,
                first_user=first,
            )
            while lag() > args.max_lag:
                _progress(t0, sent, n_events, lag, pipe)
                pipe.wait_until("lag to shrink", lambda: lag() <= args.max_lag // 2, 3600)
            if probe_item is None:  # an item of the probe user's own log
                probe_item = next(e.item_id for e in chunk if e.user_id == PROBE_USER)
            send_all(replayer, chunk)
            sent += len(chunk)
            last_ts = max(last_ts, chunk[-1].ts)
            _progress(t0, sent, n_events, lag, pipe)
        out["send_s"] = round(time.monotonic() - t0, 1)

        last_print = [time.monotonic()]

        def drained() -> bool:
            behind = lag()
            if time.monotonic() - last_print[0] > 10:
                last_print[0] = time.monotonic()
                _progress(t0, sent, n_events, lag, pipe)
            return behind == 0

        pipe.wait_until("the worker to drain its inputs", drained, args.drain_timeout)
        fold_s = time.monotonic() - t0
        out["events"] = sent
        out["fold_s"] = round(fold_s, 1)
        out["events_per_s"] = round(sent / fold_s, 1)

        rss1 = worker_rss(pipe)
        out["rss_baseline_bytes"] = rss0
        out["rss_after_bytes"] = rss1
        out["rss_bytes_per_user"] = round((rss1 - rss0) / max(1, args.users), 1)

        users_topic = changelog_name(settings, "users")
        records = sum(end_offsets(settings, users_topic).values())
        method = args.changelog
        if method == "auto":
            method = "read" if records <= 2_000_000 else "logdir"
        print(f"users changelog: {records} records, sized by {method} ...", flush=True)
        out["users_changelog_records"] = records
        out["users_changelog_method"] = method
        if method == "read":
            size = changelog_size(settings, "users")
            out["users_changelog_bytes"] = size["bytes"]
            out["users_changelog_bytes_per_user"] = round(size["bytes"] / args.users, 1)
            out["users_state_bytes_per_user"] = round(size["live_bytes"] / max(1, size["keys"]), 1)
            out["users_in_table"] = size["keys"]
        else:
            size = log_dir_bytes(settings, [users_topic])[users_topic]
            out["users_changelog_bytes"] = size
            out["users_changelog_bytes_per_user"] = round(size / args.users, 1)
        names = [changelog_name(settings, t) for t in TABLES]
        out["changelog_log_dir_bytes"] = log_dir_bytes(settings, names)

        # recovery: SIGTERM, start again, then one new event of a known user
        out.update(_recovery(pipe, settings, probe_item, last_ts, args.recovery_timeout))
        out["dead_letters"] = pipe.count("dead_letters")
        out["settings"] = _settings_summary(settings)
        lag.close()
    _report(out, args.json)
    return 0


def seeded_states(
    customers: list[list[Basket]],
    settings: Settings,
    users: range,
    events_per_user: int,
    seed: int,
    view_ratio: float,
) -> Iterator[tuple[bytes, bytes, float, str]]:
    """(key, state bytes, newest ts, an item of the user) for each synthetic user, folded with
    :meth:`UserState.fold` over the same per-user event sequence :func:`synthetic_log` draws."""
    from streams.userstate import DecayConfig, UserState

    decay = DecayConfig.from_settings(settings)
    for u in users:
        rng = random.Random(f"{seed}:{u}")
        user_id = f"syn-{u:06d}"
        state = UserState(user_id)
        ts = DEFAULT_START_TS + rng.uniform(0.0, 7 * DAY)
        for n, (kind, item, _, gap) in enumerate(
            _user_steps(rng, customers, events_per_user, view_ratio)
        ):
            ts += gap if n else 0.0
            state.fold(
                item_id=item,
                kind=kind,
                ts=ts,
                config=decay,
                history_len=settings.history_len,
                max_seen=settings.max_seen,
                event_id=f"syn:{u}:{n}",  # no user-events offsets: none were read
            )
        yield user_id.encode(), state.to_bytes(), state.last_ts, item


def _scale_seeded(args, settings: Settings, products, purchases, catalogue) -> int:
    """`vrec bench scale --seed-states`: index, stop the worker, write N users' states to the
    users changelog, start the worker again and time its recovery; RSS per user after it."""
    from kafka import KafkaProducer

    out: dict[str, Any] = {
        "users": args.users,
        "events_per_user": args.events_per_user,
        "mode": "seed-states",
    }
    customers = customer_baskets(purchases, catalogue)
    with running(settings, args.keep_topics) as pipe:
        _index(pipe, products, out)
        out["rss_baseline_bytes"] = worker_rss(pipe)
        pipe.worker.stop(signal.SIGTERM)
        topic = changelog_name(settings, "users")
        producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap,
            linger_ms=50,
            batch_size=1 << 20,
            **client_kwargs(settings),
        )
        t0 = time.process_time()
        w0 = time.monotonic()
        n_bytes, last_ts, probe_item = 0, 0.0, None
        for key, value, ts, item in seeded_states(
            customers,
            settings,
            range(args.users),
            args.events_per_user,
            args.seed,
            args.view_ratio,
        ):
            producer.send(topic, key=key, value=value)  # default partitioner, as Faust's
            n_bytes += len(key) + len(value)
            last_ts = max(last_ts, ts)
            probe_item = probe_item or item
        producer.flush()
        producer.close()
        out["seed_cpu_s"] = round(time.process_time() - t0, 1)
        out["seed_wall_s"] = round(time.monotonic() - w0, 1)
        out["users_changelog_bytes"] = n_bytes
        out["users_state_bytes_per_user"] = round(n_bytes / max(1, args.users), 1)
        print(f"seeded {args.users} users ({n_bytes / 1e6:.1f} MB) in {out['seed_wall_s']} s")
        out.update(_recovery(pipe, settings, probe_item, last_ts, args.recovery_timeout))
        time.sleep(2.0)
        rss = worker_rss(pipe)
        out["rss_after_bytes"] = rss
        out["rss_bytes_per_user"] = round((rss - out["rss_baseline_bytes"]) / args.users, 1)
        out["settings"] = _settings_summary(settings)
    _report(out, args.json)
    return 0


def _progress(t0: float, sent: int, total: int, lag: Lag, pipe) -> None:
    """One line: sent, the worker's committed offsets on views + purchases (ingest) and on
    user-events (users agent) with the rate so far, and its RSS. Committed offsets trail what
    the worker has processed (commits come every few seconds)."""
    detail = lag.detail()
    ingested = sum(d for name, (_, d) in detail.items() if not name.endswith("user-events"))
    end_ue, folded = next((v for name, v in detail.items() if name.endswith("user-events")), (0, 0))
    elapsed = time.monotonic() - t0
    rss = worker_rss(pipe) / 2**20
    print(
        f"[{elapsed:7.0f} s] sent {sent}/{total}  committed: ingest {ingested}, "
        f"users {folded}/{end_ue} ({folded / max(elapsed, 1e-3):.0f} ev/s)  "
        f"worker RSS {rss:.0f} MiB",
        flush=True,
    )


def _recovery(
    pipe, settings: Settings, item: str, last_ts: float, timeout: float
) -> dict[str, Any]:
    """Restart the worker with SIGTERM and send one new event of a known user (a view of an
    item of its own log, an hour after the last event): seconds until its recommendation."""
    from kafka import KafkaConsumer

    probe_id = f"probe:{uuid.uuid4().hex[:8]}"
    topic = settings.topics.full("recommendations")
    ends = end_offsets(settings, topic)
    print("restarting the worker (SIGTERM) ...", flush=True)
    t0 = time.time()
    pipe.restart(signal.SIGTERM)
    t_started = time.time()
    probe = Interaction(
        event_id=probe_id, user_id=PROBE_USER, item_id=item, ts=last_ts + 3600, kind="view"
    )
    send_all(pipe.replayer, [probe])
    found: list[dict] = []
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap, enable_auto_commit=False, **client_kwargs(settings)
    )
    try:
        consumer.assign(list(ends))
        for tp, offset in ends.items():
            consumer.seek(tp, offset)

        def seen() -> bool:
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    doc = json.loads(r.value)
                    if doc.get("event_id") == probe_id:
                        found.append(doc)
            return bool(found)

        pipe.wait_until("the restarted worker's recommendation", seen, timeout)
    finally:
        consumer.close()
    t_seen = time.time()
    rec = found[0]
    return {
        "stop_and_spawn_s": round(t_started - t0, 2),
        "recovery_s": round(rec["produced_ts"] - t_started, 2),
        "recovery_s_incl_stop": round(rec["produced_ts"] - t0, 2),
        "recovery_seen_s": round(t_seen - t_started, 2),
        "probe_strategy": rec.get("strategy"),
    }
