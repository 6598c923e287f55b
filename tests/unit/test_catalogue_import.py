"""vrec_tools.catalogue_import without Kafka: column maps, row validation, the fixture catalogue in
CSV / JSONL / Parquet, the H&M preset behind read_hm_items, dead letters of refused rows."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import pytest

from streams.events import DeadLetter, ProductUpload
from streams.settings import REPO_ROOT
from vrec_tools.catalogue_import import (
    HM_MAP,
    Accepted,
    CatalogueError,
    Refusal,
    RowError,
    load_map_file,
    parse_map,
    parse_price,
    plan_import,
    refusal_letter,
    row_to_product,
    summary,
    validate_rows,
)
from vrec_tools.cli import main as vrec
from vrec_tools.replay import read_hm_items

SHOP = REPO_ROOT / "tests" / "fixtures" / "other_shop"
HM_SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"
#: the fixture's bad rows: CSV line -> reason (README.txt)
BAD = {
    7: "missing id",
    13: "bad price",
    19: "bad price",
    25: "image not found",
    31: "duplicate id",
    37: "missing image",
}
SPEC = "id=sku,image=photo,title=name,category=type,description=text,price=cost,group=family"


def test_parse_map() -> None:
    cmap = parse_map(SPEC + ",colour=colour")
    assert cmap.fields["id"] == ("sku",) and cmap.fields["group"] == ("family",)
    assert cmap.attributes == {"colour": "colour"}
    assert parse_map("id=a, image=b, description=c+d").fields["description"] == ("c", "d")
    assert parse_map("hm") is HM_MAP
    assert cmap.column_of("type") == ("field", "category")
    assert cmap.column_of("colour") == ("attribute", "colour")
    assert cmap.column_of("nope") is None


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("image=photo", "id=COLUMN"),
        ("id=sku", "image=COLUMN"),
        ("id=sku,image=photo,id=x", "twice"),
        ("id=sku,image=photo,title", "field=column"),
        ("id=sku,image=photo,price=a+b", "may join"),
        ("id=sku,image=photo,item_id=x", "upload field"),
        ("id=sku,image=photo,bad name=x", "attribute name"),
        ("id=sku,image=", "needs a name and a column"),
    ],
)
def test_parse_map_refuses(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_map(spec)


def test_map_file(tmp_path: Path) -> None:
    cmap = load_map_file(SHOP / "mapping.json")
    assert cmap.attributes == {"colour": "colour"} and cmap.fields["price"] == ("cost",)
    (tmp_path / "p.json").write_text('{"preset": "hm"}')
    assert load_map_file(tmp_path / "p.json") is HM_MAP
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="bad.json"):
        load_map_file(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("12.50", 12.5), (" 3 ", 3.0), (7, 7.0), ("", None), (None, None), (float("nan"), None)],
)
def test_parse_price_ok(value, expected) -> None:
    assert parse_price(value) == expected


@pytest.mark.parametrize(
    "value", ["abc", "Infinity", "-inf", "nan", float("inf"), "-1", True, "1e999"]
)
def test_parse_price_refuses(value) -> None:
    with pytest.raises(RowError) as err:
        parse_price(value)
    assert err.value.reason == "bad price"


def test_row_to_product(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    cmap = parse_map(SPEC + ",colour=colour,ts=added")
    row = {
        "sku": " A1 ",
        "photo": "img/a.jpg",
        "name": "Shirt",
        "type": "shirt",
        "text": "Cotton.",
        "cost": "9.5",
        "family": "f1",
        "colour": "red",
        "added": "2024-01-02",
    }
    p = row_to_product(row, cmap, tmp_path, now=5.0)
    assert p.item_id == "A1" and p.image_path == str(tmp_path / "img" / "a.jpg")
    assert (p.title, p.category, p.description, p.price) == ("Shirt", "shirt", "Cotton.", 9.5)
    assert p.product_code == "f1" and p.attributes == {"colour": "red"}
    assert p.ts == 1704153600.0
    assert p.payload()["colour"] == "red" and p.label("colour") == "red"
    assert p.label("category") == "shirt"
    # optional cells empty: defaults; ts: the import time
    q = row_to_product({"sku": "B", "photo": "img/a.jpg"}, cmap, tmp_path, now=5.0)
    assert (q.title, q.category, q.price, q.attributes, q.ts) == ("", None, None, None, 5.0)
    for bad, reason in [
        ({**row, "sku": ""}, "missing id"),
        ({**row, "sku": "x" * 129}, "bad id"),
        ({**row, "photo": "img/none.jpg"}, "image not found"),
        ({**row, "photo": "  "}, "missing image"),
        ({**row, "cost": "abc"}, "bad price"),
        ({**row, "added": "yesterday"}, "bad ts"),
    ]:
        with pytest.raises(RowError) as err:
            row_to_product(bad, cmap, tmp_path, now=5.0)
        assert err.value.reason == reason, bad
    # without the image check a missing file passes (the worker decides)
    assert row_to_product(
        {**row, "photo": "img/none.jpg"}, cmap, tmp_path, now=0, check_images=False
    )


def _check_fixture_plan(plan, line_of) -> None:
    assert plan.rows_read == 54 and len(plan.accepted) == 48 and len(plan.refused) == 6
    assert {line_of(r.line): r.reason for r in plan.refused} == BAD
    assert plan.by_reason() == {
        "bad price": 2,
        "missing id": 1,
        "image not found": 1,
        "duplicate id": 1,
        "missing image": 1,
    }
    for r in plan.refused:
        assert r.message.startswith(f"{plan.path}:")
        assert f"{r.line}: {r.reason}: " in r.message
    assert [a.product.item_id for a in plan.accepted] == [f"OS-{n:04d}" for n in range(1, 49)]
    assert all(Path(p.image_path).is_file() for p in plan.products)
    assert all(p.attributes and p.attributes["colour"] for p in plan.products)
    dup = next(r for r in plan.refused if r.reason == "duplicate id")
    assert "first at line" in dup.detail and dup.key == "OS-0004"


def test_fixture_csv_and_jsonl_give_the_same_plan() -> None:
    cmap = load_map_file(SHOP / "mapping.json")
    csv_plan = plan_import(SHOP / "catalogue.csv", cmap, now=1.0)
    jsonl_plan = plan_import(SHOP / "catalogue.jsonl", cmap, now=1.0)
    _check_fixture_plan(csv_plan, lambda line: line)
    _check_fixture_plan(jsonl_plan, lambda line: line + 1)  # no header line
    assert csv_plan.products == jsonl_plan.products
    text = summary(csv_plan, 48)
    assert "rows read        54" in text and "sent             48" in text
    assert "bad price" in text and "refused           6" in text


def test_fixture_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    with open(SHOP / "catalogue.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    path = tmp_path / "catalogue.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    for p in (SHOP / "photos").glob("*.jpg"):  # image paths relative to the file's folder
        (tmp_path / "photos").mkdir(exist_ok=True)
        (tmp_path / "photos" / p.name).write_bytes(p.read_bytes())
    plan = plan_import(path, load_map_file(SHOP / "mapping.json"), now=1.0)
    _check_fixture_plan(plan, lambda line: line + 1)
    assert plan.refused[0].message.startswith(f"{path}:row 6: missing id")


def test_unreadable_rows_and_files(tmp_path: Path) -> None:
    cmap = parse_map("id=sku,image=photo")
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"sku": "a", "photo": "x.jpg"}\n[1]\n{oops\n\n{"sku": "b", "photo": 1}\n')
    plan = plan_import(bad, cmap, check_images=False)
    assert [(r.line, r.reason) for r in plan.refused] == [
        (2, "unreadable row"),
        (3, "unreadable row"),
    ]
    assert [a.line for a in plan.accepted] == [1, 5]
    assert plan.refused[1].raw == b"{oops"
    with pytest.raises(CatalogueError, match="no column 'photo'"):
        (tmp_path / "c.csv").write_text("sku,picture\na,b\n")
        plan_import(tmp_path / "c.csv", cmap)
    with pytest.raises(CatalogueError, match="unknown format"):
        plan_import(tmp_path / "c.xlsx", cmap)
    with pytest.raises(CatalogueError, match="no such file"):
        plan_import(tmp_path / "none.csv", cmap)
    (tmp_path / "l1.csv").write_bytes(b"sku,photo\na,b\n\xff\xfe,c\n")
    with pytest.raises(CatalogueError, match=r"l1.csv(:\d+)?: not UTF-8"):
        plan_import(tmp_path / "l1.csv", cmap, check_images=False)


def test_csv_line_numbers_count_multiline_cells(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('sku,photo,name\na,x.jpg,"two\nlines"\n,x.jpg,n\n')
    plan = plan_import(path, parse_map("id=sku,image=photo,title=name"), check_images=False)
    assert plan.accepted[0].product.title == "two\nlines"
    assert [(r.line, r.reason) for r in plan.refused] == [(4, "missing id")]


def test_hm_preset_is_read_hm_items() -> None:
    products = read_hm_items(HM_SAMPLE / "items.csv")
    with open(HM_SAMPLE / "items.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(products) == 200 and products[0].item_id == rows[0]["article_id"]
    p, row = products[0], rows[0]
    assert p.image_path == str((HM_SAMPLE / row["image_path"]).resolve())
    assert (p.title, p.category, p.product_code, p.ts) == (
        row["prod_name"],
        row["product_type_name"],
        row["product_code"],
        0.0,
    )
    assert p.attributes is None
    assert read_hm_items(HM_SAMPLE / "items.csv", limit=3) == products[:3]


def test_read_hm_items_bad_row_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("article_id,image_path\n1,a.jpg\n,b.jpg\n")
    with pytest.raises(ValueError, match=rf"{path}:3: missing id"):
        read_hm_items(path)


def test_refusal_letter() -> None:
    plan = plan_import(SHOP / "catalogue.csv", load_map_file(SHOP / "mapping.json"))
    refusal = next(r for r in plan.refused if r.reason == "image not found")
    value, key = refusal_letter(refusal)
    letter = DeadLetter.from_bytes(value)
    assert key == b"OS-BAD-PHOTO"
    assert letter.reason.startswith(f"{SHOP / 'catalogue.csv'}:25: image not found")
    assert letter.stage == "import" and letter.offset == 25
    assert json.loads(base64.b64decode(letter.value_b64))["sku"] == "OS-BAD-PHOTO"


def test_validate_rows_yields_in_file_order() -> None:
    from vrec_tools.catalogue_import import read_rows

    _, rows = read_rows(SHOP / "catalogue.csv")
    out = list(validate_rows(SHOP / "catalogue.csv", rows, load_map_file(SHOP / "mapping.json")))
    assert [o.line for o in out] == list(range(2, 56))
    assert {o.line for o in out if isinstance(o, Refusal)} == set(BAD)
    assert all(isinstance(o.product, ProductUpload) for o in out if isinstance(o, Accepted))


def test_cli_dry_run(capsys) -> None:
    rc = vrec(
        [
            "catalogue",
            "import",
            str(SHOP / "catalogue.csv"),
            "--map",
            SPEC + ",colour=colour",
            "--dry-run",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1  # some rows refused
    assert "rows read        54" in out and "dry run" in out
    for line, reason in BAD.items():
        assert f"catalogue.csv:{line}: {reason}" in err
    assert vrec(["catalogue", "import", str(SHOP / "catalogue.csv"), "--map", "id=sku"]) == 2
    assert "image=COLUMN" in capsys.readouterr().err


def test_image_url_column() -> None:
    cmap = parse_map("id=sku,image=photo,image_url=url")
    p = row_to_product({"sku": "a", "url": " https://shop.example/a.jpg "}, cmap, SHOP, now=0)
    assert p.image_url == "https://shop.example/a.jpg" and p.image_path is None
    # a file path wins over the URL: one image source per upload
    q = row_to_product(
        {"sku": "b", "photo": "photos/OS-0001.jpg", "url": "https://x.example/b.jpg"},
        cmap,
        SHOP,
        now=0,
    )
    assert q.image_path == str(SHOP / "photos" / "OS-0001.jpg") and q.image_url is None
    with pytest.raises(RowError) as err:
        row_to_product({"sku": "c", "url": "ftp://x.example/c.jpg"}, cmap, SHOP, now=0)
    assert err.value.reason == "bad image_url"
