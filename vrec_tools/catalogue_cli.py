"""``vrec catalogue import``: read a shop's catalogue with :mod:`vrec_tools.catalogue_import`,
send the accepted products through :class:`vrec_tools.replay.Replayer` and dead-letter the
refused rows (the command line only; the importer itself sends nothing)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streams.settings import get_settings
from streams.worker import prepare_topics
from vrec_tools.catalogue_import import column_map, plan_import, send_import, summary
from vrec_tools.replay import Replayer


def add_import_args(p: argparse.ArgumentParser) -> None:
    """``vrec catalogue import``."""
    p.add_argument("file", type=Path)
    p.add_argument("--map", dest="map_spec", help="field=column,... or a preset (hm)")
    p.add_argument("--map-file", type=Path, help="the column map as JSON")
    p.add_argument("--format", choices=["csv", "tsv", "jsonl", "parquet"], default=None)
    p.add_argument("--limit", type=int, default=None, help="read at most N rows")
    p.add_argument("--dry-run", action="store_true", help="validate and report; send nothing")
    p.add_argument(
        "--no-check-images", action="store_true", help="do not check that image files exist here"
    )
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """``vrec catalogue import``: exit 0 when every row was sent, 1 when some were refused
    (dead-lettered), 2 when the map or the file is unusable (nothing sent)."""
    try:
        cmap = column_map(args.map_spec, args.map_file)
        plan = plan_import(
            args.file,
            cmap,
            fmt=args.format,
            limit=args.limit,
            check_images=not args.no_check_images,
        )
    except ValueError as exc:
        print(f"vrec catalogue import: {exc}", file=sys.stderr)
        return 2
    for refusal in plan.refused:
        print(refusal.message, file=sys.stderr)
    sent = None
    if not args.dry_run:
        settings = get_settings()
        prepare_topics(settings)
        replayer = Replayer(settings)
        try:
            sent = send_import(replayer, plan, progress=not args.no_progress)
        finally:
            replayer.close()
        if plan.refused:
            print(
                f"{len(plan.refused)} refused rows sent to {settings.topics.full('dead_letters')}",
                file=sys.stderr,
            )
    print(summary(plan, sent))
    return 1 if plan.refused else 0
