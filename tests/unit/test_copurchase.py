"""streams.ranking.copurchase: basket counting, the per-row bound, the cells reported for storage.

The bound, as the module docstring defines it: after an increment, a row keeps the first
``max_neighbours`` entries in the order (count desc, then item id); the others are dropped and
their counts forgotten. The property test replays random baskets against a plain-dict model of
that rule and against a storage mirror kept only from the reported changed/dropped cells.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.ranking.copurchase import CoPurchase
from streams.tables import copurchase_key, parse_copurchase_key

MAX_EXAMPLES = 300
ITEMS = ["a", "b", "c", "d", "e", "f", "g", "é", "a|b"]


def _rank(row: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))


class Model:
    """The docstring's rule with plain dicts."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.rows: dict[str, dict[str, int]] = {}

    def add(self, item: str, basket) -> None:
        for a in sorted(set(basket) - {item}):
            for row_id, other in ((item, a), (a, item)):
                row = self.rows.setdefault(row_id, {})
                row[other] = row.get(other, 0) + 1
                if len(row) > self.bound:
                    self.rows[row_id] = dict(_rank(row)[: self.bound])

    def cells(self) -> dict[tuple[str, str], int]:
        return {(i, j): c for i, row in self.rows.items() for j, c in row.items()}


def _cells(co: CoPurchase) -> dict[tuple[str, str], int]:
    return {(i, j): c for i, j, c in co.cells()}


# ---------------------------------------------------------------- by hand


def test_basket_counts_symmetric_pairs():
    co = CoPurchase()
    assert co.add_basket_item("a", []) == ([], [])
    assert co.add_basket_item("a", ["a"]) == ([], [])  # the item itself is not a pair
    changed, dropped = co.add_basket_item("c", ["b", "a", "c", "a"])
    assert changed == [("c", "a"), ("a", "c"), ("c", "b"), ("b", "c")]
    assert dropped == []
    assert co.count("a", "c") == co.count("c", "a") == 1
    assert co.count("a", "b") == 0
    co.add_basket_item("b", ["a", "c"])
    assert co.count("b", "c") == 2 and co.count("a", "b") == 1
    assert co.neighbours("c", 5) == [("b", 2), ("a", 1)]
    assert dict(co.row("c")) == {"a": 1, "b": 2}
    assert co.row("nobody") == {} and co.neighbours("nobody", 3) == []


def test_bound_drops_lowest_count_then_highest_id():
    co = CoPurchase(max_neighbours=2)
    for _ in range(3):
        co.add_basket_item("x", ["m"])
    co.add_basket_item("x", ["b"])
    assert co.neighbours("x", 10) == [("m", 3), ("b", 1)]
    # a third neighbour with count 1: (1, "a") ranks before (1, "b"): b goes, its count forgotten
    changed, dropped = co.add_basket_item("x", ["a"])
    assert dropped == [("x", "b")]
    assert changed == [("x", "a"), ("a", "x")]
    assert co.neighbours("x", 10) == [("m", 3), ("a", 1)]
    assert co.count("b", "x") == 1  # rows are bounded one by one: b's row still has x
    # a newcomer that ranks last is dropped at once (it never reaches storage)
    changed, dropped = co.add_basket_item("x", ["z"])
    assert dropped == [("x", "z")]
    assert changed == [("z", "x")]
    assert co.neighbours("x", 10) == [("m", 3), ("a", 1)]
    # b again: its old count was forgotten, it starts from 1 and ties with a: id order keeps a
    co.add_basket_item("x", ["b"])
    assert co.neighbours("x", 10) == [("m", 3), ("a", 1)]


def test_bound_applies_after_each_increment_in_item_id_order():
    """The rule is applied per increment, the basket's items in id order: with room for one
    neighbour, b's row first counts a (tie 1-1 with c, a wins by id), forgets c, then counts c
    again from 1, which loses to a once more -- although b and c share two baskets."""
    co = CoPurchase(max_neighbours=1)
    co.add_basket_item("b", ["c"])
    changed, dropped = co.add_basket_item("b", ["a", "c"])
    assert dict(co.row("b")) == {"a": 1}
    assert set(dropped) == {("b", "c")}
    assert set(changed) == {("b", "a"), ("a", "b"), ("c", "b")}
    assert co.count("c", "b") == 2  # c's own row is not bounded by b's


def test_scores_weight_the_seeds_rows_heads():
    co = CoPurchase()
    for _ in range(2):
        co.add_basket_item("x", ["s1"])
    co.add_basket_item("y", ["s1"])
    co.add_basket_item("y", ["s2"])
    assert co.scores({"s1": 1.0, "s2": 0.5}) == {"x": 2.0, "y": 1.5}
    assert co.scores({"s1": 1.0}, per_seed=1) == {"x": 2.0}
    assert co.scores({}) == {}


def test_load_cell_rebuilds_rows_and_their_order():
    co = CoPurchase(max_neighbours=3)
    for item, basket in [("a", "bc"), ("b", "cd"), ("a", "d"), ("c", "d"), ("d", "ab")]:
        co.add_basket_item(item, basket)
    assert co.neighbours("a", 10)  # fills the order cache
    fresh = CoPurchase(max_neighbours=3)
    for i, j, c in reversed(list(co.cells())):
        fresh.load_cell(i, j, c)
    assert _cells(fresh) == _cells(co)
    for i in "abcd":
        assert fresh.neighbours(i, 10) == co.neighbours(i, 10)
    fresh.load_cell("a", "zz", 99)  # an updated cell reorders the row
    assert fresh.neighbours("a", 1) == [("zz", 99)]


def test_copurchase_key_round_trip():
    for partition, a, b in [(0, "a", "b"), (7, "a|b", "c|d"), (12, "é", "日本"), (3, "ab", "")]:
        key = copurchase_key(partition, a, b)
        assert isinstance(key, bytes)
        assert parse_copurchase_key(key) == (partition, a, b)
    # the row id's length makes the split unambiguous
    assert copurchase_key(0, "ab", "c") != copurchase_key(0, "a", "bc")


# ---------------------------------------------------------------- property


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.integers(1, 4),
    st.lists(
        st.tuples(st.sampled_from(ITEMS), st.lists(st.sampled_from(ITEMS), max_size=6)),
        max_size=40,
    ),
    st.dictionaries(st.sampled_from(ITEMS), st.sampled_from([0.25, 0.5, 1.0, 0.1, 1e-3])),
)
def test_bounded_rows_match_the_rule_and_the_reported_cells(bound, baskets, seeds):
    co = CoPurchase(max_neighbours=bound)
    model = Model(bound)
    storage: dict[tuple[str, str], int] = {}  # a table kept from the reported cells only
    for item, basket in baskets:
        before = _cells(co)
        changed, dropped = co.add_basket_item(item, basket)
        model.add(item, basket)
        after = _cells(co)
        # rows never exceed the bound
        assert all(len(co.row(i)) <= bound for i in co.counts)
        # the kept neighbours are the rule's
        assert after == model.cells()
        # reported cells: changed ones are present with a new count, dropped ones are gone,
        # every cell whose count differs is reported
        assert len(changed) == len(set(changed))
        assert not set(changed) & set(dropped)
        assert all(c in after and after[c] != before.get(c) for c in changed)
        assert all(c not in after for c in dropped)
        moved = {c for c in before.keys() | after.keys() if before.get(c) != after.get(c)}
        assert moved <= set(changed) | set(dropped)
        # changed cells are pairs of this basket; dropped ones are in the rows it touched
        others = set(basket) - {item}
        assert set(changed) <= {(item, a) for a in others} | {(a, item) for a in others}
        assert {row for row, _ in dropped} <= ({item} | others if others else set())
        for c in changed:
            storage[c] = co.count(*c)
        for c in dropped:
            storage.pop(c, None)
        assert storage == after
        # neighbours() (cached order) equals a naive sort, for every row and several n
        for i in ITEMS:
            naive = _rank(dict(co.row(i)))
            for n in (0, 1, bound, bound + 1):
                assert co.neighbours(i, n) == naive[:n]
        # scores(): sum over each seed's head of w * count, added in seed then neighbour order
        for per_seed in (1, bound):
            want: dict[str, float] = {}
            for seed, w in seeds.items():
                for j, c in _rank(dict(co.row(seed)))[:per_seed]:
                    want[j] = want.get(j, 0.0) + w * c
            assert co.scores(seeds, per_seed) == want


@settings(max_examples=200, deadline=None)
@given(
    baskets=st.lists(
        st.lists(st.sampled_from("abcdefghij"), min_size=2, max_size=5), min_size=1, max_size=30
    ),
    seeds=st.dictionaries(
        st.sampled_from("abcdefghij"), st.sampled_from([0.25, 0.5, 1.0, 2.0]), max_size=5
    ),
    per_seed=st.integers(1, 6),
    limit=st.integers(0, 8),
)
def test_score_arrays_limit_is_the_top_by_sum_then_id(baskets, seeds, per_seed, limit):
    co = CoPurchase(max_neighbours=6)
    for basket in baskets:
        for n, item in enumerate(basket):
            co.add_basket_item(item, basket[:n])
    full = co.scores(seeds, per_seed)
    ids, sums = co.score_arrays(seeds, per_seed, limit=limit)
    want = sorted(full.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    assert sorted(zip(ids, sums.tolist())) == sorted(want)
