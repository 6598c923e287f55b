"""``vrec report``: online quality per experiment variant, with 95% intervals.

Two sources:

- ``--metrics URL`` reads a worker's ``vrec_online_*`` counters (``GET /metrics``; its token with
  ``--token``) and prints, per variant (and ``--by`` trigger / strategy / kind), the events
  scored, hit@1/5/10/k with Wilson intervals and the MRR with a normal interval;
- ``--topics`` recounts from the ``recommendations`` and ``user-events`` topics of the
  configured broker (``VREC_*`` settings) with :func:`streams.eval.online.score_events`, adds
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

from streams.eval.online import (
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


def plot_daily(scored: Iterable[ScoredEvent], path: Path, day_s: float = 86_400.0) -> None:
    """Daily hit rate (anywhere in the list) per variant over event time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for s in scored:
        cell = per[s.variant][int(s.ts // day_s)]
        cell[0] += 1 if s.rank else 0
        cell[1] += 1
    fig, ax = plt.subplots(figsize=(8, 4))
    for variant, days in sorted(per.items()):
        xs = sorted(days)
        ax.plot(xs, [days[d][0] / days[d][1] for d in xs], marker=".", label=variant)
    ax.set_xlabel("event day (days since 1970)")
    ax.set_ylabel("hit rate of the last list")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _scrape(url: str, token: str | None) -> str:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (an operator's URL)
        return resp.read().decode()


def _from_topics(by: Sequence[str]):
    from streams.events import ItemEmbedding, Recommendation
    from streams.experiment import from_settings
    from streams.replay import read_topic
    from streams.settings import get_settings

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vrec report", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--metrics", help="a worker's /metrics URL")
    src.add_argument("--topics", action="store_true", help="recount from the topics")
    ap.add_argument("--token", help="the worker's web token (VREC_WEB_TOKEN)")
    ap.add_argument("--by", default="variant", help=f"comma list of {', '.join(LABELS)}")
    ap.add_argument("--json", type=Path, help="write the rows as JSON")
    ap.add_argument("--png", type=Path, help="(--topics) daily hit rate per variant")
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
