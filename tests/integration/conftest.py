"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

import pytest

from streams.settings import REPO_ROOT
from vrec_tools.replay import read_hm_items, read_log

SAMPLE = REPO_ROOT / "tests" / "fixtures" / "hm_sample"


@pytest.fixture(scope="module")
def sample():
    """The H&M sample: 200 products, 2,000 events."""
    products = read_hm_items(SAMPLE / "items.csv")
    _, events = read_log(SAMPLE / "events.jsonl")
    assert len(products) == 200 and len(events) == 2000
    return products, events
