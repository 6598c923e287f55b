"""Run a real single-node Apache Kafka 4.x broker (KRaft) from Maven Central jars.

Used for dev, tests and CI instead of Docker: :func:`ensure_jars` resolves the broker classpath once
with Maven (``deploy/kafka/pom.xml``), :class:`KafkaBroker` formats storage, writes
``server.properties`` and runs ``kafka.Kafka`` detached under its ``home`` directory::

    with KafkaBroker(Path("/tmp/k"), port=find_free_port()) as broker:
        create_topics(broker.bootstrap, ["views"], compacted=["products"])

Layout of ``home``: ``server.properties``, ``data/`` (log.dirs, KRaft metadata), ``broker.log``
(JVM stdout/stderr, WARN level unless ``VREC_KAFKA_LOG_LEVEL`` says otherwise) and ``broker.pid``.

``sasl_users={"alice": "secret"}`` makes the client listener SASL_PLAINTEXT (mechanism PLAIN,
those users in the broker's JAAS config) instead of PLAINTEXT; ``die_with_parent=True`` ties the
JVM to the process that starts it (it gets SIGTERM when that one dies).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from streams.kafka_admin import BrokerError, list_topics
from streams.procs import die_with_parent, pid_alive

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_DEPLOY_DIR = REPO_ROOT / "deploy" / "kafka"
POM = KAFKA_DEPLOY_DIR / "pom.xml"
LOG4J_CONFIG = KAFKA_DEPLOY_DIR / "log4j2.yaml"
DEFAULT_LIBS = REPO_ROOT / ".cache" / "kafka" / "libs"
_MARKER = ".vrec-pom.sha256"
_HOST = "127.0.0.1"
_SASL_NAME = re.compile(r"[A-Za-z0-9._-]+")
_BROKER_USER = "vrec-broker"  # the broker's own identity on its SASL listener


# ---------------------------------------------------------------------------------------------
# helpers


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _port_open(port: int, host: str = _HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            "Java not found: Kafka 4.x needs a Java 17+ runtime on PATH or in JAVA_HOME "
            "(e.g. `apt-get install openjdk-17-jre-headless`)."
        )
    return java


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# jars


def _jars_ready(cache_dir: Path, digest: str) -> bool:
    try:
        marker = (cache_dir / _MARKER).read_text().strip()
    except OSError:
        return False
    return marker == digest and any(cache_dir.glob("kafka_2.13-*.jar"))


def ensure_jars(cache_dir: Path = DEFAULT_LIBS, *, pom: Path = POM) -> Path:
    """Resolve the broker's runtime jars into ``cache_dir`` with Maven, once per pom content.

    A marker file holds the pom's sha256; when it matches, nothing runs. Returns ``cache_dir``.
    """
    cache_dir = Path(cache_dir)
    digest = hashlib.sha256(Path(pom).read_bytes()).hexdigest()
    if _jars_ready(cache_dir, digest):
        return cache_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven ('mvn') not found on PATH: it is needed once to download the Kafka jars from "
            "Maven Central (e.g. `apt-get install maven` or `brew install maven`)."
        )
    _java()
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_dir.parent / f".{cache_dir.name}.lock"):
        if _jars_ready(cache_dir, digest):  # another process did it meanwhile
            return cache_dir
        staging = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}-", dir=cache_dir.parent))
        try:
            cmd = [
                mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise BrokerError(
                    f"Maven failed (exit {proc.returncode}) resolving the Kafka jars:\n"
                    + _tail(proc.stdout + proc.stderr)
                )
            if not any(staging.glob("kafka_2.13-*.jar")):
                raise BrokerError(f"Maven ran but no kafka_2.13 jar landed in {staging}")
            (staging / _MARKER).write_text(digest + "\n")
            if cache_dir.exists():
                shutil.rmtree(cache_dir)
            os.replace(staging, cache_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return cache_dir


# ---------------------------------------------------------------------------------------------
# broker


def _new_cluster_id() -> str:
    """A Kafka-style cluster id: url-safe base64 of a random UUID, no padding, no leading '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live (non-zombie) process; on Linux also that it is a Kafka JVM."""
    if not pid_alive(pid):
        return False
    try:
        return b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:  # no /proc (not Linux): alive is all we know
        return not Path("/proc/self").exists()
    except OSError:
        return False


class KafkaBroker:
    """A single-node KRaft broker (broker + controller in one JVM) living under ``home``."""

    def __init__(
        self,
        home: Path,
        port: int = 9092,
        controller_port: int | None = None,
        heap: str = "512m",
        *,
        libs: Path | None = None,
        overrides: Mapping[str, str | int] | None = None,
        sasl_users: Mapping[str, str] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.home = Path(home).expanduser().resolve()
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.libs = libs
        self.overrides = dict(overrides or {})
        self.sasl_users = dict(sasl_users or {})
        for name, password in self.sasl_users.items():
            if not _SASL_NAME.fullmatch(name) or any(c in password for c in '"\\;\n'):
                raise BrokerError(f"SASL user {name!r}: use [A-Za-z0-9._-] names, no '\"\\;'")
        self._broker_password = secrets.token_hex(12)
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._exit_code: int | None = None

    # paths -----------------------------------------------------------------------------------
    @property
    def properties_path(self) -> Path:
        return self.home / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_path(self) -> Path:
        return self.home / "broker.log"

    @property
    def pid_path(self) -> Path:
        return self.home / "broker.pid"

    @property
    def bootstrap(self) -> str:
        return f"{_HOST}:{self.port}"

    @property
    def listener(self) -> str:
        """The client listener's name and security protocol: PLAINTEXT or SASL_PLAINTEXT."""
        return "SASL_PLAINTEXT" if self.sasl_users else "PLAINTEXT"

    def client_security(self) -> dict[str, Any]:
        """kafka-python/aiokafka kwargs for the broker's own identity (its readiness probe)."""
        if not self.sasl_users:
            return {}
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": _BROKER_USER,
            "sasl_plain_password": self._broker_password,
        }

    # state -----------------------------------------------------------------------------------
    def _live_pid(self) -> int | None:
        if self._proc is not None:
            if self._proc.poll() is None:
                return self._proc.pid
            self._exit_code = self._proc.returncode
            self._proc = None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _running_port(self) -> int | None:
        """The PLAINTEXT port in the written server.properties, if any."""
        try:
            text = self.properties_path.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("listeners="):
                for listener in line.split("=", 1)[1].split(","):
                    if listener.startswith(("PLAINTEXT://", "SASL_PLAINTEXT://")):
                        return int(listener.rsplit(":", 1)[1])
        return None

    def is_running(self) -> bool:
        return self._live_pid() is not None

    def status(self) -> dict[str, Any]:
        """Keys: running, pid, port, bootstrap, ready (port answers), home, log."""
        pid = self._live_pid()
        port = (self._running_port() or self.port) if pid is not None else self.port
        return {
            "running": pid is not None,
            "pid": pid,
            "port": port,
            "bootstrap": f"{_HOST}:{port}",
            "ready": pid is not None and _port_open(port),
            "home": str(self.home),
            "log": str(self.log_path),
        }

    # config ----------------------------------------------------------------------------------
    def server_properties(self) -> dict[str, str]:
        """The broker config: single node, RF=1 everywhere, small internal topics."""
        if self.controller_port is None:
            raise BrokerError("controller_port is not chosen yet")
        props: dict[str, str | int] = {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@{_HOST}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": self.listener,
            "listeners": (
                f"{self.listener}://{_HOST}:{self.port},CONTROLLER://{_HOST}:{self.controller_port}"
            ),
            "advertised.listeners": f"{self.listener}://{_HOST}:{self.port}",
            "listener.security.protocol.map": (
                f"{self.listener}:{self.listener},CONTROLLER:PLAINTEXT"
            ),
            "log.dirs": str(self.data_dir),
            "num.partitions": 1,
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            "group.initial.rebalance.delay.ms": 0,
            # internal topics: one replica, one partition (fast first group join / first txn)
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "share.coordinator.state.topic.num.partitions": 1,
            # compacted topics work, but the cleaner does not take 128 MB of a small heap
            "log.cleaner.dedupe.buffer.size": 32 * 1024 * 1024,
        }
        if self.sasl_users:
            users = {_BROKER_USER: self._broker_password, **self.sasl_users}
            jaas = " ".join(
                [
                    "org.apache.kafka.common.security.plain.PlainLoginModule required",
                    f'username="{_BROKER_USER}" password="{self._broker_password}"',
                    *(f'user_{name}="{password}"' for name, password in users.items()),
                ]
            )
            props.update(
                {
                    "sasl.enabled.mechanisms": "PLAIN",
                    "sasl.mechanism.inter.broker.protocol": "PLAIN",
                    "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas + ";",
                }
            )
        props.update(self.overrides)
        return {k: str(v) for k, v in props.items()}

    def _write_properties(self) -> None:
        lines = ["# written by vrec_tools/broker.py; rewritten on every start"]
        for key, value in self.server_properties().items():
            lines.append(f"{key}={value.replace(chr(92), chr(92) * 2)}")
        self.properties_path.write_text("\n".join(lines) + "\n")

    def _java_cmd(self, libs: Path, main: str, *args: str, heap: str | None = None) -> list[str]:
        heap = heap or self.heap
        return [
            _java(), f"-Xms{heap}", f"-Xmx{heap}", "-server", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp", f"{libs}{os.sep}*", main, *args,
        ]  # fmt: skip

    def _prepare(self) -> Path:
        """Jars, ports, server.properties and (once) storage formatting. Returns the libs dir."""
        libs = Path(self.libs) if self.libs else ensure_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        if _port_open(self.port):
            raise BrokerError(f"port {self.port} is already in use (another broker running?)")
        if self.controller_port is None:
            while (cport := find_free_port()) == self.port:
                pass
            self.controller_port = cport
        elif _port_open(self.controller_port):
            raise BrokerError(f"controller port {self.controller_port} is already in use")
        self._write_properties()
        if not (self.data_dir / "meta.properties").exists():
            cmd = self._java_cmd(
                libs, "kafka.tools.StorageTool", "format", "-t", _new_cluster_id(),
                "-c", str(self.properties_path), "--ignore-formatted", heap="256m",
            )  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise BrokerError(
                    f"formatting Kafka storage in {self.data_dir} failed "
                    f"(exit {proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}"
                )
        return libs

    def _log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return "(no broker.log)"
        return _tail(text, lines) or "(broker.log is empty)"

    # lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        """Start the broker detached and wait until a client can list topics.

        No-op (after a readiness wait) if this home's broker already runs on ``port``.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.home / "broker.lock"):
            pid = self._live_pid()
            if pid is not None:
                running_port = self._running_port()
                if running_port is not None and running_port != self.port:
                    raise BrokerError(
                        f"the broker in {self.home} already runs on port {running_port} "
                        f"(pid {pid}), not {self.port}"
                    )
                self._wait_ready(timeout)
                return
            self.pid_path.unlink(missing_ok=True)
            self._exit_code = None
            libs = self._prepare()
            with open(self.log_path, "ab") as log:
                self._log_offset = log.tell()
                log.write(f"=== vrec: starting Kafka at {time.ctime()} ===\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    self._java_cmd(libs, "kafka.Kafka", str(self.properties_path)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.home,
                    start_new_session=True,
                    preexec_fn=die_with_parent() if self.die_with_parent else None,
                )
            self.pid_path.write_text(f"{self._proc.pid}\n")
            try:
                self._wait_ready(timeout)
            except BaseException:
                self.stop(timeout=10)
                raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: str = "port not open yet"
        while True:
            if self._live_pid() is None:
                rc = "?" if self._exit_code is None else self._exit_code
                raise BrokerError(
                    f"Kafka exited during startup (exit {rc}); {self.log_path} tail:\n"
                    + self._log_tail()
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"Kafka did not become ready within {timeout:.0f}s ({last_error}); "
                    f"{self.log_path} tail:\n{self._log_tail()}"
                )
            if _port_open(self.port):
                try:
                    list_topics(
                        self.bootstrap,
                        timeout=min(remaining, 5),
                        security=self.client_security(),
                    )
                    return
                except Exception as exc:  # not answering yet
                    last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (controlled shutdown), wait ``timeout``, then SIGKILL. Idempotent."""
        pid = self._live_pid()
        if pid is not None:
            self._signal(pid, signal.SIGTERM)
            if not self._wait_exit(pid, timeout):
                self._signal(pid, signal.SIGKILL)
                if not self._wait_exit(pid, 10):
                    raise BrokerError(f"Kafka pid {pid} survived SIGKILL")
        self._proc = None
        self.pid_path.unlink(missing_ok=True)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        try:
            if os.getpgid(pid) == pid:  # our detached JVM leads its own session
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return True
            time.sleep(0.1)
        return not _pid_alive(pid)

    def run_foreground(self) -> int:
        """Run the broker attached to this terminal until it exits or is interrupted."""
        self.home.mkdir(parents=True, exist_ok=True)
        if (pid := self._live_pid()) is not None:
            raise BrokerError(f"the broker in {self.home} is already running (pid {pid})")
        libs = self._prepare()
        proc = subprocess.Popen(
            self._java_cmd(libs, "kafka.Kafka", str(self.properties_path)),
            preexec_fn=die_with_parent(),  # attached: the broker ends with this command
        )
        self._proc = proc
        self.pid_path.write_text(f"{proc.pid}\n")
        stopping = False

        def _terminate(*_: object) -> None:
            nonlocal stopping
            stopping = True
            proc.terminate()

        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            while True:
                try:
                    rc = proc.wait()
                    # a JVM stopped by SIGTERM/SIGINT exits 143/130 after a clean shutdown
                    return 0 if stopping and rc in (130, 143) else rc
                except KeyboardInterrupt:  # the JVM got SIGINT too; let it shut down
                    _terminate()
        finally:
            signal.signal(signal.SIGTERM, previous)
            self._proc = None
            self.pid_path.unlink(missing_ok=True)

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"KafkaBroker(home={str(self.home)!r}, bootstrap={self.bootstrap!r})"


# ---------------------------------------------------------------------------------------------
# CLI


def _settings_home_and_port() -> tuple[Path, int]:
    from streams.settings import get_settings

    settings = get_settings()
    first = settings.bootstrap.split(",")[0].strip()
    _, _, port = first.rpartition(":")
    return settings.data_dir / "kafka", int(port) if port.isdigit() else 9092


def _home_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", type=Path, default=None, help="default: $VREC_DATA_DIR/kafka")


def add_start_args(p: argparse.ArgumentParser) -> None:
    """``vrec broker start``."""
    p.add_argument("--port", type=int, default=None, help="default: port of VREC_BROKER")
    p.add_argument("--foreground", action="store_true", help="stay attached, log to tty")
    p.add_argument("--heap", default="512m", help="JVM heap (default 512m)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument(
        "--sasl-user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="a SASL/PLAIN user; any makes the client listener SASL_PLAINTEXT (repeatable)",
    )
    _home_arg(p)
    p.set_defaults(broker_command="start")


def add_stop_args(p: argparse.ArgumentParser) -> None:
    """``vrec broker stop``."""
    p.add_argument("--timeout", type=float, default=30.0)
    _home_arg(p)
    p.set_defaults(broker_command="stop")


def add_status_args(p: argparse.ArgumentParser) -> None:
    """``vrec broker status``."""
    p.add_argument("--json", action="store_true")
    _home_arg(p)
    p.set_defaults(broker_command="status")


def run_cli(args: argparse.Namespace) -> int:
    """``vrec broker start|stop|status``: manage the local dev broker. Returns an exit code:
    2 for unusable arguments; ``status`` exits 0 when the broker runs, 1 when it does not."""
    default_home, default_port = _settings_home_and_port()
    home = args.home or default_home
    port = getattr(args, "port", None) or default_port
    users = dict(u.split(":", 1) for u in getattr(args, "sasl_user", []) if ":" in u)
    if len(users) != len(getattr(args, "sasl_user", [])):
        print("vrec broker: --sasl-user takes NAME:PASSWORD", file=sys.stderr)
        return 2
    try:
        broker = KafkaBroker(home, port=port, heap=getattr(args, "heap", "512m"), sasl_users=users)
    except BrokerError as exc:
        print(f"vrec broker: {exc}", file=sys.stderr)
        return 2
    try:
        if args.broker_command == "start":
            st = broker.status()
            if st["running"]:
                print(f"Kafka already running: pid {st['pid']}, bootstrap {st['bootstrap']}")
                return 0
            if args.foreground:
                return broker.run_foreground()
            t0 = time.monotonic()
            broker.start(timeout=args.timeout)
            st = broker.status()
            print(
                f"Kafka started in {time.monotonic() - t0:.1f}s: pid {st['pid']}, "
                f"bootstrap {st['bootstrap']}, log {st['log']}"
            )
            return 0
        if args.broker_command == "stop":
            st = broker.status()
            if not st["running"]:
                print(f"Kafka not running (home {broker.home})")
                return 0
            broker.stop(timeout=args.timeout)
            print(f"Kafka stopped (pid {st['pid']})")
            return 0
        st = broker.status()
        if args.json:
            print(json.dumps(st))
        elif st["running"]:
            print(f"running: pid {st['pid']}, bootstrap {st['bootstrap']}, home {st['home']}")
        else:
            print(f"not running (home {st['home']})")
        return 0 if st["running"] else 1
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
