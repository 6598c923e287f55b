"""streams.util.tune_gc: the worker's collector thresholds, read from VREC_GC_THRESHOLD."""

import gc

import pytest
from pydantic import ValidationError

from streams.settings import Settings
from streams.util import parse_gc_threshold, tune_gc


def test_parse_gc_threshold() -> None:
    assert parse_gc_threshold("50000,20,100") == (50000, 20, 100)
    assert parse_gc_threshold(" 700, 10 ,10 ") == (700, 10, 10)
    assert parse_gc_threshold("") is None
    for bad in ("1,2", "a,b,c", "-1,2,3", "1,2,3,4", "1.5,2,3"):
        with pytest.raises(ValueError, match="three non-negative integers"):
            parse_gc_threshold(bad)


def test_settings_refuse_a_malformed_threshold() -> None:
    with pytest.raises(ValidationError, match="gc threshold"):
        Settings(gc_threshold="fast")
    assert Settings(gc_threshold="").worker.gc_threshold == ""


def test_tune_gc_sets_the_thresholds_and_freezes_what_is_alive() -> None:
    before = gc.get_threshold()
    try:
        tune_gc("")  # Python's own: nothing changes
        assert gc.get_threshold() == before
        tune_gc("12345,6,7")
        assert gc.get_threshold() == (12345, 6, 7)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
