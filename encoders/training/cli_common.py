"""Pieces shared by the command-line handlers in ``encoders.training``.

``vrec train distill`` and ``vrec train adversarial`` build their config from the parsed
arguments, pass the same run options and print their result the same way. This module imports no
other training module (and no torch), so any of them can use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any, TypeVar

C = TypeVar("C")


def log_stderr(message: str) -> None:
    """A training run's progress lines: stderr (stdout is left to the report)."""
    print(message, file=sys.stderr)


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """A config dataclass with the fields the command line sets (the others keep their
    defaults): ``cls(epochs=args.epochs, ...)``."""
    fields = [f.name for f in dataclasses.fields(cls) if hasattr(args, f.name)]
    return cls(**{name: getattr(args, name) for name in fields})


def run_options(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The keyword arguments of a training run: the held-out share, progress, the stderr log,
    and ``name=args.name`` for each of ``names``."""
    options: dict[str, Any] = {
        "holdout": args.holdout,
        "progress": not args.no_progress,
        "log": log_stderr,
    }
    options.update({name: getattr(args, name) for name in names})
    return options


def print_result(m: dict[str, Any], origin: str, report: Callable[[dict[str, Any]], str]) -> int:
    """Drop the live model from a run's metrics, name the exported file on stderr (``origin``:
    what it was trained from) and print ``report(m)``; the command's exit status (0)."""
    m.pop("_model")
    print(f"{m['model_id']} -> {m['onnx']} ({origin})", file=sys.stderr)
    print(report(m))
    return 0


__all__ = ["config_from_args", "log_stderr", "print_result", "run_options"]
