"""Child processes that do not outlive the command that started them.

- :func:`signals_as_interrupt`: SIGTERM and SIGHUP (a CI or scheduler time limit, a closed
  terminal) raise :class:`Terminated` (a ``KeyboardInterrupt``) in the main thread, so the
  ``with``/``finally`` blocks that stop a broker or a worker run exactly as on Ctrl-C;
- :func:`die_with_parent`: a ``preexec_fn`` that makes a child get SIGTERM when its parent dies
  (Linux ``PR_SET_PDEATHSIG``), for when the parent cannot clean up (SIGKILL, a crash).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """A stop signal (SIGTERM/SIGHUP) turned into the Ctrl-C path; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal (SIGTERM: 143)."""
        return 128 + self.signum


def _stop_handler() -> Callable[[int, FrameType | None], None]:
    fired = False

    def _handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal fired
        if fired:  # cleanup of the first one is running
            return
        fired = True
        raise Terminated(signum)

    return _handler


@contextlib.contextmanager
def signals_as_interrupt(signals: Sequence[signal.Signals] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block the first of ``signals`` raises :class:`Terminated` in the main thread;
    later ones are ignored so that the cleanup it starts is not cut short. The previous
    handlers come back on exit. Outside the main thread this does nothing (Python delivers
    signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _stop_handler()
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def install_stop_handlers(signals: Sequence[signal.Signals] = STOP_SIGNALS) -> None:
    """:func:`signals_as_interrupt` for the rest of the process (e.g. a pytest session);
    call it from the main thread."""
    handler = _stop_handler()
    for sig in signals:
        signal.signal(sig, handler)


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``subprocess.Popen(preexec_fn=...)`` after which the child gets ``sig`` when the
    thread that started it exits (so start children from the main thread); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
    parent = os.getpid()

    def _preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
            os._exit(1)

    return _preexec


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True
