"""The ``vrec`` command line: worker, broker, replay, demo, export-model."""

from __future__ import annotations

import argparse
import logging
import logging.config
import sys
from pathlib import Path

from streams.logs import logging_config
from streams.settings import REPO_ROOT, Settings, get_settings

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"


def _cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    return run_worker(get_settings(), loglevel=args.loglevel)


def _cmd_broker(args: argparse.Namespace) -> int:
    from vrec_tools.broker import broker_cli

    return broker_cli(args.rest)


def _cmd_export(args: argparse.Namespace) -> int:
    from encoders.registry import ensure_model

    print(ensure_model(args.model_dir or get_settings().model_dir))
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
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


def _cmd_tick(args: argparse.Namespace) -> int:
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from vrec_tools.demo import run_demo

    return run_demo(
        items=args.items or SAMPLE / "items.csv",
        log=args.log or SAMPLE / "events.jsonl",
        users=args.users,
    )


def _passthrough(module: str):
    """Subcommands owned by another module: ``module.main(argv) -> int``."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(importlib.import_module(module).main(args.rest) or 0)

    return run


def _cmd_bench(args: argparse.Namespace) -> int:
    targets = {
        "encoder": "encoders.training.bench",
        "pipeline": "vrec_tools.bench",
        "stream": "vrec_tools.benchstream:main_stream",
        "scale": "vrec_tools.benchstream:main_scale",
    }
    if not args.rest or args.rest[0] not in targets:
        print(f"usage: vrec bench {{{','.join(targets)}}} [options]")
        return 2
    import importlib

    module, _, func = targets[args.rest[0]].partition(":")
    return int(getattr(importlib.import_module(module), func or "main")(args.rest[1:]) or 0)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vrec", description="Streaming visual recommender")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run a Faust worker with all agents")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("broker", help="local Kafka broker: start | stop | status", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("export-model", help="export the ONNX image encoder (needs torch)")
    p.add_argument("--model-dir", type=Path)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("replay", help="send a recorded log (H&M CSV or vrec JSONL) to the topics")
    p.add_argument("log", type=Path, nargs="?", help="events.csv (H&M) or log.jsonl (vrec)")
    p.add_argument("--items", type=Path, help="H&M items.csv to upload as products first")
    p.add_argument("--limit-items", type=int)
    p.add_argument("--speed", type=float, default=0.0, help="x real time; 0 = as fast as possible")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser(
        "catalogue", help="import a shop's catalogue: CSV / JSONL / Parquet", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_passthrough("vrec_tools.catalogue_import"))

    p = sub.add_parser("tick", help="clock mark: close the days before TS (default: now)")
    p.add_argument("ts", nargs="?", help="epoch seconds or ISO date, e.g. 2020-09-17")
    p.set_defaults(func=_cmd_tick)

    p = sub.add_parser(
        "bench", help="benchmarks: encoder | pipeline | stream | scale", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("train", help="train: classify | distill | adversarial", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_passthrough("encoders.training.train"))

    p = sub.add_parser("eval", help="replay evaluation through the live pipeline", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_passthrough("vrec_tools.eval.cli"))

    p = sub.add_parser(
        "report", help="online quality per variant (worker counters or topics)", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_passthrough("vrec_tools.eval.report"))

    p = sub.add_parser("demo", help="broker + worker + sample catalogue + replay, then show recs")
    p.add_argument("--items", type=Path, help=f"default: {SAMPLE / 'items.csv'}")
    p.add_argument("--log", type=Path, help=f"default: {SAMPLE / 'events.jsonl'}")
    p.add_argument("--users", type=int, default=3, help="how many users to show")
    p.set_defaults(func=_cmd_demo)
    return ap


PASSTHROUGH = (
    "broker",
    "bench",
    "train",
    "eval",
    "catalogue",
    "report",
)  # their own parsers read the rest
# commands with their own SIGTERM handling: Faust's worker, the foreground broker
OWN_SIGNALS = ("worker", "broker")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0] in PASSTHROUGH:
        args = parser.parse_args(argv[:1])
        args.rest = argv[1:]
    else:
        args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    config = logging_config(get_settings().log_format, level)
    if config is not None:
        logging.config.dictConfig(config)
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("kafka").setLevel(logging.WARNING)
    if args.command in OWN_SIGNALS:
        return int(args.func(args) or 0)
    from streams.procs import Terminated, signals_as_interrupt

    # SIGTERM/SIGHUP (a CI or scheduler limit) take the Ctrl-C path: the with/finally blocks
    # of demo, eval and bench stop the broker and worker they started
    try:
        with signals_as_interrupt():
            return int(args.func(args) or 0)
    except Terminated as exc:
        print(f"vrec {args.command}: {exc}; stopped what it started", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Settings", "build_parser", "main"]
