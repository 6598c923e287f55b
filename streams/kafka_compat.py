"""A workaround for one kafka-python 3.0.x bug (pyproject.toml pins ``kafka-python>=3.0,<3.1``).

``kafka.net.transport.KafkaTCPTransport._read_from_sock`` (3.0.12) reads the socket until it would
block and, when the last ``recv`` returns EOF, aborts the connection *without handing the bytes read
before the EOF to the protocol*. A broker that answers and then closes (Kafka does exactly that
after a failed SASL authentication: an ``SaslAuthenticate`` error response, then the close) loses
its answer whenever the client reads late, e.g. on a loaded machine: the client then only sees
"socket disconnected" and times out with "Unable to bootstrap", and the wrong password is never
named. CI hit this (``test_kafka_sasl::test_wrong_password_fails_clearly``).

:func:`apply` replaces that one method with the same loop that delivers the bytes first, lets the
tasks they woke run (so the broker's own error wins) and then aborts.
``tests/unit/test_kafka_compat.py`` shows the bug on the original method and the fix on the
patched one; when kafka-python fixes it upstream, the first test fails and this module can go.
"""

from __future__ import annotations

import time
from typing import Any

PATCHED_SERIES = "3.0."  # the kafka-python releases whose transport has the bug

_original_read_from_sock: Any = None


async def _read_from_sock(self: Any) -> None:
    """kafka-python 3.0.12's loop, except that data read before an EOF reaches the protocol."""
    import kafka.errors as errors

    while self._read and not self._closed:
        await self._net.wait_read(self._sock)
        recvd_data, err = self._sock_recv()
        if recvd_data and self._protocol is not None:
            self.last_read = time.monotonic()
            if self._protocol._sensors:
                self._protocol._sensors.bytes_received.record(len(recvd_data))
            try:
                self._protocol.data_received(recvd_data)
            except errors.KafkaProtocolError as e:
                return self.abort(error=e)
            if err:
                # Let the tasks this response woke (e.g. the SASL handshake that fails on it)
                # run first: they close the connection with the broker's own error.
                await self._net.sleep(0)
        if err:
            return self.abort(error=err)  # a no-op if the protocol already closed it


def apply() -> bool:
    """Install the fix once (idempotent); False where kafka-python is absent or not 3.0.x."""
    global _original_read_from_sock
    try:
        import kafka
        from kafka.net import transport
    except ImportError:
        return False
    if not kafka.__version__.startswith(PATCHED_SERIES):
        return False
    cls = transport.KafkaTCPTransport
    if cls._read_from_sock is not _read_from_sock:
        _original_read_from_sock = cls._read_from_sock
        cls._read_from_sock = _read_from_sock
    return True


def original_read_from_sock() -> Any:
    """kafka-python's own method (for the test that shows the bug), or None before :func:`apply`."""
    return _original_read_from_sock
