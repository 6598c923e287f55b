"""The ``vrec`` command line: one tree of subcommands, declared in :data:`COMMANDS`.

Each row names a command path (``"broker start"``), its help, its handler and its arguments. The
parser is built from the table with argparse subparsers; ``vrec --help`` lists every command.

A handler is ``"module:function"``, imported only when its command runs (so ``vrec --help`` and
``vrec worker`` do not import training code). It takes the parsed :class:`argparse.Namespace`,
with the arguments the row declares: a tuple of :func:`arg`, or ``"module:function"`` that adds
them to the command's parser. No command parses its own command line: this tree is the only
parser (``tests/unit/test_cli_tree.py`` checks it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import logging.config
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.logs import logging_config
from streams.settings import REPO_ROOT, Settings, get_settings

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    path: str  # words after ``vrec``, e.g. "broker start"
    help: str
    handler: str  # "module:function"
    args: tuple[Arg, ...] | str = ()  # the arguments, or "module:function(parser)" adding them
    own_signals: bool = False  # handles SIGTERM itself (Faust's worker, the foreground broker)

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self.path.split())


#: Help of the command groups (a group is the first word of several commands).
GROUPS = {
    "broker": "local Kafka broker (dev and tests)",
    "catalogue": "a shop's catalogue",
    "cache": "the image embedding cache",
    "bench": "benchmarks",
    "train": "train heads and encoders on image embeddings (needs torch)",
}

#: The arguments of ``vrec export-model`` and ``vrec export-text-model`` (one handler, run_export).
_EXPORT_ARGS = (
    arg("--model-dir", type=Path, help="default: VREC_MODEL_DIR"),
    arg("--force", action="store_true", help="re-export even if the file exists"),
)

#: Every ``vrec`` command.
COMMANDS: tuple[Command, ...] = (
    Command(
        "worker",
        "run a Faust worker with the agents of VREC_ROLES",
        "vrec_tools.cli:run_worker",
        (arg("--loglevel", default="INFO"),),
        own_signals=True,
    ),
    Command(
        "demo",
        "broker + worker + sample catalogue + replay, then show recs",
        "vrec_tools.cli:run_demo",
        (
            arg("--items", type=Path, help=f"default: {SAMPLE / 'items.csv'}"),
            arg("--log", type=Path, help=f"default: {SAMPLE / 'events.jsonl'}"),
            arg("--users", type=int, default=3, help="how many users to show"),
        ),
    ),
    Command(
        "replay",
        "send a recorded log (H&M CSV or vrec JSONL) to the topics",
        "vrec_tools.cli:run_replay",
        (
            arg("log", type=Path, nargs="?", help="events.csv (H&M) or log.jsonl (vrec)"),
            arg("--items", type=Path, help="H&M items.csv to upload as products first"),
            arg("--limit-items", type=int),
            arg("--speed", type=float, default=0.0, help="x real time; 0 = as fast as possible"),
        ),
    ),
    Command(
        "tick",
        "clock mark: close the days before TS (default: now)",
        "vrec_tools.cli:run_tick",
        (arg("ts", nargs="?", help="epoch seconds or ISO date, e.g. 2020-09-17"),),
    ),
    Command(
        "export-model",
        "export the ONNX image encoder if missing and print its path (needs torch)",
        "vrec_tools.cli:run_export",
        _EXPORT_ARGS,
    ),
    Command(
        "export-text-model",
        "export the ONNX text encoder (all-MiniLM-L6-v2) if missing and print its path",
        "vrec_tools.cli:run_export",
        _EXPORT_ARGS,
    ),
    Command(
        "broker start",
        "start the broker (no-op if it already runs)",
        "vrec_tools.broker:run_cli",
        "vrec_tools.broker:add_start_args",
        own_signals=True,  # --foreground stays attached and stops the broker on SIGTERM
    ),
    Command(
        "broker stop",
        "stop the broker",
        "vrec_tools.broker:run_cli",
        "vrec_tools.broker:add_stop_args",
    ),
    Command(
        "broker status",
        "is it running? (exit 0: yes, 1: no)",
        "vrec_tools.broker:run_cli",
        "vrec_tools.broker:add_status_args",
    ),
    Command(
        "catalogue import",
        "validate a CSV / JSONL / Parquet catalogue; send its products",
        "vrec_tools.catalogue_cli:run",
        "vrec_tools.catalogue_cli:add_import_args",
    ),
    Command(
        "cache fill",
        "embed a catalogue's images into the cache (default: the H&M items)",
        "encoders.cache:run_fill",
        "encoders.cache:add_fill_args",
    ),
    Command(
        "eval",
        "replay evaluation through the live pipeline (or an offline baseline)",
        "vrec_tools.eval.cli:run",
        "vrec_tools.eval.cli:add_args",
    ),
    Command(
        "eval catalogue",
        "catalogue-only evaluation: label precision of neighbours, a classifier",
        "vrec_tools.eval.catalogue:run",
        "vrec_tools.eval.catalogue:add_args",
    ),
    Command(
        "eval baselines",
        "offline baselines on the dev split",
        "vrec_tools.eval.baselines:run",
        "vrec_tools.eval.baselines:add_args",
    ),
    Command(
        "report",
        "online quality per variant (worker counters or topics)",
        "vrec_tools.eval.report:run",
        "vrec_tools.eval.report:add_args",
    ),
    Command(
        "bench encoder",
        "image encoder throughput and accuracy variants",
        "encoders.training.bench:run",
        "encoders.training.bench:add_args",
    ),
    Command(
        "bench pipeline",
        "end-to-end latency through a local broker and worker",
        "vrec_tools.bench:run",
        "vrec_tools.bench:add_args",
    ),
    Command(
        "bench stream",
        "sustained throughput and latency at offered loads",
        "vrec_tools.benchstream:run_stream",
        "vrec_tools.benchstream:add_stream_args",
    ),
    Command(
        "bench scale",
        "many users: state size, memory and recovery time",
        "vrec_tools.benchstream:run_scale",
        "vrec_tools.benchstream:add_scale_args",
    ),
    Command(
        "train classify",
        "softmax head: product type / group or any catalogue column",
        "encoders.training.train:run_classify_cli",
        "encoders.training.train:add_classify_args",
    ),
    Command(
        "train distill",
        "distil the encoder into a MobileNetV2",
        "encoders.training.distill:run_cli",
        "encoders.training.distill:add_args",
    ),
    Command(
        "train adversarial",
        "perturbation-robust fine-tuning",
        "encoders.training.adversarial:run_cli",
        "encoders.training.adversarial:add_args",
    ),
    Command(
        "train multimodal",
        "image + text fusion: measurements",
        "encoders.training.multimodal:run_cli",
        "encoders.training.multimodal:add_args",
    ),
    Command(
        "train similarity",
        "colour-aware projection head",
        "encoders.training.similarity:run_cli",
        "encoders.training.similarity:add_args",
    ),
)


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


# -- handlers of the commands declared here -----------------------------------------------------
def run_worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker as run

    return run(get_settings(), loglevel=args.loglevel)


def run_export(args: argparse.Namespace) -> int:
    """``vrec export-model`` / ``vrec export-text-model``: the ONNX file's path."""
    model_dir = args.model_dir or get_settings().encoder.model_dir
    if args._command.path == "export-text-model":
        from encoders.registry import ensure_text_model as ensure
        from encoders.text import ONNX_FILENAME
        from encoders.training.text_export import export_onnx
    else:
        from encoders.image import ONNX_FILENAME
        from encoders.registry import ensure_model as ensure
        from encoders.training.export import export_onnx
    print(export_onnx(model_dir / ONNX_FILENAME) if args.force else ensure(model_dir))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    from streams.worker import prepare_topics
    from vrec_tools.replay import Replayer, read_hm_items, read_log

    settings = get_settings()
    prepare_topics(settings)
    products, events = read_log(args.log) if args.log else ([], [])
    if args.items:
        products = read_hm_items(args.items, limit=args.limit_items) + products
    replayer = Replayer(settings)
    try:
        if products:
            n = replayer.send_products(products, progress=True)
            print(f"sent {n} products to {settings.topics.full('products')}")
        if events:
            n = replayer.send_events(events, speed=args.speed, progress=True)
            print(f"sent {n} events (speed {args.speed or 'max'})")
    finally:
        replayer.close()
    return 0


def run_tick(args: argparse.Namespace) -> int:
    """Close the days before a time: the worker re-ranks the users active in them."""
    import time

    from streams.events import to_epoch
    from vrec_tools.replay import Replayer

    settings = get_settings()
    ts = to_epoch(args.ts) if args.ts else time.time()
    replayer = Replayer(settings)
    try:
        replayer.send_tick(ts)
    finally:
        replayer.close()
    print(f"clock mark at {ts:.0f} sent to {settings.topics.full('purchases')}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from vrec_tools.demo import run_demo as run

    return run(
        items=args.items or SAMPLE / "items.csv",
        log=args.log or SAMPLE / "events.jsonl",
        users=args.users,
    )


# -- the parser -----------------------------------------------------------------------------------
def _selected(argv: Sequence[str]) -> Command | None:
    """The command the leading words of ``argv`` name (the longest match), if any."""
    words = [w for w in argv if not w.startswith("-")]
    best = None
    for cmd in COMMANDS:
        n = len(cmd.words)
        if tuple(words[:n]) == cmd.words and (best is None or n > len(best.words)):
            best = cmd
    return best


def build_parser(load: Command | None | bool = True) -> argparse.ArgumentParser:
    """The ``vrec`` parser from :data:`COMMANDS`. ``load``: whose arguments to add (True: every
    command's, which imports their modules; a Command: that one's; None/False: none, enough for
    ``vrec --help``)."""
    top = argparse.ArgumentParser(
        prog="vrec",
        description="Streaming visual recommender",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_command_list(),
    )
    top.add_argument("-v", "--verbose", action="store_true")
    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {(): top}
    subs: dict[tuple[str, ...], Any] = {}
    by_words = {cmd.words: cmd for cmd in COMMANDS}

    def node(words: tuple[str, ...]) -> argparse.ArgumentParser:
        if words in parsers:
            return parsers[words]
        parent = node(words[:-1])
        if words[:-1] not in subs:
            own = by_words.get(words[:-1])
            subs[words[:-1]] = parent.add_subparsers(
                dest=f"_{len(words)}", metavar="COMMAND", required=own is None
            )
        cmd = by_words.get(words)
        text = cmd.help if cmd is not None else GROUPS.get(words[0], "")
        p = subs[words[:-1]].add_parser(words[-1], help=text, description=text)
        parsers[words] = p
        return p

    for cmd in COMMANDS:
        p = node(cmd.words)
        p.set_defaults(_command=cmd)
        if load is True or load == cmd:
            if isinstance(cmd.args, str):
                _resolve(cmd.args)(p)
            else:
                for a in cmd.args:
                    p.add_argument(*a.flags, **a.options)
    return top


def _command_list() -> str:
    width = max(len(c.path) for c in COMMANDS)
    lines = ["commands:"] + [f"  vrec {c.path:<{width}}  {c.help}" for c in COMMANDS]
    return "\n".join(lines)


def _call(cmd: Command, args: argparse.Namespace) -> int:
    return int(_resolve(cmd.handler)(args) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(load=_selected(argv)).parse_args(argv)
    cmd = args._command
    level = logging.DEBUG if args.verbose else logging.INFO
    config = logging_config(get_settings().worker.log_format, level)
    if config is not None:
        logging.config.dictConfig(config)
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("kafka").setLevel(logging.WARNING)
    if cmd.own_signals:
        return _call(cmd, args)
    from streams.procs import Terminated, signals_as_interrupt

    # SIGTERM/SIGHUP (a CI or scheduler limit) take the Ctrl-C path: the with/finally blocks
    # of demo, eval and bench stop the broker and worker they started
    try:
        with signals_as_interrupt():
            return _call(cmd, args)
    except Terminated as exc:
        print(f"vrec {cmd.path}: {exc}; stopped what it started", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # python -m vrec_tools.cli: the harness starts workers this way
    sys.exit(main())


__all__ = ["COMMANDS", "Command", "Settings", "arg", "build_parser", "main"]
