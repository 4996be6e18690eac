"""Macaque references: sources, definitions, comparability flags, map flags and the Markdown table."""
import dataclasses
import json
import math
import re

import numpy as np
import pytest

from tdann_fast.analysis import references as R
from tdann_fast.analysis.references import (MT_REFERENCES, SOURCES, V1_REFERENCES, Reference,
                                            reference_table_markdown, references_for)

KINDS = ("direction", "orientation")
ALL = [(kind, r) for kind in KINDS for r in references_for(kind)]
IDS = [f"{kind}:{r.metric}" for kind, r in ALL]
MAP_KEYS = {"pinwheel_density_per_mm2", "density_per_spacing2", "spacing_mm"}
NEW_FIELDS = ("definition", "comparable", "map_metric", "statistic")


def test_field_order_is_kept_and_new_fields_have_defaults():
    names = [f.name for f in dataclasses.fields(Reference)]
    assert names[:8] == ["metric", "label", "value", "band", "text", "sources", "verified", "note"]
    assert names[8:] == list(NEW_FIELDS)
    r = Reference("m", "label", 1.0, None, "1", ("seed001",), False)  # old positional form still works
    assert (r.definition, r.comparable, r.map_metric, r.statistic) == ("", False, False, "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.value = 2.0


@pytest.mark.parametrize("kind,ref", ALL, ids=IDS)
def test_sources_exist(kind, ref):
    assert ref.sources, "every reference names at least one source"
    for s in ref.sources:
        assert s in SOURCES


@pytest.mark.parametrize("kind,ref", ALL, ids=IDS)
def test_reference_is_consistent(kind, ref):
    if ref.verified:
        assert ref.definition.strip(), "a verified reference states the source's definition"
    if ref.comparable:
        assert ref.value is not None or ref.band is not None, "a comparable reference has a number"
    if not ref.verified:
        assert ref.note.strip(), "an unverified reference says where its number came from"
    assert ref.statistic in R.STATISTICS
    assert ref.map_metric == (ref.metric in MAP_KEYS)
    if ref.band is not None:
        lo, hi = ref.band
        assert lo < hi
    assert ref.value is None or math.isfinite(ref.value)


@pytest.mark.parametrize("kind", KINDS)
def test_one_reference_per_metric(kind):
    metrics = [r.metric for r in references_for(kind)]
    assert len(metrics) == len(set(metrics))


def test_mt_has_column_spacing_and_v1_cv_numbers():
    mt = {r.metric: r for r in MT_REFERENCES}
    assert mt["spacing_mm"].map_metric and mt["spacing_mm"].label == "direction column spacing Λ (mm)"
    v1 = {r.metric: r for r in V1_REFERENCES}
    assert v1["median_circular_variance"].value == pytest.approx(0.605)
    assert v1["fraction_cv_below_0.6"].value == pytest.approx(0.497)
    assert v1["density_per_spacing2"].value == pytest.approx(math.pi)


@pytest.mark.parametrize("kind,ref", ALL, ids=IDS)
def test_as_dict_has_the_new_keys_and_is_json(kind, ref):
    d = ref.as_dict()
    for key in NEW_FIELDS + ("metric", "value", "band", "sources", "verified", "note", "citations"):
        assert key in d
    assert d["citations"] == [SOURCES[s] for s in ref.sources]
    assert json.loads(json.dumps(d)) == d


def test_lines():
    assert Reference("m", "l", 2.0, None, "", ("seed001",), False).lines() == [2.0]
    assert Reference("m", "l", None, (1.0, 3.0), "", ("seed001",), False).lines() == [1.0, 3.0]
    assert Reference("m", "l", None, None, "", ("seed001",), False).lines() == []


def _cells(row):
    """Split a Markdown table row on unescaped pipes."""
    parts = re.split(r"(?<!\\)\|", row)
    assert parts[0] == "" and parts[-1] == ""
    return [p.strip() for p in parts[1:-1]]


@pytest.mark.parametrize("kind", KINDS)
def test_markdown_table_has_one_row_per_reference(kind):
    refs = references_for(kind)
    lines = reference_table_markdown(kind).splitlines()
    assert _cells(lines[0]) == ["metric", "value", "statistic", "definition", "sources",
                                "checked against the paper", "comparable with the model"]
    assert set(lines[1].replace("|", "")) == {"-"}
    body = lines[2:]
    assert len(body) == len(refs)
    for row, r in zip(body, refs):
        cells = _cells(row)
        assert len(cells) == 7
        assert cells[0].startswith(r.label)
        assert cells[5] == ("yes" if r.verified else "no – to verify")
        assert cells[6] == ("yes" if r.comparable else "no")
        for s in r.sources:
            assert f"[{s}]" in cells[4]


def test_markdown_escapes_pipes_in_definitions():
    table = reference_table_markdown("orientation")
    assert "\\|Σ" in table  # |Σ r e^{2iθ}| inside a cell must not break the table


def test_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        references_for("colour")
    with pytest.raises(ValueError, match="kind"):
        reference_table_markdown("colour")


def test_median_of_normalised_index_converts_exactly():
    """The note's claim: DSI = 1 - n/p and x = (p - n)/(p + n) are related by DSI = 2x/(1 + x) (monotonic), so
    the median converts exactly while the mean does not."""
    rng = np.random.default_rng(0)
    p = rng.uniform(1.0, 5.0, 101)
    n = p * rng.uniform(0.0, 1.0, 101)
    dsi = 1 - n / p
    x = (p - n) / (p + n)
    np.testing.assert_allclose(dsi, 2 * x / (1 + x))
    assert np.median(dsi) == pytest.approx(2 * np.median(x) / (1 + np.median(x)))
    assert abs(np.mean(dsi) - 2 * np.mean(x) / (1 + np.mean(x))) > 1e-3
