"""A learned re-ranker of the live hybrid on the H&M dev split (docs/eval.md, "Upper bounds").

    .venv/bin/python bench/eval_learned.py [--cache .cache/embeddings.sqlite] [--depth 30]

Asks whether a model fitted on the dev truth can order warm customers' candidates better than
the hand-tuned weights. For every warm customer it takes the ``tuned`` top ``depth`` (items
never sold before the cutoff dropped: the catalogue only has them because they sold in the truth
period), describes each candidate with 28 features (its rank, the signals, the customer's basket,
the item's popularity, price, repurchase rate and categories; all from events before the
cutoff), fits scikit-learn's gradient-boosted trees on "bought in the truth period" and prints
the out-of-fold warm MAP@12 of 5-fold cross-validation grouped by customer, next to the tuned
top 12. Needs scikit-learn (installed with the ``torch`` extra). Runs in ~30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np

from vrec_tools.eval import baselines as B
from vrec_tools.eval.data import DEV_CUTOFF, DEV_END, catalogue_prices, dev_split, load_hm
from vrec_tools.eval.livecore import live_lists, live_settings
from vrec_tools.eval.metrics import map_at_k

CATEGORIES = ("product_type_name", "product_group_name", "garment_group_name", "index_group_name")
MODELS = {  # name -> HistGradientBoostingClassifier parameters
    "small trees, strong regularisation": dict(
        max_iter=150,
        learning_rate=0.05,
        max_leaf_nodes=7,
        min_samples_leaf=80,
        l2_regularization=5.0,
    ),  # fmt: skip
    "medium trees": dict(max_iter=200, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=40),
    "large trees": dict(
        max_iter=400,
        learning_rate=0.03,
        max_leaf_nodes=31,
        min_samples_leaf=20,
        l2_regularization=1.0,
    ),  # fmt: skip
}


def _codes(values: list[str]) -> np.ndarray:
    vocab = {v: k for k, v in enumerate(sorted(set(values)))}
    return np.array([vocab[v] for v in values])


def candidate_features(args: argparse.Namespace):
    """(X, y, group, item, users, truth, tuned lists, article ids, categorical columns)."""
    items, events = load_hm()
    split = dev_split(events)
    history, truth, warm = split
    cutoff = split.cutoff_day
    emb = B.catalogue_embeddings(items, args.cache)
    price = catalogue_prices(history, cutoff)
    users = sorted(warm)
    tuned = live_lists(  # the live core (the one ranker), in-process
        live_settings(args.depth, args.cache),
        users,
        cutoff=DEV_CUTOFF,
        end=DEV_END,
    )
    index = items.index()
    code = items.product_code
    cats = [_codes([r[a] for r in items.rows]) for a in CATEGORIES]
    ptype, dept = cats[0], _codes([r["department_name"] for r in items.rows])
    pop7 = B.popularity_counts(history, 7, cutoff, unique_customers=True, channel_weights={1: 2})
    pop1 = B.popularity_counts(history, 1, cutoff, unique_customers=True)
    pop1_store = B.popularity_counts(history, 1, cutoff, unique_customers=True,
                                     channel_weights={2: 0.0})  # fmt: skip
    pop_all = B.popularity_counts(history, 1e6, cutoff)
    co = B.co_counts(history, 0)
    days_of = collections.defaultdict(set)  # (user, item) -> purchase days
    for u, i, d in zip(history.user.tolist(), history.item.tolist(), history.day.tolist()):
        days_of[u, i].add(d)
    buyers = np.zeros(len(items))
    rebuyers = np.zeros(len(items))
    for (_, i), ds in days_of.items():
        buyers[i] += 1
        rebuyers[i] += len(ds) > 1
    by_user = collections.defaultdict(list)
    columns = (history.user, history.day, history.src_row, history.item, history.price,
               history.channel)  # fmt: skip
    for row in zip(*(c.tolist() for c in columns)):
        by_user[row[0]].append(row[1:])
    user_code = history.user_index()

    X, y, group, item = [], [], [], []
    for g, u in enumerate(users):
        ev = sorted(by_user[user_code[u]])
        its = np.array([e[2] for e in ev])
        age = cutoff - np.array([e[0] for e in ev])
        paid = np.array([e[3] for e in ev])
        online = float(np.mean([e[4] == 2 for e in ev]))
        last = age == age.min()
        count = collections.Counter(its.tolist())
        count_last = collections.Counter(its[last].tolist())
        last_age: dict[int, int] = {}
        for i, a in zip(its.tolist(), age.tolist()):
            last_age[i] = min(a, last_age.get(i, 10**6))
        n_code = collections.Counter(code[its].tolist())
        n_type = collections.Counter(ptype[its].tolist())
        n_dept = collections.Counter(dept[its].tolist())
        max_price = max(float(price[its].max()), 1e-9)
        w = np.exp2(-age / 30.0)
        vec = (w[:, None] * emb[its]).sum(axis=0)
        vec /= max(float(np.linalg.norm(vec)), 1e-12)
        seeds = np.unique(its)
        user_cols = [len(ev), int(last.sum()), len({e[0] for e in ev}), online, len(seeds),
                     float(paid[last].sum())]  # fmt: skip
        for rank, a in enumerate(tuned[u]):
            j = index[a]
            if pop_all[j] == 0 and j not in count:
                continue
            X.append([
                rank, j in count, count.get(j, 0), count_last.get(j, 0), last_age.get(j, 999),
                n_code[code[j]] - count.get(j, 0), n_type[ptype[j]], n_dept[dept[j]],
                sum(co.get(int(s), j) for s in seeds[:60]), float(emb[j] @ vec),
                pop7[j], pop1[j], pop1_store[j], pop_all[j], price[j], price[j] / max_price,
                rebuyers[j] / max(buyers[j], 1.0), buyers[j], *user_cols,
                *(c[j] for c in cats),
            ])  # fmt: skip
            y.append(a in truth[u])
            group.append(g)
            item.append(j)
    n_cols = len(X[0])
    categorical = list(range(n_cols - len(cats), n_cols))
    return (np.array(X, dtype=np.float64), np.array(y), np.array(group), np.array(item), users,
            truth, tuned, items.article_id, categorical)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import GroupKFold

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=None, help="embedding cache (sqlite)")
    ap.add_argument("--depth", type=int, default=30, help="candidates per customer (tuned top)")
    ap.add_argument("--seeds", type=int, default=2, help="fold shuffles per model")
    args = ap.parse_args(argv)

    t0 = time.time()
    X, y, group, item, users, truth, tuned, article_id, categorical = candidate_features(args)
    starts = np.searchsorted(group, np.arange(len(users) + 1))
    warm_truth = {u: truth[u] for u in users}
    tuned_map = map_at_k(warm_truth, tuned)
    print(f"warm customers {len(users)}, candidates {len(y)} (top {args.depth}), "
          f"bought {int(y.sum())}, features {X.shape[1]} ({time.time() - t0:.0f} s)")  # fmt: skip
    print(f"  tuned top 12 (hand-set weights): warm MAP@12 {tuned_map:.4f}")
    for name, params in MODELS.items():
        scores = []
        for seed in range(args.seeds):
            oof = np.zeros(len(y))
            folds = GroupKFold(n_splits=5, shuffle=True, random_state=seed)
            for train, test in folds.split(X, y, group):
                model = HistGradientBoostingClassifier(
                    categorical_features=categorical, random_state=seed, **params
                )
                model.fit(X[train], y[train])
                oof[test] = model.predict_proba(X[test])[:, 1]
            lists = {}
            for g, u in enumerate(users):
                rows = np.arange(starts[g], starts[g + 1])
                top = rows[np.argsort(-oof[rows], kind="stable")][:12]
                lists[u] = [str(article_id[item[r]]) for r in top]
            scores.append(map_at_k(warm_truth, lists))
        shown = " / ".join(f"{s:.4f}" for s in scores)
        print(f"  gradient-boosted trees, {name}: out-of-fold warm MAP@12 {shown} "
              f"(fold seeds 0..{args.seeds - 1})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
