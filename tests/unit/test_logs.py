"""Structured (JSON) logs: every line one object with the standard fields and the extras."""

from __future__ import annotations

import io
import json
import logging
import logging.config

from streams.logs import JsonFormatter, logging_config


def _capture(config: dict) -> tuple[io.StringIO, logging.Logger]:
    buf = io.StringIO()
    logging.config.dictConfig(config)
    handler = logging.root.handlers[0]
    assert isinstance(handler.formatter, JsonFormatter)
    handler.setStream(buf)
    return buf, logging.getLogger("vrec.test")


def test_json_lines_carry_fields_extras_and_exceptions():
    config = logging_config("json", "INFO")
    assert config is not None
    root_handlers = list(logging.root.handlers)
    try:
        buf, log = _capture(config)
        log.info("embedded %d products", 3, extra={"batch": 3, "model_id": "m-1"})
        log.debug("not at INFO")
        try:
            raise ValueError("bad image")
        except ValueError:
            log.exception("dead letter", extra={"path": object()})
    finally:
        logging.root.handlers[:] = root_handlers
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["message"] == "embedded 3 products" and first["level"] == "INFO"
    assert first["logger"] == "vrec.test" and first["batch"] == 3 and first["model_id"] == "m-1"
    assert first["ts"].endswith("+00:00") and isinstance(first["pid"], int)
    assert "args" not in first and "msg" not in first
    assert second["level"] == "ERROR" and "ValueError: bad image" in second["exc"]
    assert second["path"].startswith("<object object")  # not JSON: written as its str()


def test_text_format_keeps_the_default():
    assert logging_config("text") is None
