"""Contract tests of the vector store: the same assertions for every backend, no mocks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from streams.store import (
    ITEM_ID_KEY,
    EdgeStore,
    StoredItem,
    VectorStore,
    open_store,
    point_id,
)

KINDS = ["edge", "qdrant-memory", "qdrant-local"]
PERSISTENT = ["edge", "qdrant-local"]
DIMS = {"image": 64, "text": 16}
N = 300
CATEGORIES = ("Trousers", "Dress", "Sweater")


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_ids(n: int) -> list[str]:
    return [f"{i:010d}" for i in range(n)]  # leading zeros, e.g. "0000000042"


def make_items(
    ids: Sequence[str], image: np.ndarray, text: np.ndarray | None = None
) -> list[StoredItem]:
    items = []
    for i, item_id in enumerate(ids):
        vectors = {"image": image[i]}
        if text is not None and i % 2 == 0:  # only every other item has a text vector
            vectors["text"] = text[i]
        payload = {"category": CATEGORIES[i % 3], "rank": i % 5, "sale": i % 2 == 0}
        items.append(StoredItem(item_id=item_id, vectors=vectors, payload=payload))
    return items


def reference(
    data: np.ndarray, ids: Sequence[str], query: np.ndarray, keep: Sequence[bool] | None = None
) -> list[tuple[str, float]]:
    """Brute-force cosine ranking (vectors are unit norm) over the kept rows."""
    scores = data @ query
    order = np.argsort(-scores, kind="stable")
    return [(ids[j], float(scores[j])) for j in order if keep is None or keep[j]]


def assert_matches(hits: list, expected: list[tuple[str, float]], limit: int) -> None:
    """Hits are exactly the reference top-``limit``, in order, with the reference scores."""
    want = expected[:limit]
    assert len(hits) == len(want)
    assert [h.item_id for h in hits] == [i for i, _ in want]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in want], atol=1e-5)


class Opener:
    """Opens the store of one backend kind at a fixed path/collection; closes them all."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.collection = f"items_{uuid.uuid4().hex[:8]}"
        self.opened: list[VectorStore] = []

    def __call__(self, vector_dims: dict[str, int] = DIMS) -> VectorStore:
        store = open_store(
            self.kind,
            path=self.path,
            url="http://127.0.0.1:1",  # unused by these kinds
            collection=self.collection,
            vector_dims=vector_dims,
        )
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=KINDS)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    op = Opener(request.param, tmp_path / "store")
    yield op
    op.close_all()


@pytest.fixture
def store(opener: Opener) -> VectorStore:
    return opener()


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240601)
    return {
        "image": unit(rng, N, DIMS["image"]),
        "text": unit(rng, N, DIMS["text"]),
        "queries": unit(rng, 8, DIMS["image"]),
        "text_queries": unit(rng, 4, DIMS["text"]),
    }


@pytest.fixture
def filled(store: VectorStore, data: dict[str, np.ndarray]) -> VectorStore:
    store.upsert(make_items(make_ids(N), data["image"], data["text"]))
    return store


def test_store_satisfies_protocol(store: VectorStore) -> None:
    assert isinstance(store, VectorStore)
    assert store.vector_dims == DIMS


def test_upsert_get_roundtrip_keeps_string_ids(store: VectorStore) -> None:
    rng = np.random.default_rng(1)
    ids = ["0108775015", "108775015", "007", "item with spaces/ü"]
    image = unit(rng, len(ids), 64)
    store.upsert(
        [
            StoredItem(item_id=i, vectors={"image": image[k]}, payload={"title": f"t{k}"})
            for k, i in enumerate(ids)
        ]
    )
    got = store.get(ids)
    assert set(got) == set(ids)  # "0108775015" and "108775015" are distinct items
    for k, i in enumerate(ids):
        assert got[i].dtype == np.float32
        np.testing.assert_allclose(got[i], image[k], atol=1e-6)
    payloads = store.get_payloads(ids)
    assert payloads["0108775015"] == {"title": "t0", ITEM_ID_KEY: "0108775015"}
    assert payloads["007"][ITEM_ID_KEY] == "007"
    assert sorted(store.item_ids()) == sorted(ids)


def test_reupsert_overwrites_vector_and_payload(store: VectorStore) -> None:
    rng = np.random.default_rng(2)
    old, new = unit(rng, 2, 64)
    store.upsert([StoredItem("0001", {"image": old}, {"category": "Dress", "old": 1})])
    store.upsert([StoredItem("0001", {"image": new}, {"category": "Trousers"})])
    assert store.count() == 1
    np.testing.assert_allclose(store.get(["0001"])["0001"], new, atol=1e-6)
    assert store.get_payloads(["0001"])["0001"] == {"category": "Trousers", ITEM_ID_KEY: "0001"}
    hits = store.search(new, 1)
    assert hits[0].item_id == "0001"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_search_matches_numpy_cosine(filled: VectorStore, data: dict[str, np.ndarray]) -> None:
    ids = make_ids(N)
    for q in data["queries"]:
        assert_matches(filled.search(q, 10), reference(data["image"], ids, q), 10)
    # a stored vector finds itself first with score 1
    hits = filled.search(data["image"][42], 3)
    assert hits[0].item_id == ids[42]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    # limit above the store size returns everything, still in reference order
    q = data["queries"][0]
    assert_matches(filled.search(q, N + 50), reference(data["image"], ids, q), N)


def test_search_hits_carry_payload_and_no_vector_by_default(filled: VectorStore) -> None:
    hit = filled.search(np.eye(64, dtype=np.float32)[0], 1)[0]
    assert hit.vector is None
    assert hit.payload[ITEM_ID_KEY] == hit.item_id
    assert hit.payload["category"] in CATEGORIES


def test_exclude_still_returns_limit_hits(filled: VectorStore, data: dict[str, np.ndarray]) -> None:
    ids = make_ids(N)
    q = data["queries"][1]
    full = reference(data["image"], ids, q)
    excluded = {i for i, _ in full[:7]} | {"not-stored", "0000000299"}
    keep = [i not in excluded for i in ids]
    hits = filled.search(q, 10, exclude=excluded)
    assert len(hits) == 10
    assert not excluded & {h.item_id for h in hits}
    assert_matches(hits, reference(data["image"], ids, q, keep), 10)
    # excluding all but 3 items leaves exactly those 3
    survivors = set(ids[100:103])
    hits = filled.search(q, 10, exclude=set(ids) - survivors)
    assert {h.item_id for h in hits} == survivors


def test_with_vectors_returns_stored_vectors(
    filled: VectorStore, data: dict[str, np.ndarray]
) -> None:
    ids = make_ids(N)
    hits = filled.search(data["queries"][2], 5, with_vectors=True)
    assert len(hits) == 5
    for h in hits:
        assert h.vector is not None and h.vector.dtype == np.float32
        assert h.vector.shape == (64,)
        np.testing.assert_allclose(h.vector, data["image"][ids.index(h.item_id)], atol=1e-6)
        assert float(h.vector @ data["queries"][2]) == pytest.approx(h.score, abs=1e-5)


def test_payload_filter(filled: VectorStore, data: dict[str, np.ndarray]) -> None:
    ids = make_ids(N)
    q = data["queries"][3]
    keep = [i % 3 == 1 for i in range(N)]  # category "Dress"
    hits = filled.search(q, 10, filter_payload={"category": "Dress"})
    assert {h.payload["category"] for h in hits} == {"Dress"}
    assert_matches(hits, reference(data["image"], ids, q, keep), 10)
    # several keys (str, int, bool) are ANDed, and combine with exclude
    keep = [i % 3 == 0 and i % 5 == 3 and i % 2 == 0 for i in range(N)]
    expected = reference(data["image"], ids, q, keep)
    exclude = {expected[0][0]}
    hits = filled.search(
        q, 5, exclude=exclude, filter_payload={"category": "Trousers", "rank": 3, "sale": True}
    )
    assert_matches(hits, expected[1:], 5)
    # booleans match booleans (not the integers 1/0), both ways
    for flag in (True, False):
        hits = filled.search(q, N, filter_payload={"sale": flag})
        assert len(hits) == N // 2
        assert {h.payload["sale"] for h in hits} == {flag}
    assert filled.search(q, 10, filter_payload={"category": "Shoes"}) == []
    assert filled.search(q, 10, filter_payload={"rank": 7}) == []


def test_unsupported_filter_value_raises(filled: VectorStore) -> None:
    with pytest.raises(TypeError):
        filled.search(np.eye(64, dtype=np.float32)[0], 3, filter_payload={"price": 1.5})


def test_contains_count_item_ids_delete(filled: VectorStore) -> None:
    ids = make_ids(N)
    assert filled.count() == N
    assert filled.contains("0000000007")
    assert not filled.contains("7")
    assert sorted(filled.item_ids()) == ids
    gone = ["0000000007", "0000000150", "never-stored"]
    filled.delete(gone)
    filled.delete([])
    assert filled.count() == N - 2
    assert not filled.contains("0000000007")
    assert filled.get(gone) == {}
    assert sorted(filled.item_ids()) == sorted(set(ids) - set(gone))
    hits = filled.search(np.eye(64, dtype=np.float32)[5], N)
    assert len(hits) == N - 2
    assert not set(gone) & {h.item_id for h in hits}


def test_get_of_missing_ids(filled: VectorStore) -> None:
    assert filled.get([]) == {}
    assert filled.get(["missing", "0"]) == {}
    got = filled.get(["missing", "0000000003", "0000000003"])
    assert list(got) == ["0000000003"]
    assert filled.get_payloads(["missing"]) == {}
    assert list(filled.get_payloads(["0000000004", "nope"])) == ["0000000004"]


def test_second_named_vector(filled: VectorStore, data: dict[str, np.ndarray]) -> None:
    ids = make_ids(N)
    has_text = [i % 2 == 0 for i in range(N)]
    for q in data["text_queries"]:
        hits = filled.search(q, 10, using="text", with_vectors=True)
        assert_matches(hits, reference(data["text"], ids, q, has_text), 10)
        assert all(h.vector is not None and h.vector.shape == (16,) for h in hits)
    # items without a text vector are absent from text reads and text search
    got = filled.get(["0000000002", "0000000003"], using="text")
    assert list(got) == ["0000000002"]
    np.testing.assert_allclose(got["0000000002"], data["text"][2], atol=1e-6)
    assert len(filled.search(data["text_queries"][0], N, using="text")) == N // 2
    # the image vector of the same item is untouched
    np.testing.assert_allclose(
        filled.get(["0000000002"])["0000000002"], data["image"][2], atol=1e-6
    )


def test_empty_store(store: VectorStore) -> None:
    assert store.search(np.eye(64, dtype=np.float32)[0], 10) == []
    assert store.search(np.eye(16, dtype=np.float32)[0], 10, using="text") == []
    assert store.count() == 0
    assert store.item_ids() == []
    assert not store.contains("0")


def test_bad_vectors_raise(store: VectorStore) -> None:
    v = np.eye(64, dtype=np.float32)[0]
    with pytest.raises(ValueError):
        store.upsert([StoredItem("a", {"image": np.ones(63, np.float32)}, {})])
    with pytest.raises(ValueError):
        store.upsert([StoredItem("a", {"colour": v}, {})])
    with pytest.raises(ValueError):
        store.upsert([StoredItem("a", {"image": np.full(64, np.nan, np.float32)}, {})])
    with pytest.raises(ValueError):
        store.search(np.ones(16, np.float32), 3)
    with pytest.raises(ValueError):
        store.get(["a"], using="colour")
    assert store.count() == 0  # nothing half-written


@pytest.mark.parametrize("opener", PERSISTENT, indirect=True)
def test_persists_across_close_and_reopen(opener: Opener, data: dict[str, np.ndarray]) -> None:
    ids = make_ids(N)
    store = opener()
    store.upsert(make_items(ids, data["image"], data["text"]))
    store.delete(["0000000010"])
    q = data["queries"][4]
    before = [(h.item_id, h.score) for h in store.search(q, 10)]
    store.close()
    store.close()  # idempotent

    reopened = opener()
    assert reopened.count() == N - 1
    assert not reopened.contains("0000000010")
    keep = [i != "0000000010" for i in ids]
    hits = reopened.search(q, 10)
    assert_matches(hits, reference(data["image"], ids, q, keep), 10)
    assert [h.item_id for h in hits] == [i for i, _ in before]
    assert [h.score for h in hits] == pytest.approx([sc for _, sc in before], abs=1e-6)
    np.testing.assert_allclose(reopened.get([ids[5]])[ids[5]], data["image"][5], atol=1e-6)
    assert reopened.get_payloads([ids[5]])[ids[5]]["category"] == CATEGORIES[5 % 3]
    # still writable after reopening
    reopened.upsert([StoredItem("new", {"image": data["image"][0]}, {})])
    assert reopened.count() == N


@pytest.mark.parametrize("opener", PERSISTENT, indirect=True)
def test_reopen_with_other_dims_raises(opener: Opener) -> None:
    opener().close()
    with pytest.raises(ValueError):
        opener({"image": 32, "text": 16})
    assert opener().count() == 0  # the store itself is left intact


def test_closed_store_refuses_calls(store: VectorStore) -> None:
    store.close()
    with pytest.raises(RuntimeError):
        store.count()


def test_point_id_is_deterministic_uuid() -> None:
    pid = point_id("0108775015")
    assert pid == point_id("0108775015")
    assert uuid.UUID(pid).version == 5
    assert pid != point_id("108775015")


def test_open_store_rejects_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown store kind"):
        open_store("faiss", path=tmp_path, url="", collection="c", vector_dims=DIMS)


def test_edge_search_stays_exact_after_optimize(
    tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    from qdrant_edge import EdgeOptimizersConfig, HnswIndexConfig

    ids = make_ids(N)
    # tiny thresholds so optimize() really builds an HNSW index on 300 points
    store = EdgeStore(
        tmp_path / "edge",
        DIMS,
        exact=True,
        hnsw_config=HnswIndexConfig(m=16, ef_construct=64, full_scan_threshold=1),
        optimizers=EdgeOptimizersConfig(indexing_threshold=1),
    )
    try:
        store.upsert(make_items(ids, data["image"], data["text"]))
        assert store.shard.info().indexed_vectors_count == 0
        assert store.optimize() is True
        assert store.shard.info().indexed_vectors_count > 0
        for q in data["queries"][:3]:
            exclude = set(ids[:50])
            keep = [i not in exclude for i in ids]
            hits = store.search(q, 10, exclude=exclude)
            assert_matches(hits, reference(data["image"], ids, q, keep), 10)
    finally:
        store.close()


# -- image + text fusion (search_fused) ---------------------------------------------------


def fused_reference(
    data: dict[str, np.ndarray], q_img: np.ndarray, q_txt: np.ndarray, w: float, keep=None
) -> list[tuple[str, float]]:
    """Brute-force fused ranking: items with a text vector (even rows) get
    (1 - w) cos_image + w cos_text, the others cos_image; ties by item id."""
    ids = make_ids(N)
    ci = data["image"] @ q_img
    ct = data["text"] @ q_txt
    has_text = np.arange(N) % 2 == 0
    fused = np.where(has_text, (1 - w) * ci + w * ct, ci)
    rows = [(ids[j], float(fused[j])) for j in range(N) if keep is None or keep[j]]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


@pytest.mark.parametrize("w", [0.25, 0.5, 1.0])
def test_fused_search_matches_numpy(
    filled: VectorStore, data: dict[str, np.ndarray], w: float
) -> None:
    for q_img, q_txt in zip(data["queries"][:4], data["text_queries"]):
        expected = fused_reference(data, q_img, q_txt, w)
        # enough candidates to cover the store: exact
        hits = filled.search_fused(q_img, q_txt, 10, text_weight=w, candidates=N)
        assert_matches(hits, expected, 10)
        assert all(h.vector is None and h.payload[ITEM_ID_KEY] == h.item_id for h in hits)
        # the default candidate pool (64 per modality) finds the same top 10 here
        assert_matches(filled.search_fused(q_img, q_txt, 10, text_weight=w), expected, 10)
    # a fused ranking really differs from the image ranking at w = 0.5
    q_img, q_txt = data["queries"][0], data["text_queries"][0]
    fused_ids = [h.item_id for h in filled.search_fused(q_img, q_txt, 10, text_weight=0.5)]
    assert fused_ids != [h.item_id for h in filled.search(q_img, 10)]


def test_fused_search_with_filter_and_exclude(
    filled: VectorStore, data: dict[str, np.ndarray]
) -> None:
    q_img, q_txt = data["queries"][5], data["text_queries"][1]
    keep = [i % 3 == 1 for i in range(N)]  # "Dress"
    expected = fused_reference(data, q_img, q_txt, 0.5, keep)
    exclude = {expected[0][0], expected[3][0]}
    hits = filled.search_fused(
        q_img,
        q_txt,
        8,
        text_weight=0.5,
        exclude=exclude,
        filter_payload={"category": "Dress"},
        candidates=N,
    )
    assert {h.payload["category"] for h in hits} == {"Dress"}
    assert_matches(hits, [r for r in expected if r[0] not in exclude], 8)


def test_fused_search_falls_back_to_image_search(
    filled: VectorStore, data: dict[str, np.ndarray]
) -> None:
    q_img, q_txt = data["queries"][6], data["text_queries"][2]
    plain = filled.search(q_img, 10)
    for text, w in ((q_txt, 0.0), (None, 0.5)):
        hits = filled.search_fused(q_img, text, 10, text_weight=w)
        assert [h.item_id for h in hits] == [h.item_id for h in plain]
        assert [h.score for h in hits] == pytest.approx([h.score for h in plain])
    assert filled.search_fused(q_img, q_txt, 0, text_weight=0.5) == []
    # a candidate pool smaller than the limit still returns the limit
    assert len(filled.search_fused(q_img, q_txt, 20, text_weight=0.5, candidates=5)) == 20
    with pytest.raises(ValueError):
        filled.search_fused(q_img, q_txt, 10, text_weight=1.5)
    with pytest.raises(ValueError):
        filled.search_fused(q_img, np.ones(15, np.float32), 10, text_weight=0.5)


def test_fused_search_on_image_only_store(opener: Opener, data: dict[str, np.ndarray]) -> None:
    store = opener({"image": 64})
    store.upsert(make_items(make_ids(N), data["image"]))
    q = data["queries"][7]
    hits = store.search_fused(q, data["text_queries"][0], 5, text_weight=0.5)
    assert_matches(hits, reference(data["image"], make_ids(N), q), 5)
