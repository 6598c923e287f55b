"""Product classification heads over frozen image embeddings (issue 4).

A softmax head (linear, or a one-hidden-layer MLP) maps the 1280-d L2-normalised
EfficientNet-Lite0 embedding of an article image to ``product_type_name`` or
``product_group_name``, or to any catalogue label (``vrec train classify --label COLUMN``); the
head's ``field`` is the upload label it fills at run time (``category`` or an attribute).

Training side (torch, imported lazily):

* :func:`group_split` splits rows by ``product_code`` (seeded, 80/10/10 by default), so colour
  variants of one product never sit on both sides of a split.
* :func:`encode_labels` maps every class with fewer than ``min_count`` *training* examples
  (and any class unseen in training) to :data:`OTHER` (``"other"``); nothing is dropped.
* :func:`train_head` runs mini-batch AdamW with weight decay and early stopping on the
  validation loss, keeping the best epoch's weights.
* :func:`export_head` writes the head as a plain ONNX graph (``MatMul``/``Add``/``Relu``/
  ``Softmax``; the input standardisation is folded into the first layer) plus a JSON label
  list, versioned by the model id ``classify-<target>-<sha256[:12] of the ONNX bytes>``.

Run-time side (onnxruntime + numpy only): :class:`CategoryClassifier`.

Layout under ``<models dir>/classify-<target>/``::

    <sha12>.onnx           input "embedding" float32 (N, 1280) -> output "probs" (N, C)
    <sha12>.labels.json    {"model_id", "target", "labels": [...], ...}
    <sha12>.metrics.json   written by ``vrec train classify``
    current.json           {"model_id", "onnx": "<sha12>.onnx"}: the latest export
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from encoders.classify import INPUT_NAME, OUTPUT_NAME, labels_path
from streams.util import write_json

if TYPE_CHECKING:
    import torch

__all__ = [
    "INPUT_NAME",
    "OTHER",
    "OUTPUT_NAME",
    "TARGETS",
    "HeadConfig",
    "LabelSet",
    "TrainResult",
    "encode_labels",
    "export_head",
    "group_split",
    "head_probabilities",
    "majority_baseline",
    "per_class_report",
    "run_classify",
    "topk_accuracy",
    "train_head",
]

TARGETS = ("product_type_name", "product_group_name")
OTHER = "other"
OPSET = 17


# ------------------------------------------------------------------ split and labels


def group_split(
    groups: Sequence[int] | np.ndarray,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) row indices; every group (product code) lies in exactly one part.

    Groups are shuffled with ``seed`` and assigned in that order until each part holds its
    fraction of the *rows* (so the parts are close to 80/10/10 of the items, not of the codes).
    """
    groups = np.asarray(groups)
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError("fractions must be three non-negative numbers summing to 1")
    uniq, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    # position of each group's last row in the shuffled order, as a fraction of all rows
    ends = np.cumsum(counts[order]) / len(groups)
    part_of_group = np.empty(len(uniq), dtype=np.int64)
    bounds = np.cumsum(fractions)
    part_of_group[order] = np.searchsorted(bounds[:2], ends - 0.5 * counts[order] / len(groups))
    part = part_of_group[inverse.reshape(-1)]
    return tuple(np.flatnonzero(part == k) for k in range(3))  # type: ignore[return-value]


@dataclass(frozen=True)
class LabelSet:
    """Class vocabulary (train-frequency order, :data:`OTHER` last if present) + mapped ids."""

    labels: list[str]
    y: np.ndarray  # int64 class id per row
    rare: list[str]  # raw classes folded into OTHER
    min_count: int

    @property
    def n_classes(self) -> int:
        return len(self.labels)


def encode_labels(
    raw: Sequence[str] | np.ndarray, train_idx: np.ndarray, min_count: int = 10
) -> LabelSet:
    """Map raw class names to ids; classes with < ``min_count`` train rows become ``"other"``.

    A class absent from the training rows (so only in val/test) is also ``"other"``.
    """
    raw = np.asarray(raw, dtype=str)
    counts = Counter(raw[train_idx].tolist())
    kept = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
    kept = [c for c in kept if c != OTHER]
    rare = sorted(set(raw.tolist()) - set(kept))
    labels = kept + ([OTHER] if rare else [])
    index = {c: i for i, c in enumerate(labels)}
    other = index.get(OTHER, -1)
    y = np.array([index.get(c, other) for c in raw.tolist()], dtype=np.int64)
    return LabelSet(labels=labels, y=y, rare=rare, min_count=min_count)


# ------------------------------------------------------------------ metrics


def topk_accuracy(probs: np.ndarray, y: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose true class is among the ``k`` highest scores."""
    if len(y) == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(y)[:, None], axis=1)))


def per_class_report(
    probs: np.ndarray, y: np.ndarray, labels: Sequence[str], y_train: np.ndarray
) -> list[dict[str, Any]]:
    """Per class, on the evaluated rows: train and test counts, precision and recall of the
    top-1 prediction and top-5 recall (None where undefined); classes in ``labels`` order."""
    y = np.asarray(y)
    n_classes = len(labels)
    pred = probs.argmax(axis=1) if len(y) else np.zeros(0, dtype=np.int64)
    k = min(5, probs.shape[1]) if probs.ndim == 2 and probs.shape[1] else 1
    top5 = np.argsort(-probs, axis=1)[:, :k] if len(y) else np.zeros((0, k), dtype=np.int64)
    in5 = np.any(top5 == y[:, None], axis=1)
    train_counts = np.bincount(np.asarray(y_train), minlength=n_classes)
    out = []
    for c, name in enumerate(labels):
        true = y == c
        said = pred == c
        hit = int(np.sum(true & said))
        out.append(
            {
                "label": name,
                "n_train": int(train_counts[c]),
                "n_test": int(true.sum()),
                "precision": hit / int(said.sum()) if said.any() else None,
                "recall": hit / int(true.sum()) if true.any() else None,
                "top5_recall": float(in5[true].mean()) if true.any() else None,
            }
        )
    return out


def majority_baseline(y_train: np.ndarray, y_eval: np.ndarray, k: int = 1) -> float:
    """Accuracy of always predicting the ``k`` most frequent training classes."""
    if len(y_eval) == 0:
        return float("nan")
    counts = np.bincount(y_train, minlength=int(max(y_train.max(), y_eval.max())) + 1)
    top = np.argsort(-counts, kind="stable")[:k]
    return float(np.mean(np.isin(y_eval, top)))


# ------------------------------------------------------------------ training


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 0  # 0: linear softmax head; > 0: Linear-ReLU-Dropout-Linear MLP
    dropout: float = 0.2  # MLP only
    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 10  # epochs without a val-loss improvement before stopping
    label_smoothing: float = 0.0
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    model: Any  # torch.nn.Module (eval mode, best epoch's weights)
    best_epoch: int
    epochs_run: int
    best_val_loss: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def _build_module(dim: int, n_classes: int, cfg: HeadConfig, mean: np.ndarray, std: np.ndarray):
    import torch
    from torch import nn

    class Head(nn.Module):
        """Standardise (train mean/std) -> linear or MLP -> logits."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
            if cfg.hidden > 0:
                self.net = nn.Sequential(
                    nn.Linear(dim, cfg.hidden),
                    nn.ReLU(),
                    nn.Dropout(cfg.dropout),
                    nn.Linear(cfg.hidden, n_classes),
                )
            else:
                self.net = nn.Sequential(nn.Linear(dim, n_classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - self.mean) / self.std)

    return Head()


def train_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    cfg: HeadConfig = HeadConfig(),
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Mini-batch AdamW on cross-entropy; early stopping on the validation loss."""
    import torch
    from torch import nn

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.as_tensor(np.ascontiguousarray(x_train, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y_train, dtype=np.int64))
    xv = torch.as_tensor(np.ascontiguousarray(x_val, dtype=np.float32))
    yv = torch.as_tensor(np.asarray(y_val, dtype=np.int64))
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0) + 1e-6
    model = _build_module(x_train.shape[1], n_classes, cfg, mean, std)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    eval_loss = nn.CrossEntropyLoss()

    best = (float("inf"), 0, {k: v.clone() for k, v in model.state_dict().items()})
    history: list[dict[str, float]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, desc="train", unit="epoch", leave=False)
    epoch = 0
    n = len(xt)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            logits = model(xv)
            vloss = float(eval_loss(logits, yv)) if len(yv) else total / n
            vacc = float((logits.argmax(1) == yv).float().mean()) if len(yv) else float("nan")
        history.append(
            {"epoch": epoch, "train_loss": total / n, "val_loss": vloss, "val_top1": vacc}
        )
        if vloss < best[0] - 1e-6:
            best = (vloss, epoch, {k: v.clone() for k, v in model.state_dict().items()})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                loss=f"{total / n:.3f}", val_loss=f"{vloss:.3f}", val_top1=f"{vacc:.3f}"
            )
        if epoch - best[1] >= cfg.patience:
            break
    if bar is not None:
        bar.close()
    model.load_state_dict(best[2])
    model.eval()
    seconds = time.perf_counter() - t0
    if log is not None:
        log(f"best epoch {best[1]}/{epoch} (val loss {best[0]:.4f}) in {seconds:.1f}s")
    return TrainResult(model, best[1], epoch, best[0], seconds, history)


def head_probabilities(model: Any, x: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Softmax probabilities of a trained torch head, float32 (N, C)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.as_tensor(np.ascontiguousarray(x[i : i + batch], dtype=np.float32))
            out.append(torch.softmax(model(xb), dim=1).numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


# ------------------------------------------------------------------ export


def _linear_layers(model: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W (in, out), b) of each Linear, standardisation folded into the first one (float64)."""
    from torch import nn

    layers = [m for m in model.net if isinstance(m, nn.Linear)]
    mats = [
        (
            m.weight.detach().double().numpy().T.copy(),
            m.bias.detach().double().numpy().copy(),
        )
        for m in layers
    ]
    mean = model.mean.detach().double().numpy()
    std = model.std.detach().double().numpy()
    w0, b0 = mats[0]
    w0 = w0 / std[:, None]
    b0 = b0 - mean @ w0
    mats[0] = (w0, b0)
    return mats


def _onnx_bytes(model: Any, metadata: dict[str, str]) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    mats = _linear_layers(model)
    dim = mats[0][0].shape[0]
    n_classes = mats[-1][0].shape[1]
    inits, nodes = [], []
    cur = INPUT_NAME
    for i, (w, b) in enumerate(mats):
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"W{i}"))
        inits.append(numpy_helper.from_array(b.astype(np.float32), f"b{i}"))
        nodes.append(helper.make_node("MatMul", [cur, f"W{i}"], [f"mm{i}"]))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"]))
        cur = f"z{i}"
        if i < len(mats) - 1:
            nodes.append(helper.make_node("Relu", [cur], [f"h{i}"]))
            cur = f"h{i}"
    nodes.append(helper.make_node("Softmax", [cur], [OUTPUT_NAME], axis=-1))
    graph = helper.make_graph(
        nodes,
        "classify_head",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", dim])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", n_classes])],
        initializer=inits,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="vrec.encoders.classify",
    )
    proto.ir_version = 8  # readable by onnxruntime >= 1.14
    for k, v in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_head(
    model: Any,
    labels: Sequence[str],
    target: str,
    out_dir: str | Path,
    extra: dict[str, Any] | None = None,
    field: str | None = None,
) -> tuple[str, Path]:
    """Write ``<out_dir>/classify-<target>/<sha12>.onnx`` + ``.labels.json``; update current.json.

    Returns ``(model_id, onnx path)``; ``model_id = "classify-<target>-<sha12>"``. The label
    list is also stored in the ONNX metadata (``labels``), so it is part of the hash.
    ``field`` is the upload label the head fills at run time (``category`` or an attribute
    name); default: ``category`` for the H&M :data:`TARGETS`, else ``target``.
    """
    field = field or default_field(target)
    labels = list(labels)
    data = _onnx_bytes(model, {"target": target, "labels": json.dumps(labels)})
    sha = hashlib.sha256(data).hexdigest()
    model_id = f"classify-{target}-{sha[:12]}"
    folder = Path(out_dir) / f"classify-{target}"
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{sha[:12]}.onnx"
    tmp = onnx_path.with_suffix(".onnx.tmp")
    tmp.write_bytes(data)
    tmp.replace(onnx_path)
    meta = {
        "model_id": model_id,
        "target": target,
        "field": field,
        "sha256": sha,
        "labels": labels,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        **(extra or {}),
    }
    write_json(labels_path(onnx_path), meta)
    write_json(folder / "current.json", {"model_id": model_id, "onnx": onnx_path.name})
    return model_id, onnx_path


def default_field(target: str) -> str:
    """The upload label a head for ``target`` fills: the H&M category targets fill
    ``category``, any other label its own name."""
    return "category" if target in TARGETS or not target else target


def run_classify(
    x: np.ndarray,
    raw_labels: np.ndarray,
    groups: np.ndarray,
    target: str,
    cfg: HeadConfig,
    min_count: int = 10,
    out_dir: Path | None = None,
    progress: bool = False,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    field: str | None = None,
    group_name: str = "product_code",
) -> dict[str, Any]:
    """Split (by ``groups``), train, evaluate and (with ``out_dir``) export one head; returns
    the metrics, with a per-class report of the test split. ``field``: the upload label the
    head fills (see :func:`encoders.classify.export_head`)."""
    t0 = time.perf_counter()
    valid = np.abs(x).sum(axis=1) > 0  # rows whose image could not be embedded are zero
    idx_all = np.flatnonzero(valid)
    x, raw_labels, groups = x[idx_all], np.asarray(raw_labels)[idx_all], groups[idx_all]
    tr, va, te = group_split(groups, fractions, seed=cfg.seed)
    ls = encode_labels(raw_labels, tr, min_count=min_count)
    y = ls.y
    res = train_head(x[tr], y[tr], x[va], y[va], ls.n_classes, cfg, progress=progress)
    p_te = head_probabilities(res.model, x[te])
    p_va = head_probabilities(res.model, x[va])
    metrics: dict[str, Any] = {
        "target": target,
        "head": "linear" if cfg.hidden == 0 else f"mlp{cfg.hidden}",
        "n_items": int(len(x)),
        "n_dropped_unembedded": int((~valid).sum()),
        "n_train": int(len(tr)),
        "n_val": int(len(va)),
        "n_test": int(len(te)),
        "group": group_name,
        "n_product_codes": int(len(np.unique(groups))),
        "n_raw_classes": int(len(np.unique(raw_labels))),
        "n_classes": ls.n_classes,
        "min_count": min_count,
        "rare_policy": "classes with < min_count train items -> 'other'",
        "n_rare_classes": len(ls.rare),
        "other_share_test": float(np.mean(np.asarray(ls.labels)[y[te]] == "other"))
        if len(te) and "other" in ls.labels
        else 0.0,
        "test_top1": topk_accuracy(p_te, y[te], 1),
        "test_top5": topk_accuracy(p_te, y[te], 5),
        "val_top1": topk_accuracy(p_va, y[va], 1),
        "val_top5": topk_accuracy(p_va, y[va], 5),
        "majority_top1": majority_baseline(y[tr], y[te], 1),
        "majority_top5": majority_baseline(y[tr], y[te], 5),
        "majority_class": ls.labels[int(np.bincount(y[tr]).argmax())],
        "best_epoch": res.best_epoch,
        "epochs_run": res.epochs_run,
        "train_seconds": round(res.seconds, 2),
        "config": cfg.as_dict(),
        "per_class": per_class_report(p_te, y[te], ls.labels, y[tr]),
    }
    if out_dir is not None:
        model_id, onnx_path = export_head(
            res.model,
            ls.labels,
            target,
            out_dir,
            extra={"min_count": min_count, "rare": ls.rare, "head": metrics["head"]},
            field=field,
        )
        from encoders.classify import CategoryClassifier

        clf = CategoryClassifier(onnx_path)
        diff = float(np.max(np.abs(clf.predict_proba(x[te]) - p_te))) if len(te) else 0.0
        metrics.update(
            model_id=model_id, onnx=str(onnx_path), onnx_max_abs_diff=diff, field=clf.field
        )
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        (onnx_path.with_name(onnx_path.stem + ".metrics.json")).write_text(
            json.dumps(metrics, indent=2) + "\n"
        )
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    metrics["_model"] = res.model  # not serialised; for callers that want the torch head
    return metrics
