"""The real catalogues shipped in grasp_dl.data.examples load with nothing beside the checkout."""

from __future__ import annotations

import pytest

from grasp_dl.data import examples
from grasp_dl.runtime.errors import CatalogError


def test_pal13_is_the_raw_archive_export() -> None:
    table = examples.read_pal13()
    assert len(table) == 123
    assert {"SOURCE_ID", "ra", "dec", "pmra", "pmdec", "parallax"} <= set(table.columns)


def test_vb21_fields_pair_catalogue_and_reference() -> None:
    names = examples.vb21_names()
    assert names == ["djorg1", "ngc6522", "ngc6624", "ngc6637", "ngc6652", "ngc6681", "ngc6723"]
    catalog, reference = examples.vb21_field("NGC 6522")
    assert len(catalog) == 5257
    assert list(reference.columns) == ["source_id", "memberprob"]
    assert set(reference["source_id"]) == set(catalog["source_id"])
    assert int((reference["memberprob"] > 0.5).sum()) == 553


def test_unknown_field_names_the_choices() -> None:
    with pytest.raises(CatalogError, match="djorg1"):
        examples.vb21_field("ngc9999")


def test_cluster_table_has_170_clusters() -> None:
    lines = examples.vb21_clusters_path().read_text().splitlines()
    assert lines[0].startswith("#")
    assert len(lines) == 171
