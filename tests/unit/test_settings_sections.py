"""Settings in sections: every flat VREC_* field in exactly one section, overrides visible there,
roles a validated set."""

from __future__ import annotations

import dataclasses

import pytest

from streams.experiment import RANKING_FIELDS
from streams.settings import ROLES, SECTIONS, Settings, section_fields


def test_every_field_belongs_to_exactly_one_section():
    owners: dict[str, list[str]] = {}
    for name in SECTIONS:
        for flat in section_fields(name).values():
            owners.setdefault(flat, []).append(name)
    assert set(owners) == set(Settings.model_fields)
    assert {f: s for f, s in owners.items() if len(s) != 1} == {}


def test_sections_have_the_fields_they_map():
    s = Settings()
    for name, cls in SECTIONS.items():
        section = getattr(s, name)
        assert isinstance(section, cls), name
        mapped = set(section_fields(name))
        assert mapped <= {f.name for f in dataclasses.fields(cls)}, name
        for attr, flat in section_fields(name).items():
            assert getattr(section, attr) == getattr(s, flat), (name, attr)


def test_sections_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().ranking.top_k = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("section", "attr", "flat", "value"),
    [
        ("ranking", "top_k", "top_k", 5),
        ("tables", "store", "table_store", "rocksdb://"),
        ("web", "port", "web_port", 7000),
        ("event_time", "max_jump_s", "event_time_max_jump_s", 60.0),
        ("streaming", "app_id", "app_id", "vrec-x"),
        ("encoder", "batch", "encoder_batch", 4),
        ("popularity", "copurchase_neighbours", "copurchase_neighbours", 7),
    ],
)
def test_an_override_shows_in_its_section(section, attr, flat, value):
    assert getattr(getattr(Settings(**{flat: value}), section), attr) == value
    copied = Settings().model_copy(update={flat: value})
    assert getattr(getattr(copied, section), attr) == value


def test_derived_section_values_follow_overrides(tmp_path):
    s = Settings(data_dir=tmp_path, web_token="a, b", broker="kafka://h:1")
    assert s.images.roots == (tmp_path / "images", tmp_path / "uploads")
    assert s.web.tokens == ("a", "b")
    assert (s.streaming.bootstrap, s.streaming.broker_url) == ("h:1", "kafka://h:1")


def test_the_ranking_section_is_what_variants_may_override():
    assert set(section_fields("ranking")) == RANKING_FIELDS


def test_table_store_default_is_memory():
    assert Settings().tables.store == "memory://"


def test_roles_are_a_validated_set(monkeypatch):
    assert Settings().roles == frozenset(ROLES)
    assert Settings(roles="recommend, encode").roles == {"encode", "recommend"}
    assert Settings(roles=["encode"]).worker.roles == {"encode"}
    monkeypatch.setenv("VREC_ROLES", "recommend")
    assert Settings().roles == {"recommend"}
    for bad in ("", "encoder", "encode,users", []):
        with pytest.raises(ValueError, match="roles"):
            Settings(roles=bad)
    with pytest.raises(ValueError, match="unknown \\['users'\\]"):
        Settings(roles="encode,users")


def test_roles_dump_as_the_environment_writes_them():
    assert Settings(roles="recommend,encode").model_dump(mode="json")["roles"] == (
        "encode,recommend"
    )
    assert Settings(roles="recommend").model_dump()["roles"] == frozenset({"recommend"})
