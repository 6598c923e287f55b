"""Issue 12 item 7: every Kafka client vrec makes authenticates from ``VREC_KAFKA_*``.

A broker of its own with a SASL_PLAINTEXT listener (PLAIN, user alice): the admin (topic
creation), the replay producer, the topic reader and a worker (Faust app) work with alice's
password; a wrong password fails with an error that says so.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from streams.events import Interaction
from streams.kafka_admin import BrokerError, create_topics
from streams.kafka_security import KafkaAuthenticationError, client_kwargs
from streams.settings import REPO_ROOT, KafkaSecurity, Settings, isolated_run
from streams.worker import prepare_topics
from vrec_tools.broker import KafkaBroker, ensure_jars, find_free_port
from vrec_tools.harness import Pipeline
from vrec_tools.replay import Replayer, read_hm_items, read_topic

pytestmark = pytest.mark.kafka

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"
ALICE = KafkaSecurity(
    security_protocol="SASL_PLAINTEXT",
    sasl_mechanism="PLAIN",
    sasl_username="alice",
    sasl_password="alice-secret",
)


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    ensure_jars()
    broker = KafkaBroker(
        tmp_path_factory.mktemp("kafka-sasl"),
        port=find_free_port(),
        sasl_users={"alice": "alice-secret"},
        die_with_parent=True,
    )
    broker.start(timeout=120)
    try:
        yield broker
    finally:
        broker.stop()


def _settings(broker: KafkaBroker, tmp_path, security: KafkaSecurity = ALICE) -> Settings:
    base = Settings(broker=broker.bootstrap, kafka=security, data_dir=tmp_path / "var")
    return isolated_run(base, "sasl")


def test_broker_listener_is_sasl(sasl_broker):
    props = sasl_broker.server_properties()
    assert props["listeners"].startswith(f"SASL_PLAINTEXT://{sasl_broker.bootstrap}")
    assert (
        'user_alice="alice-secret"' in props["listener.name.sasl_plaintext.plain.sasl.jaas.config"]
    )


def test_admin_producer_and_reader_with_credentials(sasl_broker, tmp_path):
    settings = _settings(sasl_broker, tmp_path)
    prepare_topics(settings)  # admin: create vrec's topics
    replayer = Replayer(settings)
    try:
        event = Interaction(event_id="e1", user_id="u1", item_id="i1", ts=1.0e9, kind="view")
        replayer.send_events([event])
    finally:
        replayer.close()
    records = read_topic(settings, "views", until=lambda r: len(r) >= 1, timeout=30)
    assert [Interaction.from_bytes(r.value).event_id for r in records] == ["e1"]


def test_wrong_password_fails_clearly(sasl_broker, tmp_path):
    wrong = KafkaSecurity(**{**ALICE.model_dump(), "sasl_password": "not-her-password"})
    settings = _settings(sasl_broker, tmp_path, wrong)
    t0 = time.monotonic()
    with pytest.raises(KafkaAuthenticationError, match="Authentication failed") as info:
        create_topics(settings.bootstrap, ["x"], timeout=5, security=client_kwargs(settings))
    assert "'alice'" in str(info.value) and "not-her-password" not in str(info.value)
    assert time.monotonic() - t0 < 30


def test_wrong_password_fails_clearly_when_read_late(sasl_broker, tmp_path, monkeypatch):
    """The broker's error response and its close are both waiting when the client reads (as on a
    loaded CI machine): kafka-python 3.0.12 alone drops the response (streams.kafka_compat)."""
    from kafka.net.transport import KafkaTCPTransport

    recv = KafkaTCPTransport._sock_recv

    def late_recv(self):
        time.sleep(0.5)  # longer than the broker's failed-authentication close delay (100 ms)
        return recv(self)

    monkeypatch.setattr(KafkaTCPTransport, "_sock_recv", late_recv)
    wrong = KafkaSecurity(**{**ALICE.model_dump(), "sasl_password": "not-her-password"})
    settings = _settings(sasl_broker, tmp_path, wrong)
    with pytest.raises(KafkaAuthenticationError, match="Authentication failed"):
        create_topics(settings.bootstrap, ["x"], timeout=5, security=client_kwargs(settings))


def test_plaintext_client_is_refused(sasl_broker):
    with pytest.raises(Exception, match="bootstrap|Unable|timed out"):  # noqa: PT011
        create_topics(sasl_broker.bootstrap, ["y"], timeout=5)


def test_bad_sasl_user_name_rejected(tmp_path):
    with pytest.raises(BrokerError):
        KafkaBroker(tmp_path, sasl_users={'bob" user_eve="x': "pw"})


@pytest.mark.model
def test_worker_end_to_end_over_sasl(sasl_broker, tmp_path):
    """A worker (Faust consumer, producer, changelogs, its item replica's own consumer) and
    the Pipeline harness over SASL."""
    settings = _settings(sasl_broker, tmp_path)
    products = read_hm_items(SAMPLE / "items.csv")[:4]
    events = [
        Interaction(event_id=f"e{i}", user_id="u1", item_id=p.item_id, ts=1.6e9 + i, kind="view")
        for i, p in enumerate(products)
    ]
    with Pipeline(settings, log_path=tmp_path / "worker.log") as pipe:
        pipe.index(products, timeout=300)
        assert len(pipe.embeddings()) == len(products)
        pipe.replay(events, timeout=300)
        recs = pipe.recommendations()
    assert recs and recs[-1].user_id == "u1"
