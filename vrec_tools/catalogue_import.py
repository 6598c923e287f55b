"""``vrec catalogue import``: any shop's catalogue (CSV, JSONL or Parquet) as ``products`` records.

A column map names the file's columns for each upload field::

    id=sku,image=photo,title=name,category=type,description=text,price=cost,group=family

``id`` and ``image`` (a file path, relative to the catalogue's folder) or ``image_url`` are
required; ``title``, ``category`` and ``description`` may join several columns with ``+``
(``description=colour+text``: non-empty parts joined by ". "); ``ts`` is an epoch or ISO time
(default: the import time). Any other name is an *attribute*, kept in the upload's
``attributes`` and its payload (``colour=colour``): a label a ``vrec train classify --label``
head can fill for uploads without it. ``hm`` is the built-in map of H&M's ``items.csv``.

Every row is validated (:func:`validate_rows`: pure, no Kafka); a refused row is a
:class:`Refusal` naming the file, the line and the reason, and is published to the dead-letters
topic by :func:`send_import` (nothing is dropped silently); the others become ``products``
records.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from streams.events import ProductUpload, json_object, to_epoch

#: Upload fields a map may name, and the ProductUpload field each fills.
FIELDS = {
    "id": "item_id",
    "image": "image_path",
    "image_url": "image_url",
    "title": "title",
    "category": "category",
    "description": "description",
    "price": "price",
    "group": "product_code",
    "ts": "ts",
}
#: Fields whose value may join several columns (``a+b``).
TEXT_FIELDS = ("title", "category", "description")
#: Names an attribute may not take (they are payload keys of their own).
RESERVED = frozenset(FIELDS) | frozenset(FIELDS.values()) | {"attributes", "image_b64", "kind"}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
FORMATS |= {".parquet": "parquet", ".pq": "parquet"}
MAX_ID_CHARS = 128


# ------------------------------------------------------------------ the column map


@dataclass(frozen=True)
class ColumnMap:
    """Which file columns fill which upload field, and which are kept as attributes."""

    fields: dict[str, tuple[str, ...]]  # field name -> source columns (joined for text)
    attributes: dict[str, str] = field(default_factory=dict)  # attribute name -> column
    name: str = "custom"
    # fields whose columns may be missing from the file (the H&M map's optional columns)
    optional: frozenset[str] = frozenset()
    ts: float | None = None  # a fixed upload time (H&M: 0); None: the import time

    def columns(self, include_optional: bool = True) -> list[str]:
        """Every column the map reads."""
        out = [
            c
            for f, cols in self.fields.items()
            if include_optional or f not in self.optional
            for c in cols
        ]
        return out + list(self.attributes.values())

    def column_of(self, name: str) -> tuple[str, str] | None:
        """``(kind, name)`` of what a field, attribute or column ``name`` fills: ("field",
        "category"), ("attribute", "colour"), or None when the map does not read it."""
        if name in self.fields:
            return "field", name
        if name in self.attributes:
            return "attribute", name
        for f, cols in self.fields.items():
            if cols == (name,):
                return "field", f
        for a, col in self.attributes.items():
            if col == name:
                return "attribute", a
        return None

    def describe(self) -> str:
        parts = [f"{f}={'+'.join(c)}" for f, c in self.fields.items()]
        parts += [f"{a}={c} (attribute)" for a, c in self.attributes.items()]
        return f"{self.name}: " + ", ".join(parts)


HM_MAP = ColumnMap(
    fields={
        "id": ("article_id",),
        "image": ("image_path",),
        "title": ("prod_name",),
        "category": ("product_type_name",),
        # colour + detail_desc: with title and category, the upload's text equals
        # encoders.text.item_text(row)
        "description": ("colour_group_name", "detail_desc"),
        "group": ("product_code",),
    },
    name="hm",
    optional=frozenset({"title", "category", "description", "group"}),
    ts=0.0,
)
PRESETS = {"hm": HM_MAP}


def map_from_dict(doc: dict[str, Any], name: str = "custom") -> ColumnMap:
    """A column map from ``{field or attribute: column | [columns]}``; ValueError if unusable."""
    if not isinstance(doc, dict) or not doc:
        raise ValueError("a column map must be a non-empty object of field -> column")
    fields: dict[str, tuple[str, ...]] = {}
    attributes: dict[str, str] = {}
    for key, value in doc.items():
        key = str(key).strip()
        cols = tuple(value) if isinstance(value, (list, tuple)) else tuple(str(value).split("+"))
        cols = tuple(str(c).strip() for c in cols)
        if not key or not cols or any(not c for c in cols):
            raise ValueError(f"column map entry {key!r}: needs a name and a column")
        if key in FIELDS:
            if len(cols) > 1 and key not in TEXT_FIELDS:
                raise ValueError(f"{key}: only {', '.join(TEXT_FIELDS)} may join columns")
            fields[key] = cols
        elif key in RESERVED:
            raise ValueError(f"{key!r} is an upload field: map it by its short name")
        else:
            if len(cols) > 1:
                raise ValueError(f"attribute {key}: one column only")
            if len(key) > 64 or not all(ch.isalnum() or ch in "_-." for ch in key):
                raise ValueError(f"attribute name {key!r}: letters, digits, _ - . (<= 64)")
            attributes[key] = cols[0]
    if "id" not in fields:
        raise ValueError("the column map needs id=COLUMN")
    if "image" not in fields and "image_url" not in fields:
        raise ValueError("the column map needs image=COLUMN (a path) or image_url=COLUMN")
    return ColumnMap(fields=fields, attributes=attributes, name=name)


def parse_map(spec: str) -> ColumnMap:
    """``hm`` (a preset) or ``field=column,...`` (see the module docstring)."""
    spec = spec.strip()
    if spec in PRESETS:
        return PRESETS[spec]
    doc: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, eq, col = part.partition("=")
        if not eq:
            raise ValueError(f"--map entry {part.strip()!r}: expected field=column")
        key = key.strip()
        if key in doc:
            raise ValueError(f"--map names {key!r} twice")
        doc[key] = col
    return map_from_dict(doc)


def load_map_file(path: Path) -> ColumnMap:
    """A column map from a JSON file (``{"id": "sku", "description": ["a", "b"], ...}`` or
    ``{"preset": "hm"}``)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable column map: {exc}") from None
    if isinstance(doc, dict) and set(doc) == {"preset"}:
        return parse_map(str(doc["preset"]))
    try:
        return map_from_dict(doc, name=Path(path).name)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# ------------------------------------------------------------------ reading rows


class CatalogueError(ValueError):
    """The file itself cannot be read (not a row's fault)."""


@dataclass(frozen=True)
class SourceRow:
    """One row as read: ``line`` is the 1-based line (CSV: where the record starts; JSONL)
    or row number (Parquet); ``raw`` the bytes a dead letter keeps."""

    line: int
    values: dict[str, Any] | None
    raw: bytes
    error: str | None = None  # a row that could not be read (JSONL: not a JSON object)


def file_format(path: Path, fmt: str | None = None) -> str:
    if fmt:
        return fmt
    found = FORMATS.get(Path(path).suffix.lower())
    if found is None:
        raise CatalogueError(f"{path}: unknown format (use .csv, .tsv, .jsonl or .parquet)")
    return found


def read_rows(path: Path, fmt: str | None = None) -> tuple[list[str] | None, Iterator[SourceRow]]:
    """The file's columns (None for JSONL: rows may differ) and its rows, lazily.

    A file that cannot be read (missing, not UTF-8, broken CSV or Parquet) raises
    :class:`CatalogueError` naming it, when opened or while its rows are read."""
    path = Path(path)
    fmt = file_format(path, fmt)
    if not path.is_file():
        raise CatalogueError(f"{path}: no such file")
    if fmt in ("csv", "tsv"):
        return _csv_rows(path, "\t" if fmt == "tsv" else ",")
    if fmt == "jsonl":
        return None, _jsonl_rows(path)
    if fmt == "parquet":
        return _parquet_rows(path)
    raise CatalogueError(f"{path}: unknown format {fmt!r}")


def _row_bytes(values: dict[str, Any]) -> bytes:
    return json.dumps(values, default=str, ensure_ascii=False).encode()


def _csv_rows(path: Path, delimiter: str) -> tuple[list[str], Iterator[SourceRow]]:
    f = open(path, newline="", encoding="utf-8")  # noqa: SIM115 - closed by the generator
    try:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = list(reader.fieldnames or [])
    except UnicodeDecodeError as exc:
        f.close()
        raise CatalogueError(f"{path}: not UTF-8 ({exc.reason})") from None
    except csv.Error as exc:
        f.close()
        raise CatalogueError(f"{path}: unreadable CSV header: {exc}") from None

    def rows() -> Iterator[SourceRow]:
        with f:
            start = reader.line_num + 1
            try:
                for record in reader:
                    values = {k: v for k, v in record.items() if k is not None}
                    yield SourceRow(start, values, _row_bytes(values))
                    start = reader.line_num + 1
            except UnicodeDecodeError as exc:
                raise CatalogueError(
                    f"{path}:{start}: not UTF-8 ({exc.reason} at byte {exc.start})"
                ) from None
            except csv.Error as exc:
                raise CatalogueError(f"{path}:{start}: unreadable CSV: {exc}") from None

    return header, rows()


def _jsonl_rows(path: Path) -> Iterator[SourceRow]:
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            raw = line.rstrip(b"\r\n")
            try:
                yield SourceRow(n, json_object(raw), raw)
            except ValueError as exc:
                yield SourceRow(n, None, raw, error=str(exc))


def _parquet_rows(path: Path) -> tuple[list[str], Iterator[SourceRow]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise CatalogueError(f"{path}: reading Parquet needs pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
        raise CatalogueError(f"{path}: unreadable Parquet: {exc}") from None

    def rows() -> Iterator[SourceRow]:
        n = 0
        try:
            for batch in pf.iter_batches(batch_size=4096):
                for values in batch.to_pylist():
                    n += 1
                    yield SourceRow(n, values, _row_bytes(values))
        except Exception as exc:  # noqa: BLE001
            raise CatalogueError(f"{path}: row {n + 1}: unreadable Parquet: {exc}") from None

    return list(pf.schema_arrow.names), rows()


# ------------------------------------------------------------------ validating rows


class RowError(ValueError):
    """A refused row: ``reason`` is the short cause counted in the summary."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Accepted:
    line: int
    product: ProductUpload
    values: dict[str, Any]  # the row as read (labels for training)


@dataclass(frozen=True)
class Refusal:
    path: Path
    line: int
    reason: str  # "missing id", "bad price", "image not found", "duplicate id", ...
    detail: str
    raw: bytes
    key: str | None = None

    @property
    def message(self) -> str:
        where = f"row {self.line}" if self.path.suffix.lower() in (".parquet", ".pq") else ""
        return f"{self.path}:{where or self.line}: {self.reason}: {self.detail}"


def cell_text(value: Any) -> str | None:
    """A cell as text; missing, empty, whitespace-only and NaN cells are None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def _joined(values: dict[str, Any], cols: tuple[str, ...]) -> str | None:
    if len(cols) == 1:
        return cell_text(values.get(cols[0]))
    from encoders.text import join_text

    return join_text([cell_text(values.get(c)) for c in cols]) or None


def parse_price(value: Any) -> float | None:
    """A price cell: None when empty; RowError unless a finite, non-negative number."""
    if isinstance(value, bool):
        raise RowError("bad price", f"{value!r} is not a number")
    if isinstance(value, (int, float)):
        number = float(value)
        if math.isnan(number):  # a missing Parquet / JSON cell
            return None
    else:
        text = cell_text(value)
        if text is None:
            return None
        try:
            number = float(text.strip())
        except ValueError:
            raise RowError("bad price", f"{text[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise RowError("bad price", f"{str(value)[:40]!r} is not a finite number")
    if number < 0:
        raise RowError("bad price", f"{number} is negative")
    return number


def _image(values: dict[str, Any], cmap: ColumnMap, root: Path, check: bool) -> dict[str, str]:
    path = _joined(values, cmap.fields["image"]) if "image" in cmap.fields else None
    if path is not None:
        resolved = Path(path) if Path(path).is_absolute() else root / path
        if check and not resolved.is_file():
            raise RowError("image not found", f"{path} (no file {resolved})")
        return {"image_path": str(resolved)}
    url = _joined(values, cmap.fields["image_url"]) if "image_url" in cmap.fields else None
    if url is not None:
        parsed = urlparse(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise RowError("bad image_url", f"{url[:100]!r} is not an http(s) URL")
        return {"image_url": url.strip()}
    cols = "+".join(cmap.fields.get("image", cmap.fields.get("image_url", ())))
    raise RowError("missing image", f"no value in column {cols!r}")


def row_to_product(
    values: dict[str, Any],
    cmap: ColumnMap,
    root: Path,
    *,
    now: float,
    check_images: bool = True,
) -> ProductUpload:
    """One row as a product upload; RowError (with the reason) when it cannot be one.

    Image paths are made absolute (relative to ``root``, the catalogue's folder) and, with
    ``check_images``, must name an existing file."""
    from pydantic import ValidationError

    from streams.deadletters import describe

    item_id = cell_text(values.get(cmap.fields["id"][0]))
    if item_id is None:
        raise RowError("missing id", f"no value in column {cmap.fields['id'][0]!r}")
    item_id = item_id.strip()
    if len(item_id) > MAX_ID_CHARS:
        raise RowError("bad id", f"{len(item_id)} characters (at most {MAX_ID_CHARS})")
    doc: dict[str, Any] = {"item_id": item_id, **_image(values, cmap, root, check_images)}
    for name in TEXT_FIELDS:
        if name in cmap.fields:
            text = _joined(values, cmap.fields[name])
            if text is not None or name == "title":
                doc[name] = text or ""
    if "group" in cmap.fields:
        group = cell_text(values.get(cmap.fields["group"][0]))
        doc["product_code"] = group.strip() if group else None
    if "price" in cmap.fields:
        doc["price"] = parse_price(values.get(cmap.fields["price"][0]))
    ts: Any = cmap.ts if cmap.ts is not None else now
    if "ts" in cmap.fields and cell_text(values.get(cmap.fields["ts"][0])) is not None:
        try:
            ts = to_epoch(values[cmap.fields["ts"][0]])
        except (ValueError, TypeError) as exc:
            raise RowError("bad ts", str(exc)) from None
    doc["ts"] = ts
    attributes = {
        a: text for a, col in cmap.attributes.items() if (text := cell_text(values.get(col)))
    }
    if attributes:
        doc["attributes"] = attributes
    try:
        return ProductUpload.model_validate(doc)
    except ValidationError as exc:
        raise RowError("invalid record", describe(exc)) from None


def check_columns(path: Path, columns: list[str] | None, cmap: ColumnMap) -> None:
    """CatalogueError when the file lacks a column the map needs (JSONL: not checked)."""
    if columns is None:
        return
    missing = [c for c in cmap.columns(include_optional=False) if c not in columns]
    if missing:
        shown = ", ".join(columns[:30])
        raise CatalogueError(f"{path}: no column {', '.join(map(repr, missing))} (has: {shown})")


def validate_rows(
    path: Path,
    rows: Iterable[SourceRow],
    cmap: ColumnMap,
    *,
    now: float | None = None,
    check_images: bool = True,
) -> Iterator[Accepted | Refusal]:
    """Each row, in file order, accepted as an upload or refused with its reason; the second
    and later rows of one id are refused (``duplicate id``)."""
    path = Path(path)
    root = path.resolve().parent
    now = time.time() if now is None else now
    first_line: dict[str, int] = {}
    for row in rows:
        key = None
        if row.values is not None:
            key = cell_text(row.values.get(cmap.fields["id"][0]))
            key = key.strip() if key else None
        try:
            if row.values is None:
                raise RowError("unreadable row", row.error or "not a JSON object")
            product = row_to_product(row.values, cmap, root, now=now, check_images=check_images)
            if product.item_id in first_line:
                raise RowError(
                    "duplicate id",
                    f"{product.item_id!r} first at line {first_line[product.item_id]}",
                )
        except RowError as exc:
            yield Refusal(path, row.line, exc.reason, exc.detail, row.raw, key)
            continue
        first_line[product.item_id] = row.line
        yield Accepted(row.line, product, row.values)


@dataclass
class ImportPlan:
    """What an import sends: accepted uploads and refused rows, in file order."""

    path: Path
    cmap: ColumnMap
    accepted: list[Accepted] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return len(self.accepted) + len(self.refused)

    @property
    def products(self) -> list[ProductUpload]:
        return [a.product for a in self.accepted]

    def by_reason(self) -> Counter[str]:
        return Counter(r.reason for r in self.refused)


def plan_import(
    path: Path,
    cmap: ColumnMap,
    *,
    fmt: str | None = None,
    limit: int | None = None,
    check_images: bool = True,
    now: float | None = None,
) -> ImportPlan:
    """Read and validate a whole catalogue file (``limit``: stop after that many rows)."""
    path = Path(path)
    columns, rows = read_rows(path, fmt)
    check_columns(path, columns, cmap)
    plan = ImportPlan(path, cmap)
    for n, outcome in enumerate(
        validate_rows(path, rows, cmap, now=now, check_images=check_images), start=1
    ):
        (plan.accepted if isinstance(outcome, Accepted) else plan.refused).append(outcome)
        if limit is not None and n >= limit:
            break
    return plan


def read_products(
    path: Path, cmap: ColumnMap, limit: int | None = None, check_images: bool = False
) -> list[ProductUpload]:
    """The uploads of a catalogue file; the first refused row is a ValueError naming the file
    and line (the strict reader behind ``vrec_tools.replay.read_hm_items``)."""
    columns, rows = read_rows(Path(path))
    check_columns(Path(path), columns, cmap)
    out: list[ProductUpload] = []
    for outcome in validate_rows(Path(path), rows, cmap, check_images=check_images):
        if isinstance(outcome, Refusal):
            raise ValueError(outcome.message)
        out.append(outcome.product)
        if limit is not None and len(out) >= limit:
            break
    return out


# ------------------------------------------------------------------ sending


def refusal_letter(refusal: Refusal) -> tuple[bytes, bytes | None]:
    """(dead-letter value, key) of a refused row: reason ``FILE:LINE: reason: detail``, topic
    the file, offset the line, stage ``import``, the row's bytes as the original value."""
    from streams.deadletters import bound_letter

    letter, key = bound_letter(
        refusal.message,
        str(refusal.path),
        refusal.raw,
        key=refusal.key.encode() if refusal.key else None,
        offset=refusal.line,
        stage="import",
    )
    return letter.to_bytes(), key


def send_import(replayer: Any, plan: ImportPlan, progress: bool = False) -> int:
    """Publish the refused rows as dead letters, then the accepted uploads; returns how many
    uploads were sent (``replayer``: a :class:`vrec_tools.replay.Replayer`)."""
    for refusal in plan.refused:
        value, key = refusal_letter(refusal)
        replayer.send_raw("dead_letters", value, key=key)
    replayer.producer.flush()
    return replayer.send_products(plan.products, progress=progress) if plan.accepted else 0


def summary(plan: ImportPlan, sent: int | None) -> str:
    """The import's counts: rows read, sent (None: a dry run), refused by reason."""
    lines = [f"{plan.path}: {plan.cmap.describe()}", f"rows read  {plan.rows_read:>8}"]
    lines.append(
        f"sent       {sent:>8}"
        if sent is not None
        else f"valid      {len(plan.accepted):>8} (dry run: nothing sent)"
    )
    lines.append(f"refused    {len(plan.refused):>8}")
    for reason, n in sorted(plan.by_reason().items(), key=lambda t: (-t[1], t[0])):
        lines.append(f"  {reason:<20} {n:>6}")
    return "\n".join(lines)


def column_map(spec: str | None, map_file: Path | None) -> ColumnMap:
    """The map of ``--map`` / ``--map-file`` (exactly one; ValueError otherwise)."""
    if (spec is None) == (map_file is None):
        raise ValueError("give one of --map field=column,... (or --map hm) and --map-file FILE")
    return parse_map(spec) if spec is not None else load_map_file(map_file)  # type: ignore[arg-type]
