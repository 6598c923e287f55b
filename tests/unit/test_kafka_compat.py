"""streams.kafka_compat: kafka-python 3.0.x drops the bytes read together with an EOF.

A real socket pair stands in for the broker: it sends one response and closes before the client
reads, as Kafka does after a failed SASL authentication when the client is slow to read.
"""

from __future__ import annotations

import asyncio
import socket

import kafka.errors as errors
import pytest
from kafka.net.transport import KafkaTCPTransport

from streams import kafka_compat


class _Net:
    def __init__(self) -> None:
        self.yields = 0

    async def wait_read(self, sock):  # the data and the EOF are already there
        return None

    async def sleep(self, delay):
        self.yields += 1


class _Protocol:
    _sensors = None

    def __init__(self) -> None:
        self.received = b""

    def data_received(self, data: bytes) -> None:
        self.received += data


def _read_after_close(read_from_sock) -> tuple[_Protocol, KafkaTCPTransport]:
    broker, client = socket.socketpair()
    broker.sendall(b"\x00\x00\x00\x04auth-failed")  # a response ...
    broker.close()  # ... and the close, both waiting before the client reads
    client.setblocking(False)
    transport = KafkaTCPTransport(_Net(), client)
    protocol = _Protocol()
    transport.set_protocol(protocol)
    transport._read = True
    transport._close = lambda error=None: client.close()
    asyncio.run(read_from_sock(transport))
    return protocol, transport


def test_kafka_python_drops_data_read_with_eof():
    """The bug the workaround is for; when this fails, upstream fixed it: drop kafka_compat."""
    assert kafka_compat.apply()
    protocol, transport = _read_after_close(kafka_compat.original_read_from_sock())
    assert protocol.received == b"" and transport.is_closing()


def test_patched_transport_hands_the_response_over_before_closing():
    assert kafka_compat.apply()
    assert kafka_compat.apply()  # idempotent: the original stays reachable
    assert KafkaTCPTransport._read_from_sock is not kafka_compat.original_read_from_sock()
    protocol, transport = _read_after_close(KafkaTCPTransport._read_from_sock)
    assert protocol.received == b"\x00\x00\x00\x04auth-failed"
    assert transport.is_closing()
    assert transport._net.yields == 1  # the woken handshake ran before the abort


def test_a_protocol_error_in_the_delivered_bytes_aborts_with_it():
    class Broken(_Protocol):
        def data_received(self, data: bytes) -> None:
            raise errors.KafkaProtocolError("garbled")

    kafka_compat.apply()
    broker, client = socket.socketpair()
    broker.sendall(b"xx")
    broker.close()
    client.setblocking(False)
    transport = KafkaTCPTransport(_Net(), client)
    transport.set_protocol(Broken())
    transport._read = True
    seen: list = []
    transport._close = lambda error=None: seen.append(error)
    asyncio.run(KafkaTCPTransport._read_from_sock(transport))
    assert len(seen) == 1 and isinstance(seen[0], errors.KafkaProtocolError)


@pytest.mark.parametrize("version", ["2.2.15", "3.1.0"])
def test_other_series_are_left_alone(monkeypatch, version):
    import kafka

    monkeypatch.setattr(kafka, "__version__", version)
    assert kafka_compat.apply() is False
