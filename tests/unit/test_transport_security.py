"""Issue 12 item 7 without a broker: VREC_KAFKA_* -> every client's kwargs, the Faust app's
credentials, the worker's environment; VREC_QDRANT_API_KEY -> the api-key header; SIGTERM ->
the Ctrl-C path (item 8)."""

from __future__ import annotations

import os
import signal
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import faust
import pytest

from streams.kafka_security import (
    KafkaSecurityError,
    client_kwargs,
    faust_credentials,
    ssl_context,
)
from streams.procs import Terminated, signals_as_interrupt
from streams.settings import KafkaSecurity, Settings
from streams.store import open_store
from vrec_tools.harness import settings_env


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("VREC_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_plaintext_is_the_default(clean_env):
    settings = Settings()
    assert client_kwargs(settings) == {}
    assert faust_credentials(settings) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_from_env(clean_env, mechanism):
    clean_env.setenv("VREC_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    clean_env.setenv("VREC_KAFKA_SASL_MECHANISM", mechanism)
    clean_env.setenv("VREC_KAFKA_SASL_USERNAME", "alice")
    clean_env.setenv("VREC_KAFKA_SASL_PASSWORD", "s3cret")
    settings = Settings()
    assert client_kwargs(settings) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "alice",
        "sasl_plain_password": "s3cret",
    }
    creds = faust_credentials(settings)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == ("alice", "s3cret", mechanism)
    assert creds.protocol.value == "SASL_PLAINTEXT"
    assert "s3cret" not in repr(settings)  # the password is a SecretStr


def test_sasl_ssl_and_ssl(clean_env):
    sasl_ssl = KafkaSecurity(
        security_protocol="SASL_SSL", sasl_username="a", sasl_password="p", ssl_check_hostname=False
    )
    kw = client_kwargs(sasl_ssl)
    assert kw["security_protocol"] == "SASL_SSL" and isinstance(kw["ssl_context"], ssl.SSLContext)
    assert kw["ssl_context"].check_hostname is False
    assert faust_credentials(sasl_ssl).protocol.value == "SASL_SSL"
    only_ssl = KafkaSecurity(security_protocol="SSL")
    assert set(client_kwargs(only_ssl)) == {"security_protocol", "ssl_context"}
    assert isinstance(faust_credentials(only_ssl), faust.SSLCredentials)
    assert ssl_context(KafkaSecurity()) is None


def test_incomplete_settings_are_refused(clean_env):
    with pytest.raises(KafkaSecurityError, match="SASL_USERNAME"):
        client_kwargs(KafkaSecurity(security_protocol="SASL_PLAINTEXT"))
    with pytest.raises(KafkaSecurityError, match="SSL or SASL_SSL"):
        client_kwargs(KafkaSecurity(ssl_cafile="/ca.pem"))


def test_worker_environment_carries_security_and_secrets(clean_env):
    original = Settings(
        kafka=KafkaSecurity(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="alice",
            sasl_password="s3cret",
        ),
        qdrant_api_key="qkey",
    )
    env = settings_env(original)
    assert env["VREC_KAFKA_SASL_PASSWORD"] == "s3cret"  # the child needs it in clear
    assert env["VREC_QDRANT_API_KEY"] == "qkey"
    for name, value in env.items():
        clean_env.setenv(name, value)
    back = Settings()
    assert client_kwargs(back) == client_kwargs(original)
    assert back.qdrant_api_key.get_secret_value() == "qkey"


def test_qdrant_api_key_is_sent(clean_env):
    """VREC_QDRANT_API_KEY reaches the server as the api-key header."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.headers.get("api-key"))
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": {"error": "no"}}')

        do_GET = do_PUT = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        clean_env.setenv("VREC_QDRANT_API_KEY", "k-123")
        settings = Settings(store="qdrant", qdrant_url=f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(Exception):  # noqa: B017, PT011 - the fake server refuses everything
            open_store(
                settings.store,
                path=settings.data_dir,
                url=settings.qdrant_url,
                api_key=settings.qdrant_api_key,
                collection="c",
                vector_dims={"image": 4},
            )
    finally:
        server.shutdown()
    assert seen and set(seen) == {"k-123"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_take_the_ctrl_c_path(sig):
    cleaned = []
    with pytest.raises(Terminated) as info, signals_as_interrupt():
        try:
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises here
        finally:
            os.kill(os.getpid(), sig)  # a second signal does not cut the cleanup short
            cleaned.append(True)
    assert isinstance(info.value, KeyboardInterrupt) and info.value.exit_code == 128 + sig
    assert cleaned == [True]
    assert signal.getsignal(sig) is not None  # the previous handler is back
