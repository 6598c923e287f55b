"""Image + text fusion: one weight ``w`` (the text weight) in [0, 1], pure numpy.

Item-item score. For two items with unit image vectors ``a_i, b_i`` and unit text vectors
``a_t, b_t`` the fused score is

    s(a, b) = (1 - w) * cos(a_i, b_i) + w * cos(a_t, b_t)          (:func:`fused_score`)

Fused vector. :func:`fuse` maps an item to ``f = [sqrt(1 - w) * v_i, sqrt(w) * v_t]`` (the
per-modality vectors L2-normalised first). Then ``f(a) . f(b) = s(a, b)`` exactly and
``|f| = 1``, so one cosine search over fused vectors *is* fused scoring, and anything that works
on image vectors (the ``visual`` baseline, a classifier head) runs unchanged on fused ones.
``w = 0`` gives the image vector (zero-padded), ``w = 1`` the text vector.

User vector. The decayed mean of fused item vectors is, by linearity, the fused concatenation of
the per-modality decayed means: ``u = [sqrt(1 - w) * m_i, sqrt(w) * m_t]``
(:func:`fused_user_vector`). Its dot product with an item's fused vector is
``(1 - w) * m_i . v_i + w * m_t . v_t``: each modality's cosine weighted by ``w`` *and* by how
coherent the user's history is in that modality (``|m_i|``, ``|m_t|`` <= 1). Normalising the
whole ``u`` afterwards (as the ``visual`` baseline does) does not change any ranking.

Missing text. An item without a text vector has a zero text block (its fused vector has norm
``sqrt(1 - w)``); fused *search* in the stores (:func:`combine_scores`) instead scores such an
item by its image cosine alone, so it is neither favoured nor penalised.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "check_weight",
    "combine_scores",
    "fuse",
    "fused_score",
    "fused_user_vector",
    "l2_normalise",
]


def check_weight(w: float) -> float:
    """``w`` as a float, or ``ValueError`` unless 0 <= w <= 1."""
    w = float(w)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"text weight must be in [0, 1], got {w}")
    return w


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows (or one vector) scaled to unit L2 norm, float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def fused_score(
    cos_image: np.ndarray | float, cos_text: np.ndarray | float, w: float
) -> np.ndarray:
    """``(1 - w) * cos_image + w * cos_text`` (element-wise)."""
    w = check_weight(w)
    return (1.0 - w) * np.asarray(cos_image, dtype=np.float64) + w * np.asarray(
        cos_text, dtype=np.float64
    )


def fuse(image: np.ndarray, text: np.ndarray, w: float) -> np.ndarray:
    """Fused vectors ``[sqrt(1 - w) * image, sqrt(w) * text]`` (float32), rows or one vector.

    Each block is L2-normalised first (zero rows, e.g. a missing text, stay zero), so the dot
    product of two fused vectors is :func:`fused_score` of their cosines.
    """
    w = check_weight(w)
    img, txt = l2_normalise(image), l2_normalise(text)
    if img.shape[:-1] != txt.shape[:-1]:
        raise ValueError(f"image {img.shape} and text {txt.shape} rows differ")
    return np.concatenate([np.sqrt(1.0 - w) * img, np.sqrt(w) * txt], axis=-1).astype(np.float32)


def fused_user_vector(
    image: np.ndarray, text: np.ndarray, weights: np.ndarray, w: float
) -> np.ndarray:
    """Decayed mean of the fused vectors of a user's items: ``[sqrt(1-w) m_i, sqrt(w) m_t]``.

    ``image`` (n, d_i) and ``text`` (n, d_t) are the items' vectors, ``weights`` (n,) their
    decay weights (e.g. ``2 ** (-age / half_life)``); ``m`` are the weighted means of the unit
    vectors. Not normalised (see the module docstring; scaling never changes a ranking).
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or len(weights) != len(image) or weights.sum() <= 0:
        raise ValueError("weights must be one positive-sum weight per item")
    f = fuse(image, text, w).astype(np.float64)
    return ((weights[:, None] * f).sum(axis=0) / weights.sum()).astype(np.float32)


def combine_scores(
    cos_image: Mapping[str, float], cos_text: Mapping[str, float | None], w: float
) -> dict[str, float]:
    """Fused score per item id of ``cos_image``; items whose text cosine is absent (``None`` or
    missing) are scored by their image cosine alone."""
    w = check_weight(w)
    out = {}
    for item_id, ci in cos_image.items():
        ct = cos_text.get(item_id)
        out[item_id] = float(ci) if ct is None else (1.0 - w) * float(ci) + w * float(ct)
    return out
