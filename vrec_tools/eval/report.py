"""``vrec report``: online quality per experiment variant, with 95% intervals.

Two sources:

- ``--metrics URL`` reads a worker's ``vrec_online_*`` counters (``GET /metrics``; its token with
  ``--token``) and prints, per variant (and ``--by`` trigger / strategy / kind), the events
  scored, hit@1/5/10/k with Wilson intervals and the MRR with a normal interval;
- ``--topics`` recounts from the ``recommendations`` and ``user-events`` topics of the
  configured broker (``VREC_*`` settings) with :func:`vrec_tools.eval.online.score_events`, adds
  intra-list diversity, catalogue coverage and the share of trending items, and draws the daily
  hit rate per variant over event time (``--png``).
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from vrec_tools.eval.online import (
    ScoredEvent,
    list_quality,
    mean_interval,
    score_events,
    summarise,
    wilson,
)

AT = ("1", "5", "10", "k")
LABELS = ("variant", "trigger", "strategy", "kind")


def parse_counters(text: str) -> dict[tuple, dict[str, float]]:
    """(variant, trigger, strategy, kind) -> events, hits@1/5/10/k, rr, rr_squared."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not (s.name.startswith("vrec_online_") and s.name.endswith("_total")):
                continue
            key = tuple(s.labels[k] for k in LABELS)
            name = s.name.removeprefix("vrec_online_").removesuffix("_total")
            if name == "hits":
                name = f"hits@{s.labels['at']}"
            out[key][name] += s.value
    return out


def counter_table(counters: Mapping[tuple, Mapping[str, float]], by: Sequence[str]) -> list[dict]:
    """Rows grouped by ``by`` (a subset of LABELS), with intervals."""
    groups: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for key, values in counters.items():
        g = tuple(key[LABELS.index(f)] for f in by)
        for name, v in values.items():
            groups[g][name] += v
    rows = []
    for g, c in sorted(groups.items()):
        n = int(c["events"])
        row: dict = dict(zip(by, g), events=n)
        for at in AT:
            hits = int(c[f"hits@{at}"])
            row[f"hit@{at}"] = hits / n if n else 0.0
            row[f"hit@{at}_ci"] = wilson(hits, n)
        row["mrr"] = c["rr"] / n if n else 0.0
        row["mrr_ci"] = mean_interval(c["rr"], c["rr_squared"], n)
        rows.append(row)
    return rows


def scored_table(scored: Iterable[ScoredEvent], by: Sequence[str]) -> list[dict]:
    rows = []
    scored = list(scored)
    for key, s in summarise(scored, by).items():
        row: dict = dict(zip(by, key), events=s["events"])
        for at in AT:
            sub = summarise(scored, by, at=None if at == "k" else int(at))[key]
            row[f"hit@{at}"] = sub["hit_rate"]
            row[f"hit@{at}_ci"] = sub["hit_rate_ci"]
        row["mrr"], row["mrr_ci"] = s["mrr"], s["mrr_ci"]
        rows.append(row)
    return rows


def markdown(rows: list[dict], by: Sequence[str], quality: Mapping | None = None) -> str:
    head = [*by, "events", *(f"hit@{a}" for a in AT), "MRR"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r[f]) for f in by] + [str(r["events"])]
        cells += [_ci(r[f"hit@{a}"], r[f"hit@{a}_ci"]) for a in AT]
        cells.append(_ci(r["mrr"], r["mrr_ci"], digits=4))
        out.append("| " + " | ".join(cells) + " |")
    if quality:
        out += ["", "| variant | diversity | coverage | trending share |", "|---|---|---|---|"]
        for v, q in quality.items():
            out.append(
                f"| {v} | {q['diversity']:.3f} | {q['coverage']:.3f} | {q['trending_share']:.3f} |"
            )
    return "\n".join(out)


def _ci(value: float, ci: tuple[float, float], digits: int = 3) -> str:
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def plot_daily(
    scored: Iterable[ScoredEvent], path: Path, day_s: float = 86_400.0, bins: int = 40
) -> None:
    """Hit rate (anywhere in the list) per variant over event time, in at most ``bins`` bins of
    whole days, drawn with Pillow."""
    from PIL import Image, ImageDraw

    scored = list(scored)
    if scored:
        first = min(int(s.ts // day_s) for s in scored)
        span = max(int(s.ts // day_s) for s in scored) - first + 1
        width = max(1, -(-span // bins))  # days per bin
    per: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for s in scored:
        day = int(s.ts // day_s)
        cell = per[s.variant][first + (day - first) // width * width]
        cell[0] += 1 if s.rank else 0
        cell[1] += 1
    days = sorted({d for v in per.values() for d in v})
    w, h, pad = 900, 420, 50
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([pad, pad // 2, w - pad // 2, h - pad], outline="black")
    if days:
        top = max(c[0] / c[1] for v in per.values() for c in v.values()) or 1.0
        span = max(1, days[-1] - days[0])

        def xy(day: int, rate: float) -> tuple[float, float]:
            x = pad + (day - days[0]) / span * (w - 1.5 * pad)
            return x, h - pad - rate / top * (h - 1.5 * pad)

        colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
        for n, (variant, cells) in enumerate(sorted(per.items())):
            colour = colours[n % len(colours)]
            points = [xy(d, cells[d][0] / cells[d][1]) for d in sorted(cells)]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for x, y in points:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
            draw.text((pad + 10, pad // 2 + 5 + 14 * n), f"{variant}", fill=colour)
        draw.text((pad, h - pad + 8), f"day {days[0]}", fill="black")
        draw.text((w - 2 * pad, h - pad + 8), f"day {days[-1]}", fill="black")
        draw.text((5, pad // 2), f"{top:.2f}", fill="black")
        draw.text((5, h - pad - 10), "0", fill="black")
    label = f"hit rate of the last list, per {width if scored else 1} event day(s)"
    draw.text((w // 2 - 120, h - 20), label, fill="black")
    img.save(path)


def _scrape(url: str, token: str | None) -> str:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (an operator's URL)
        return resp.read().decode()


def _from_topics(by: Sequence[str]):
    from streams.events import ItemEmbedding, Recommendation
    from streams.experiment import from_settings
    from streams.settings import get_settings
    from vrec_tools.replay import read_topic

    s = get_settings()
    exp = from_settings(s)
    recs = [Recommendation.from_bytes(r.value) for r in read_topic(s, "recommendations", idle=2)]
    user_events = read_topic(s, "user_events", idle=2)
    items = {}
    for r in read_topic(s, "item_embeddings", idle=2):
        if r.value is not None:
            e = ItemEmbedding.from_bytes(r.value)
            items[e.item_id] = e.vector
    own = exp.assign if exp is not None and not exp.shadow else None
    scored = score_events(user_events, recs, known=set(items), own=own)
    return scored, list_quality(recs, items, len(items))


def add_args(ap: argparse.ArgumentParser) -> None:
    """``vrec report``."""
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--metrics", help="a worker's /metrics URL")
    src.add_argument("--topics", action="store_true", help="recount from the topics")
    ap.add_argument("--token", help="the worker's web token (VREC_WEB_TOKEN)")
    ap.add_argument("--by", default="variant", help=f"comma list of {', '.join(LABELS)}")
    ap.add_argument("--json", type=Path, help="write the rows as JSON")
    ap.add_argument("--png", type=Path, help="(--topics) hit rate per variant over event time")


def run(args: argparse.Namespace) -> int:
    by = [f for f in args.by.split(",") if f]
    if bad := [f for f in by if f not in LABELS]:
        raise SystemExit(f"--by: unknown {bad}; choose from {LABELS}")
    quality = None
    if args.metrics:
        rows = counter_table(parse_counters(_scrape(args.metrics, args.token)), by)
    else:
        scored, quality = _from_topics(by)
        rows = scored_table(scored, by)
        if args.png:
            plot_daily(scored, args.png)
    print(markdown(rows, by, quality))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "quality": quality}, indent=2))
    return 0
