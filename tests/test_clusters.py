"""Globular clusters by name (forgiving spelling) and the recovered astrometry against the literature."""

import math

import numpy as np
import pandas as pd
import pytest

from grasp_dl.data.clusters import (
    MESSIER,
    PARALLAX_SYSTEMATIC,
    PM_SYSTEMATIC,
    compare_with_literature,
    literature_cluster,
    literature_lines,
    read_clusters,
    resolve_cluster_name,
)
from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.examples import vb21_field, vb21_field_path
from grasp_dl.runtime.errors import CatalogError


def test_the_shipped_table_has_170_clusters():
    table = read_clusters()
    assert len(table) == 170 and table.index.is_unique
    assert {"ra", "dec", "pmra", "pmdec", "plx", "pmra_e", "pmdec_e", "plx_e", "rmax"} <= set(table.columns)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("NGC 6397", "NGC_6397"),
        ("NGC6397", "NGC_6397"),
        ("ngc_6397", "NGC_6397"),
        ("NGC_6397", "NGC_6397"),
        ("M4", "NGC_6121_M_4"),
        ("M 4", "NGC_6121_M_4"),
        ("NGC 6121", "NGC_6121_M_4"),
        ("NGC6121", "NGC_6121_M_4"),
        ("NGC 104", "NGC_104_47Tuc"),
        ("47 Tuc", "NGC_104_47Tuc"),
        ("47 Tucanae", "NGC_104_47Tuc"),
        ("omega Cen", "NGC_5139_oCen"),
        ("Omega Centauri", "NGC_5139_oCen"),
        ("NGC 5139", "NGC_5139_oCen"),
        ("M107", "NGC_6171_M107"),
        ("m 54", "NGC_6715_M_54"),
        ("Terzan 5", "Terzan_5_11"),
        ("Djorg 1", "Djorg_1"),
        ("Pal 13", "Pal_13"),
        ("pal_13", "Pal_13"),
        ("Ryu 59", "Ryu_059_RLGC1"),
        ("Eridanus", "Eridanus"),
    ],
)
def test_forgiving_names(name, expected):
    assert resolve_cluster_name(name) == expected


def test_every_messier_globular_resolves_to_its_ngc_row():
    for messier, ngc in MESSIER.items():
        name = resolve_cluster_name(f"M{messier}")
        assert name.split("_")[:2] == ["NGC", str(ngc)], (messier, name)
        assert resolve_cluster_name(f"NGC {ngc}") == name


def test_unknown_name_raises_with_close_matches():
    with pytest.raises(CatalogError, match="unknown cluster 'NGC 6398'.*NGC_6397"):
        resolve_cluster_name("NGC 6398")
    with pytest.raises(CatalogError, match="NGC_5139_oCen"):
        resolve_cluster_name("omega centuri")
    with pytest.raises(CatalogError, match="data.center"):
        resolve_cluster_name("Andromeda galaxy")


def test_literature_record_values():
    m4 = literature_cluster("M4")
    assert m4.name == "NGC_6121_M_4" and m4.center == (245.897, -26.526)
    assert (m4.pmra, m4.pmdec, m4.parallax) == (-12.514, -19.022, 0.5558)
    assert (m4.pmra_error, m4.parallax_error) == (0.0231, 0.0099)


def _summary(pmra, pmdec, plx, err=0.01):
    return {
        "mean_pmra": pmra,
        "mean_pmra_error": err,
        "mean_pmdec": pmdec,
        "mean_pmdec_error": err,
        "mean_parallax": plx,
        "mean_parallax_error": err,
    }


def test_comparison_in_mas_and_combined_sigmas():
    m4 = literature_cluster("M4")
    result = compare_with_literature(_summary(m4.pmra + 0.03, m4.pmdec, m4.parallax - 0.01), m4)
    lit = result["literature"]
    assert result["literature_warning"] is None
    s_ra = math.sqrt(0.01**2 + m4.pmra_error**2 + PM_SYSTEMATIC**2)
    assert lit["delta_pmra"] == pytest.approx(0.03) and lit["delta_pmra_sigma"] == pytest.approx(0.03 / s_ra)
    assert lit["delta_pmdec"] == pytest.approx(0.0) and lit["pm_offset"] == pytest.approx(0.03)
    s_plx = math.sqrt(0.01**2 + m4.parallax_error**2 + PARALLAX_SYSTEMATIC**2)
    assert lit["delta_parallax_sigma"] == pytest.approx(-0.01 / s_plx)
    assert lit["systematic_floor"] == {"pm_mas_yr": PM_SYSTEMATIC, "parallax_mas": PARALLAX_SYSTEMATIC}
    line = literature_lines({**result})[0]
    assert "NGC_6121_M_4" in line and "+0.030 mas/yr" in line


def test_a_large_disagreement_is_a_warning_but_a_small_significant_one_is_not():
    cluster = literature_cluster("NGC 6397")
    # 2 mas/yr off: tens of sigma and over 0.5 mas/yr -> the alarm
    far = compare_with_literature(_summary(cluster.pmra + 2.0, cluster.pmdec - 1.0, cluster.parallax), cluster)
    assert far["literature_warning"] and "probably not this cluster" in far["literature_warning"]
    assert far["literature"]["pm_offset_sigma"] > 5
    lines = literature_lines(far)
    assert lines[-1].startswith("warning: ")
    # 0.3 mas/yr with tiny errors: many sigma, but under the 0.5 mas/yr size limit (systematics) -> no alarm
    near = compare_with_literature(_summary(cluster.pmra + 0.3, cluster.pmdec, cluster.parallax, err=0.001), cluster)
    assert near["literature"]["pm_offset_sigma"] > 5 and near["literature_warning"] is None
    # 0.6 mas/yr but with a huge recovered error: large, not significant -> no alarm
    vague = compare_with_literature(_summary(cluster.pmra + 0.6, cluster.pmdec, cluster.parallax, err=0.5), cluster)
    assert vague["literature_warning"] is None
    # the parallax alone can raise it (a foreground group)
    plx = compare_with_literature(_summary(cluster.pmra, cluster.pmdec, cluster.parallax + 0.5), cluster)
    assert "parallax" in plx["literature_warning"]


def test_no_members_means_nothing_to_compare():
    cluster = literature_cluster("M4")
    result = compare_with_literature(_summary(float("nan"), float("nan"), float("nan")), cluster)
    assert result["literature_warning"] is None and result["literature"]["note"].startswith("no members")
    assert "nothing to compare" in literature_lines(result)[0]


def test_data_cluster_sets_the_centre_and_rides_in_the_checkpoint_state():
    catalog, _ = vb21_field("ngc6624")
    dm = StellarCatalogDataModule(catalog=catalog, cluster="NGC 6624")
    assert dm.cluster == "NGC_6624" and dm.center == [275.919, -30.361]
    dm.setup("fit")
    assert dm.preprocessing_state()["cluster"] == "NGC_6624"
    assert tuple(dm.prepared.center) == (275.919, -30.361)
    # an explicit centre wins over the cluster's
    dm = StellarCatalogDataModule(catalog=catalog, cluster="NGC 6624", center=[275.9, -30.3])
    assert dm.center == [275.9, -30.3] and dm.cluster == "NGC_6624"
    with pytest.raises(CatalogError, match="unknown cluster"):
        StellarCatalogDataModule(catalog=catalog, cluster="NGC 99999")


def test_deep_clustering_model_passes_the_resolved_name():
    from grasp_dl.api import DeepClusteringModel

    overrides = DeepClusteringModel(cluster="ngc 6624").config_overrides()
    assert "data.cluster=NGC_6624" in overrides
    cfg = DeepClusteringModel(cluster="M 69", output_dir="/tmp/unused").compose_config()
    assert cfg.data.cluster == "NGC_6637_M_69"
    with pytest.raises(CatalogError):
        DeepClusteringModel(cluster="M 999").config_overrides()


@pytest.mark.slow
def test_cli_train_and_predict_on_a_real_field_report_the_literature(tmp_path, run_main):
    """grasp-dl train/predict on the shipped NGC 6624 field with data.cluster: the centre and the comparison."""
    run = tmp_path / "run"
    common = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger=csv"]
    train = run_main(
        [
            "train",
            "data=catalog",
            f"data.path={vb21_field_path('ngc6624')}",
            "data.cluster=NGC_6624",
            "model=dec",
            "model.pretrain_epochs=3",
            "trainer.max_epochs=3",
            f"hydra.run.dir={run}",
            *common,
        ],
        tmp_path,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "cluster check: share" in train.stdout
    assert "vs NGC_6624 (Vasiliev & Baumgardt 2021)" in train.stdout or "warning: no cluster found" in train.stdout
    output = tmp_path / "members.parquet"
    predict = run_main(
        [
            "predict",
            f"ckpt_path={run}/checkpoints/last.ckpt",
            f"data.path={vb21_field_path('ngc6624')}",
            f"output={output}",
            f"hydra.run.dir={tmp_path / 'p'}",
        ],
        tmp_path,
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    summary = pd.read_json(output.with_name("members.summary.json"), typ="series")
    assert summary["center"] == [275.919, -30.361]
    assert summary["literature"]["name"] == "NGC_6624"
    assert "cluster_found" in summary and "radial_profile" in summary["diagnostics"]
    assert "vs NGC_6624" in predict.stdout and output.with_suffix(".png").is_file()
    if summary["cluster_found"]:
        lit = summary["literature"]
        assert np.isfinite(lit["pm_offset"]) and np.isfinite(lit["pm_offset_sigma"])
        pm_alarm = lit["pm_offset_sigma"] > 5 and lit["pm_offset"] > 0.5
        warning = summary["literature_warning"] or ""
        assert bool(warning) == pm_alarm or "parallax" in warning
