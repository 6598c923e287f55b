"""Kafka transport security from one settings group (:class:`~streams.settings.KafkaSecurity`).

Every Kafka client vrec makes takes its security options from here, never by hand:

- :func:`client_kwargs`: keyword arguments for kafka-python (``KafkaProducer``, ``KafkaConsumer``,
  ``KafkaAdminClient``) and aiokafka (``AIOKafkaConsumer``/``AIOKafkaProducer``) clients; both
  libraries take the same names (``security_protocol``, ``sasl_*``, ``ssl_context``);
- :func:`faust_credentials`: the Faust app's ``broker_credentials``.

PLAINTEXT (the default) gives ``{}`` and ``None``: clients keep their defaults.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Iterator, Mapping
from typing import Any

from streams import kafka_compat
from streams.settings import KafkaSecurity, Settings, StreamingSettings


class KafkaSecurityError(ValueError):
    """The ``VREC_KAFKA_*`` settings are incomplete or inconsistent."""


Source = Settings | StreamingSettings | KafkaSecurity


def _security(source: Source) -> KafkaSecurity:
    if isinstance(source, Settings):
        return source.kafka
    return source.security if isinstance(source, StreamingSettings) else source


class KafkaAuthenticationError(ConnectionError):
    """The broker rejected the client's credentials (SASL) or its TLS handshake."""


def uses_sasl(sec: KafkaSecurity) -> bool:
    return sec.security_protocol.startswith("SASL_")


def uses_ssl(sec: KafkaSecurity) -> bool:
    return sec.security_protocol in ("SSL", "SASL_SSL")


def check(sec: KafkaSecurity) -> None:
    """Raise :class:`KafkaSecurityError` for settings no client could connect with."""
    if uses_sasl(sec) and not sec.sasl_username:
        raise KafkaSecurityError(
            f"VREC_KAFKA_SECURITY_PROTOCOL={sec.security_protocol} needs VREC_KAFKA_SASL_USERNAME "
            "and VREC_KAFKA_SASL_PASSWORD"
        )
    if sec.ssl_keyfile and not sec.ssl_certfile:  # a certfile alone may hold cert and key
        raise KafkaSecurityError("VREC_KAFKA_SSL_KEYFILE needs VREC_KAFKA_SSL_CERTFILE")
    if not uses_ssl(sec) and (sec.ssl_cafile or sec.ssl_certfile or sec.ssl_keyfile):
        raise KafkaSecurityError(
            f"VREC_KAFKA_SSL_* files are set but VREC_KAFKA_SECURITY_PROTOCOL is "
            f"{sec.security_protocol} (use SSL or SASL_SSL)"
        )


def ssl_context(source: Source) -> ssl.SSLContext | None:
    """A client TLS context (CA file, optional client certificate), or None without SSL."""
    sec = _security(source)
    if not uses_ssl(sec):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=sec.ssl_cafile or None)
    ctx.check_hostname = sec.ssl_check_hostname
    if sec.ssl_certfile:
        ctx.load_cert_chain(
            sec.ssl_certfile,
            sec.ssl_keyfile or None,
            sec.ssl_key_password.get_secret_value() or None,
        )
    return ctx


def client_kwargs(source: Source) -> dict[str, Any]:
    """Security keyword arguments for a kafka-python or aiokafka client ({} for PLAINTEXT)."""
    sec = _security(source)
    check(sec)
    kafka_compat.apply()
    if sec.security_protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security_protocol": sec.security_protocol}
    if uses_sasl(sec):
        out["sasl_mechanism"] = sec.sasl_mechanism
        out["sasl_plain_username"] = sec.sasl_username
        out["sasl_plain_password"] = sec.sasl_password.get_secret_value()
    if uses_ssl(sec):
        out["ssl_context"] = ssl_context(sec)
    return out


def faust_credentials(source: Source) -> Any:
    """The Faust app's ``broker_credentials`` (``faust.SASLCredentials`` or
    ``faust.SSLCredentials``), or None for PLAINTEXT."""
    import faust

    sec = _security(source)
    check(sec)
    if uses_sasl(sec):
        return faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password.get_secret_value(),
            mechanism=sec.sasl_mechanism,
            ssl_context=ssl_context(sec),  # a context makes it SASL_SSL
        )
    if uses_ssl(sec):
        return faust.SSLCredentials(ssl_context(sec))
    return None


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "AuthenticationFailed" in msg or "SSLError" in msg or "CERTIFICATE_VERIFY" in msg:
            self.reasons.append(msg)


@contextlib.contextmanager
def explain_auth_failures(bootstrap: str, security: Mapping[str, Any]) -> Iterator[None]:
    """Turn a kafka-python client's bootstrap failure into :class:`KafkaAuthenticationError`
    when the broker rejected its credentials or TLS (kafka-python only logs that reason and
    then raises a timeout)."""
    kafka_compat.apply()
    capture = _Capture()
    logger = logging.getLogger("kafka")
    logger.addHandler(capture)
    try:
        yield
    except Exception as exc:
        if not capture.reasons:
            raise
        who = security.get("sasl_plain_username")
        raise KafkaAuthenticationError(
            f"Kafka at {bootstrap} refused the connection "
            f"({security.get('security_protocol', 'PLAINTEXT')}"
            + (f", {security.get('sasl_mechanism')} user {who!r}" if who else "")
            + f"): {capture.reasons[-1]}; check VREC_KAFKA_SASL_USERNAME/PASSWORD and "
            "VREC_KAFKA_SSL_*"
        ) from exc
    finally:
        logger.removeHandler(capture)
