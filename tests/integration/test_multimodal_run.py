"""``vrec train multimodal`` end to end on the 200-item fixture (real image and text encoders).

The fixture's items.csv (absolute image paths) and its real purchases (events.jsonl, as an
events.csv) go to a temporary folder; the command runs classify, neighbours and the offline
eval at text weights 0 / 0.5 / 1 with a temporary embedding cache. Text contains the product
type (the leakage docs/multimodal.md reports), so text-only must beat image-only on product
type here; the eval at weight 0 must be the plain image-only ``visual`` baseline.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from encoders.training.train import main as train_main
from streams.settings import REPO_ROOT

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"

pytestmark = pytest.mark.model


def fixture_folder(tmp: Path) -> tuple[Path, str, str]:
    """tmp/items.csv + tmp/events.csv from the fixture; (folder, cutoff, end) of a split."""
    with (SAMPLE / "items.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["image_path"] = str((SAMPLE / r["image_path"]).resolve())
    with (tmp / "items.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    events = [json.loads(line) for line in (SAMPLE / "events.jsonl").read_text().splitlines()]
    buys = [e for e in events if e["kind"] == "purchase"]
    days = [str(np.datetime64(int(e["ts"]), "s").astype("datetime64[D]")) for e in buys]
    with (tmp / "events.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["event_type", "t_dat", "customer_id", "article_id", "price",
                    "sales_channel_id", "source", "src_row"])  # fmt: skip
        for n, (e, d) in enumerate(zip(buys, days)):
            w.writerow(["purchase", d, e["user_id"], e["item_id"], "0.01", "2", "hm", n])
    ordered = sorted(days)
    return tmp, ordered[int(0.85 * len(ordered))], ordered[-1]


def test_multimodal_command_on_the_fixture(tmp_path: Path) -> None:
    from vrec_tools.eval.baselines import catalogue_embeddings, visual
    from vrec_tools.eval.data import dev_split, load_hm
    from vrec_tools.eval.metrics import evaluate

    folder, cutoff, end = fixture_folder(tmp_path)
    out = tmp_path / "mm.json"
    cache = tmp_path / "emb.sqlite"
    argv = ["multimodal", "--items", str(folder / "items.csv"), "--cache", str(cache),
            "--weights", "0,0.5,1", "--epochs", "40", "--min-count", "3", "--cutoff", cutoff,
            "--end", end, "--json", str(out), "--no-progress"]  # fmt: skip
    assert train_main(argv) == 0
    res = json.loads(out.read_text())
    assert res["n_items"] == 200 and res["n_without_image"] == 0

    cls = res["classify"]
    assert set(cls) == {"image", "text", "image+text (concat)"}
    assert [cls[k]["dim"] for k in ("image", "text", "image+text (concat)")] == [1280, 384, 1664]
    assert len({cls[k]["n_test"] for k in cls}) == 1  # one split for every input
    assert cls["text"]["test_top1"] > cls["image"]["test_top1"]  # the type is in the text

    nn = res["neighbours"]
    assert set(nn) == {"0", "0.5", "1"}
    assert all(0 <= m["nn_at1"] <= 1 and m["n_queries"] == 200 for m in nn.values())
    assert nn["1"]["nn_at1"] > nn["0"]["nn_at1"]

    ev = res["eval"]
    items, events = load_hm(folder)
    history, truth, warm = dev_split(events, cutoff, end)
    emb = catalogue_embeddings(items, cache)
    plain = evaluate(visual(history, list(truth), emb, cutoff=cutoff), truth, warm, 12, 200)
    assert ev["0"]["users"] == len(truth) > 0
    assert ev["0"]["map_all"] == pytest.approx(plain["map_all"], abs=1e-12)
    assert ev["0"]["map_warm"] == pytest.approx(plain["map_warm"], abs=1e-12)
    assert {k: v["map_all"] for k, v in ev.items()} != {k: plain["map_all"] for k in ev}
