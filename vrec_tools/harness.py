"""One replay harness for tests, `vrec eval` and the demo: a real worker process, real topics.

with Pipeline(settings) as pipe:          # starts `vrec worker` as a subprocess
    pipe.index(products)                  # waits until every product is embedded or dead
    pipe.replay(events)                   # waits until every event has its outcome
    recs = pipe.recommendations()
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr

from streams.events import DeadLetter, Interaction, ItemEmbedding, ProductUpload, Recommendation
from streams.kafka_security import client_kwargs
from streams.procs import die_with_parent
from streams.settings import REPO_ROOT, Settings
from vrec_tools.replay import Record, Replayer, read_topic

#: The image root of a Pipeline whose settings name none: the test fixtures' catalogues.
FIXTURES = REPO_ROOT / "tests" / "fixtures"


def broker_reachable(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def local_broker(settings: Settings):
    """Use the broker at settings.broker; start a local one there (and stop it after) if none
    answers. A broker started here gets SIGTERM if this process dies without stopping it."""
    if broker_reachable(settings.bootstrap):
        yield None
        return
    from vrec_tools.broker import KafkaBroker, ensure_jars

    port = int(settings.bootstrap.rpartition(":")[2])
    print(f"starting Kafka (KRaft) on 127.0.0.1:{port} ...", flush=True)
    ensure_jars()
    broker = KafkaBroker(settings.data_dir.parent / "kafka", port=port, die_with_parent=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process (secrets in clear:
    a child needs the Kafka password and the Qdrant API key)."""
    env: dict[str, str] = {}
    dumped = settings.model_dump(mode="json", exclude={"topics", "kafka"})
    for name, value in dumped.items():
        secret = getattr(settings, name)
        if isinstance(secret, SecretStr):
            value = secret.get_secret_value()
        if value is not None:
            complex_value = isinstance(value, (dict, list))
            env[f"VREC_{name.upper()}"] = json.dumps(value) if complex_value else str(value)
    for name, value in settings.topics.model_dump().items():
        env[f"VREC_TOPIC_{name.upper()}"] = str(value)
    for name, value in settings.kafka.model_dump().items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"VREC_KAFKA_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """`python -m vrec_tools.cli worker` with the given settings, logs to a file.

    The worker leads its own process group (stopped as a group) and gets SIGTERM when the
    thread that started it dies (Linux), so it never outlives a killed test or command."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        # Only these settings: no VREC_* variable of the parent leaks into the worker.
        parent = {k: v for k, v in os.environ.items() if not k.startswith("VREC_")}
        env = {**parent, **settings_env(self.settings)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vrec_tools.cli", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Graceful stop (SIGTERM: Faust commits and flushes); SIGKILL after timeout."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal_group(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def _signal_group(self, sig: int) -> None:
        """``sig`` to the worker's process group (the worker and anything it started)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class PipelineError(RuntimeError):
    pass


class Pipeline:
    """Drive a running worker through recorded input and read what it published."""

    def __init__(self, settings: Settings, log_path: Path | None = None) -> None:
        if settings.image_root is None:  # the worker reads image files only inside it
            settings = settings.model_copy(update={"image_root": FIXTURES})
        self.settings = settings
        self.worker = WorkerProcess(settings, log_path or settings.data_dir / "worker.log")
        self.replayer: Replayer | None = None
        self._counter = None  # a KafkaConsumer used for end offsets
        self._admin = None  # a KafkaAdminClient used for the worker's committed offsets
        self.sent_at: dict[str, float] = {}  # event_id -> wall time it was sent (latency)

    def __enter__(self) -> Pipeline:
        from streams.worker import prepare_topics

        try:
            prepare_topics(self.settings)
            self.replayer = Replayer(self.settings)
            self.worker.start()
        except BaseException:  # e.g. Ctrl-C / SIGTERM while starting: stop what did start
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.replayer is not None:
            self.replayer.close()
            self.replayer = None
        for client in (self._counter, self._admin):
            if client is not None:
                client.close()
        self._counter = self._admin = None
        self.worker.stop()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.worker.stop(sig)
        self.worker.start()

    # -- reading outputs -------------------------------------------------------------------
    def read(self, topic: str, *, until=None, timeout: float = 60.0, idle: float | None = None):
        return read_topic(self.settings, topic, until=until, timeout=timeout, idle=idle)

    def read_raw(self, full_name: str, *, timeout: float = 60.0, idle: float | None = None):
        """Read a topic by its full name (e.g. a Faust changelog)."""
        return read_topic(self.settings, full_name, raw_name=True, timeout=timeout, idle=idle)

    def wait_until(self, what: str, done, timeout: float = 600.0) -> None:
        self._wait(what, done, timeout)

    def wait_for_recommendations(self, n: int, timeout: float = 600.0) -> None:
        self._wait(f"{n} recommendations", lambda: self.count("recommendations") >= n, timeout)

    def _wait(self, what: str, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.worker.alive:
                raise PipelineError(
                    f"worker died while waiting for {what}:\n{self.worker.log_tail()}"
                )
            if done():
                return
            time.sleep(0.5)
        raise PipelineError(f"timed out waiting for {what}:\n{self.worker.log_tail()}")

    def embeddings(self) -> dict[str, ItemEmbedding]:
        recs = self.read("item_embeddings", idle=1.0, timeout=30)
        out = {}
        for r in recs:
            e = ItemEmbedding.from_bytes(r.value)
            out[e.item_id] = e
        return out

    def dead_letters(self) -> list[DeadLetter]:
        return [
            DeadLetter.from_bytes(r.value) for r in self.read("dead_letters", idle=1.0, timeout=30)
        ]

    def recommendation_records(self, idle: float = 1.0) -> list[Record]:
        return self.read("recommendations", idle=idle, timeout=120)

    def recommendations(self) -> list[Recommendation]:
        return [Recommendation.from_bytes(r.value) for r in self.recommendation_records()]

    # -- driving inputs --------------------------------------------------------------------
    def index(self, products: Sequence[ProductUpload], timeout: float = 600.0) -> None:
        """Send products; wait until each is embedded or dead-lettered."""
        assert self.replayer is not None
        emb0, dead0 = self.count("item_embeddings"), self.count("dead_letters")
        n = self.replayer.send_products(products)

        def done() -> bool:
            return (self.count("item_embeddings") - emb0) + (
                self.count("dead_letters") - dead0
            ) >= n

        self._wait(f"{n} products to be indexed", done, timeout)

    def replay(
        self,
        events: Sequence[Interaction],
        speed: float = 0.0,
        timeout: float = 600.0,
        progress: bool = False,
    ) -> None:
        """Send events; wait until the worker has processed all of them (its commits cover
        every record; the users agent publishes one recommendation per user per micro-batch,
        so recommendations are not counted)."""
        assert self.replayer is not None
        self.replayer.send_events(
            events,
            speed=speed,
            progress=progress,
            on_sent=lambda e: self.sent_at.__setitem__(e.event_id, time.time()),
        )
        self.wait_drained(timeout)

    def close_days(self, ts: float, timeout: float = 600.0) -> None:
        """Send a clock mark at ``ts`` and wait until the worker has re-ranked the users of the
        days it closes (everything it read is processed and committed)."""
        assert self.replayer is not None
        self.replayer.send_tick(ts)
        self.wait_drained(timeout)

    def wait_drained(self, timeout: float = 600.0) -> None:
        """Wait until the worker's consumer group has committed every record of views,
        purchases and user-events (Faust flushes what it produced before it commits)."""
        names = [self.settings.topics.full(t) for t in ("views", "purchases", "user_events")]
        self._wait("the worker to drain its inputs", lambda: self._lag(names) == 0, timeout)

    def _lag(self, names: Sequence[str]) -> int:
        from kafka import KafkaAdminClient

        if self._admin is None:
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.settings.bootstrap, **client_kwargs(self.settings)
            )
        admin, group = self._admin, self.settings.app_id  # Faust's consumer group
        # committed offsets first: what they cover was produced before the end offsets
        if hasattr(admin, "list_group_offsets"):  # kafka-python >= 3
            committed = admin.list_group_offsets({group: None}).get(group, {})
        else:
            committed = admin.list_consumer_group_offsets(group)
        return sum(
            max(0, end - (committed[tp].offset if tp in committed else 0))
            for tp, end in self._end_offsets(names).items()
        )

    def _end_offsets(self, names: Sequence[str]) -> dict:
        """{TopicPartition: end offset} of every partition of the named topics (full names)."""
        from kafka import KafkaConsumer, TopicPartition

        if self._counter is None:
            self._counter = KafkaConsumer(
                bootstrap_servers=self.settings.bootstrap, **client_kwargs(self.settings)
            )
        tps = [
            TopicPartition(name, p)
            for name in names
            for p in sorted(self._counter.partitions_for_topic(name) or ())
        ]
        return self._counter.end_offsets(tps) if tps else {}

    def count(self, topic: str) -> int:
        """Number of records in a topic (sum of end offsets; topics are not compacted)."""
        return sum(self._end_offsets([self.settings.topics.full(topic)]).values())
