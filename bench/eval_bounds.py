"""Upper bounds of MAP@12 on the H&M dev split (docs/eval.md, "Upper bounds").

    .venv/bin/python bench/eval_bounds.py [--cache .cache/embeddings.sqlite]

Prints, offline (numpy, the live core of vrec_tools.eval.livecore):

* cold customers: our popularity list, and the best single list in hindsight (the 12 articles
  cold customers bought most in the truth period);
* the warm MAP@12 that MAP(all) >= 0.0170 needs with either cold list;
* warm customers: the tuned top 12, and the same ranking with a perfect order among the user's
  own items only, among siblings only, and of the top 12;
* within-customer AUC of features for "which of my 09-16 items comes back" (fraction of
  (bought again, not bought again) pairs of one customer ordered right; category rates are
  fitted on the truth itself, so they are optimistic).
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Callable
from pathlib import Path

from vrec_tools.eval import baselines as B
from vrec_tools.eval.data import DEV_CUTOFF, DEV_END, catalogue_prices, dev_split, load_hm
from vrec_tools.eval.livecore import live_lists, live_settings
from vrec_tools.eval.metrics import apk, map_at_k

TARGET_ALL = 0.0170
DEPTH = 500  # ranking depth the oracles reorder within


def _reorder(ranked: list[str], mask: list[bool], truth: set[str]) -> list[str]:
    """``ranked`` with the masked positions holding their items hits first."""
    pos = [i for i, m in enumerate(mask) if m]
    items = sorted((ranked[i] for i in pos), key=lambda a: a not in truth)
    out = list(ranked)
    for p, a in zip(pos, items):
        out[p] = a
    return out


def _within_user_auc(records, score: Callable[[str, int], float]) -> float:
    by_user = collections.defaultdict(list)
    for u, i, y in records:
        by_user[u].append((score(u, i), y))
    right = total = 0.0
    for rows in by_user.values():
        pos = [s for s, y in rows if y]
        neg = [s for s, y in rows if not y]
        for a in pos:
            for b in neg:
                total += 1
                right += (a > b) + 0.5 * (a == b)
    return right / total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=None, help="embedding cache (sqlite)")
    args = ap.parse_args(argv)

    items, events = load_hm()
    split = dev_split(events)
    history, truth, warm = split
    cutoff = split.cutoff_day
    cold = [u for u in truth if u not in warm]
    share_cold = len(cold) / len(truth)

    # -- cold customers: one list for all
    pop = [str(a) for a in items.article_id[
        B.popularity_ranking(history, 7, cutoff, 12, unique_customers=True,
                             channel_weights={1: 2.0})
    ]]  # fmt: skip
    cold_truth = {u: truth[u] for u in cold}
    ours = map_at_k(cold_truth, dict.fromkeys(cold, pop))
    bought = collections.Counter(a for u in cold for a in truth[u])
    hindsight = [a for a, _ in bought.most_common(12)]
    best = map_at_k(cold_truth, dict.fromkeys(cold, hindsight))
    print(f"cold customers {len(cold)} ({share_cold:.1%}): our list {ours:.5f}, "
          f"best list in hindsight {best:.5f}")  # fmt: skip
    for name, c in (("our cold list", ours), ("the hindsight cold list", best)):
        need = (TARGET_ALL - share_cold * c) / (1 - share_cold)
        print(f"  warm MAP@12 needed for all >= {TARGET_ALL} with {name}: {need:.3f}")

    # -- warm customers: the tuned ranking and perfect reorderings of parts of it
    price = catalogue_prices(history, cutoff)
    users = sorted(warm)
    ranked = live_lists(  # the live core (the one ranker), in-process
        live_settings(DEPTH, args.cache),
        users,
        cutoff=DEV_CUTOFF,
        end=DEV_END,
    )
    index = items.index()
    own_of = collections.defaultdict(set)
    for u, i in zip(history.user, history.item):
        own_of[history.users[u]].add(str(items.article_id[i]))
    code = {a: int(items.product_code[i]) for a, i in index.items()}
    sums = collections.Counter()
    for u in users:
        lst, t, own = ranked[u], truth[u], own_of[u]
        codes = {code[a] for a in own}
        is_own = [a in own for a in lst]
        is_sib = [a not in own and code[a] in codes for a in lst]
        sums["tuned top 12"] += apk(t, lst[:12], 12)
        sums["perfect order of own items"] += apk(t, _reorder(lst, is_own, t)[:12], 12)
        sums["perfect order of siblings"] += apk(t, _reorder(lst, is_sib, t)[:12], 12)
        sums["perfect order of the top 12"] += apk(t, _reorder(lst[:12], [True] * 12, t), 12)
    print(f"warm customers {len(users)}:")
    for name, total in sums.items():
        print(f"  {name}: {total / len(users):.4f}")

    # -- which of a customer's 09-16 items comes back: within-customer AUC
    last_day = history.day == cutoff - 1
    rows = items.rows
    basket = collections.defaultdict(list)  # user -> [(position, item, channel, paid)]
    for pos, (u, i, ch, p) in enumerate(
        zip(history.user[last_day], history.item[last_day], history.channel[last_day],
            history.price[last_day])
    ):  # fmt: skip
        basket[history.users[u]].append((pos, int(i), int(ch), float(p)))
    records = [
        (u, i, str(items.article_id[i]) in truth[u])
        for u, lst in basket.items()
        if u in truth
        for i in sorted({i for _, i, _, _ in lst})
    ]
    first_pos = {(u, i): pos for u, lst in basket.items() for pos, i, _, _ in reversed(lst)}
    online = {(u, i) for u, lst in basket.items() for _, i, ch, _ in lst if ch == 2}
    paid = {(u, i): p for u, lst in basket.items() for _, i, _, p in lst}
    pop7 = B.popularity_counts(history, 7, cutoff, unique_customers=True,
                               channel_weights={1: 2.0})  # fmt: skip
    features: dict[str, Callable[[str, int], float]] = {
        "catalogue price": lambda u, i: price[i],
        "paid / catalogue price": lambda u, i: paid[u, i] / max(price[i], 1e-9),
        "bought online": lambda u, i: float((u, i) in online),
        "7-day popularity": lambda u, i: pop7[i],
        "basket order": lambda u, i: first_pos[u, i],
    }
    for attr in ("product_type_name", "department_name", "garment_group_name",
                 "section_name", "index_name"):  # fmt: skip
        hits = collections.defaultdict(lambda: [0, 0])
        for _, i, y in records:
            hits[rows[i][attr]][0] += 1
            hits[rows[i][attr]][1] += y
        base = sum(h for _, h in hits.values()) / len(records)
        rate = {k: (h + 10 * base) / (n + 10) for k, (n, h) in hits.items()}
        features[f"{attr} rate (in-sample)"] = lambda u, i, r=rate, a=attr: r[rows[i][a]]
    print(f"which own item comes back, within-customer AUC ({len(records)} items):")
    for name, score in features.items():
        print(f"  {name}: {_within_user_auc(records, score):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
