"""``vrec eval --protocol prequential``: every truth event scored against the list its user had.

The batch protocol scores the list each customer has at the cut-off against everything they
buy in the truth days. The prequential protocol is its streaming counterpart: the history and
then the truth days go through the live pipeline (a clock mark closes each day, as a scheduler
would at midnight), and each truth purchase is scored against the newest list published to its
user before the worker folded it (:func:`vrec_tools.eval.online.score_events`). With an experiment
(``VREC_VARIANTS``) the worker runs in shadow mode, so every variant ranks every user and the
variants are compared on the same events: per-variant hit rate and MRR with intervals, and
paired differences against the first variant with a bootstrap over customers.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from streams.events import Interaction, Recommendation
from streams.settings import Settings
from vrec_tools.eval.online import list_quality, paired_difference, score_events, summarise

DAY = 86_400.0


def replay_prequential(
    settings: Settings,
    products: Sequence,
    history: Sequence[Interaction],
    truth: Sequence[Interaction],
    progress: bool = False,
):
    """Run the pipeline over history then truth (a clock mark after each day of the truth);
    return (recommendations, user-events records, item vectors, timings)."""
    from vrec_tools.harness import Pipeline, local_broker

    timings: dict[str, float] = {}
    with local_broker(settings), Pipeline(settings) as pipe:
        t0 = time.monotonic()
        pipe.index(products, timeout=3600)
        timings["index_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        pipe.replay(history, timeout=7200, progress=progress)
        if history:
            pipe.close_days((max(e.ts for e in history) // DAY + 1) * DAY, timeout=3600)
        days: dict[int, list[Interaction]] = defaultdict(list)
        for e in truth:
            days[int(e.ts // DAY)].append(e)
        for day, events in sorted(days.items()):
            pipe.replay(events, timeout=3600)
            pipe.close_days((day + 1) * DAY, timeout=3600)
        timings["replay_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        recs = [Recommendation.from_bytes(r.value) for r in pipe.recommendation_records(idle=3.0)]
        user_events = pipe.read("user_events", idle=1.0, timeout=120)
        vectors = {i: e.vector for i, e in pipe.embeddings().items()}
        timings["collect_s"] = time.monotonic() - t0
    return recs, user_events, vectors, timings


def prequential_report(
    recs: Sequence[Recommendation],
    user_events: Sequence,
    vectors: dict,
    truth: Sequence[Interaction],
    variants: Sequence[str],
    k: int,
) -> dict:
    """Scores of the truth events per variant, paired differences against the first variant,
    and the lists' diversity, coverage and trending share."""
    truth_ids = {e.event_id for e in truth}
    scored = [
        s for s in score_events(user_events, recs, known=set(vectors)) if s.event_id in truth_ids
    ]
    per = summarise(scored, ("variant",))
    at_k = summarise(scored, ("variant",), at=k)
    report: dict = {
        "protocol": "prequential",
        "truth_events": len(truth_ids),
        "variants": {},
        "paired": {},
        "quality": list_quality(recs, vectors, len(vectors)),
    }
    for (variant,), s in per.items():
        report["variants"][variant] = {
            "events_scored": s["events"],
            "users": len({x.user_id for x in scored if x.variant == variant}),
            f"hit@{k}": at_k[(variant,)]["hit_rate"],
            f"hit@{k}_ci": at_k[(variant,)]["hit_rate_ci"],
            "mrr": s["mrr"],
            "mrr_ci": s["mrr_ci"],
        }
    names = [v for v in variants if v in report["variants"]] or sorted(report["variants"])
    for other in names[1:]:
        report["paired"][f"{other} - {names[0]}"] = {
            "hit": paired_difference(scored, names[0], other, "hit"),
            "rr": paired_difference(scored, names[0], other, "rr"),
        }
    return report


def markdown(report: dict, k: int) -> str:
    rows = [
        f"Prequential: {report['truth_events']} truth events; each scored against the list its "
        "user had just before it.",
        "",
        f"| variant | events scored | users | hit@{k} [95% CI] | MRR [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for v, s in report["variants"].items():
        lo, hi = s[f"hit@{k}_ci"]
        mlo, mhi = s["mrr_ci"]
        rows.append(
            f"| {v} | {s['events_scored']} | {s['users']} | {s[f'hit@{k}']:.4f} "
            f"[{lo:.4f}, {hi:.4f}] | {s['mrr']:.4f} [{mlo:.4f}, {mhi:.4f}] |"
        )
    if report["paired"]:
        rows += ["", "| paired (same events) | events | hit diff [95% CI] | RR diff [95% CI] |"]
        rows.append("|---|---|---|---|")
        for name, d in report["paired"].items():
            h, r = d["hit"], d["rr"]
            rows.append(
                f"| {name} | {h['events']} | {h['diff']:+.4f} [{h['ci'][0]:+.4f}, "
                f"{h['ci'][1]:+.4f}] | {r['diff']:+.4f} [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}] |"
            )
    rows += ["", "| variant | diversity | coverage | trending share |", "|---|---|---|---|"]
    for v, q in report["quality"].items():
        rows.append(
            f"| {v} | {q['diversity']:.3f} | {q['coverage']:.3f} | {q['trending_share']:.3f} |"
        )
    return "\n".join(rows)


def write(report: dict, out: Path, k: int) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report, k)
    out.with_suffix(".md").write_text(text)
    return text
