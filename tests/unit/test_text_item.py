"""encoders.text: the item text of H&M rows and uploads (no model needed)."""

from __future__ import annotations

from encoders.text import item_text, join_text, upload_text
from streams.events import ProductUpload


def test_item_text_of_an_hm_row() -> None:
    row = {
        "prod_name": "Strap top",
        "product_type_name": "Vest top",
        "colour_group_name": "Black",
        "detail_desc": "Jersey top with narrow shoulder straps.",
        "department_name": "Jersey Basic",  # not part of the text
    }
    assert item_text(row) == "Strap top. Vest top. Black. Jersey top with narrow shoulder straps"


def test_missing_and_blank_parts_are_left_out() -> None:
    assert item_text({"prod_name": "Denim shorts", "detail_desc": "  "}) == "Denim shorts"
    assert item_text({}) == ""
    assert join_text(["  a \n b ", None, "", "c.."]) == "a b. c"


def test_upload_text_uses_title_category_and_description() -> None:
    p = ProductUpload(
        item_id="u1", image_path="x.jpg", title="Linen shirt", category="Shirt",
        description="Relaxed fit.",
    )  # fmt: skip
    assert upload_text(p.title, p.category, p.description) == "Linen shirt. Shirt. Relaxed fit"
    assert upload_text("Linen shirt", None) == "Linen shirt"
    assert "description" in p.payload() and p.payload()["description"] == "Relaxed fit."
    assert "description" not in ProductUpload(item_id="u2", image_path="x.jpg").payload()


def test_item_embedding_carries_an_optional_text_vector() -> None:
    import numpy as np

    from streams.events import ItemEmbedding, encode_vector
    from streams.settings import Settings

    img, txt = np.arange(4, dtype=np.float32), np.linspace(-1, 1, 6).astype(np.float32)
    plain = ItemEmbedding(item_id="a", model_id="m", vector_b64=encode_vector(img))
    assert plain.text_vector is None and b"text_vector_b64" not in plain.to_bytes()
    both = ItemEmbedding.from_bytes(
        plain.model_copy(update={"text_vector_b64": encode_vector(txt)}).to_bytes()
    )
    np.testing.assert_array_equal(both.text_vector, txt)
    np.testing.assert_array_equal(both.vector, img)
    assert Settings().text_weight == 0.0  # fusion is off by default


def test_run_time_text_encoder_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, encoders.text, encoders.fusion, streams.store; "
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_replayed_hm_products_carry_the_catalogue_text() -> None:
    """An H&M catalogue replayed as uploads gets the same text vector input as offline rows."""
    import csv

    from streams.settings import REPO_ROOT
    from vrec_tools.replay import read_hm_items

    path = REPO_ROOT / "tests" / "fixtures" / "hm_sample" / "items.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    products = read_hm_items(path)
    assert len(products) == len(rows) == 200
    assert all(p.description for p in products)
    for p, row in zip(products, rows):
        assert upload_text(p.title, p.category, p.description) == item_text(row)
