"""grasp-dl survey (many clusters as one Hydra multirun) and grasp-dl fetch (Gaia cones into a cache).

The survey runs in-process on Hydra's basic launcher (the joblib default starts worker processes);
the Gaia archive is a fake client that returns astropy Tables built here and records the queries.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from grasp_dl.cli import main
from grasp_dl.data.clusters import literature_cluster
from grasp_dl.data.examples import vb21_field_path
from grasp_dl.jobs import fetch, survey

# ----------------------------------------------------------------------------- fetch


class FakeJob:
    def __init__(self, table: Table) -> None:
        self.table = table

    def get_results(self) -> Table:
        return self.table


class FakeGaia:
    """The archive: ``stars`` answered by TOP n ... WHERE source_id > last ORDER BY source_id, queries recorded."""

    def __init__(self, stars: pd.DataFrame | None = None, error: BaseException | None = None) -> None:
        self.stars = stars
        self.error = error
        self.queries: list[str] = []

    def launch_job_async(self, query: str) -> FakeJob:
        self.queries.append(query)
        if self.error is not None:
            raise self.error
        top = int(query.split("TOP ")[1].split()[0])
        rows = self.stars.sort_values("source_id")
        if "source_id >" in query:
            after = int(query.split("source_id > ")[1].split()[0])
            rows = rows[rows["source_id"] > after]
        # the archive answers in upper case for some columns (SOURCE_ID)
        return FakeJob(Table.from_pandas(rows.head(top).rename(columns={"source_id": "SOURCE_ID"})))


def fake_stars(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    stars = pd.DataFrame({c: rng.normal(size=n) for c in fetch.FETCH_COLUMNS if c != "source_id"})
    stars.insert(0, "source_id", rng.permutation(np.arange(1000, 1000 + 10 * n, 10)))
    return stars


def test_cone_query_is_the_tables_cone_with_the_model_columns():
    query = fetch.cone_query(265.17, -53.67, 0.25, page_rows=1000)
    assert query.startswith("SELECT TOP 1000 source_id, ra, dec, parallax")
    assert "FROM gaiadr3.gaia_source" in query
    assert "CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 265.17000000, -53.67000000, 0.25000000))" in query
    assert query.rstrip().endswith("ORDER BY source_id ASC")
    assert "source_id >" not in query
    assert "AND source_id > 42" in fetch.cone_query(265.17, -53.67, 0.25, after_source_id=42)


def test_fetch_columns_cover_what_prediction_reads():
    from grasp_dl.inference.predict import PREDICTION_COLUMNS

    derived = {"bp_g", "g_rp"}  # from the magnitudes
    assert set(PREDICTION_COLUMNS) - derived <= set(fetch.FETCH_COLUMNS)


def test_a_large_cone_is_read_in_source_id_pages_without_repeats():
    stars = fake_stars(23)
    client = FakeGaia(stars)
    got = fetch.query_cone(10.0, -20.0, 0.1, client=client, page_rows=10)
    assert len(client.queries) == 3  # 10 + 10 + 3
    assert "source_id >" not in client.queries[0]
    first_page_last = int(np.sort(stars["source_id"])[9])
    assert f"source_id > {first_page_last}" in client.queries[1]
    assert list(got["source_id"]) == sorted(stars["source_id"])
    assert list(got.columns) == list(fetch.FETCH_COLUMNS)  # lower case


def test_a_full_last_page_asks_once_more_and_gets_nothing():
    client = FakeGaia(fake_stars(20))
    assert len(fetch.query_cone(10.0, -20.0, 0.1, client=client, page_rows=10)) == 20
    assert len(client.queries) == 3


def test_fetch_writes_the_cache_and_a_second_fetch_asks_nothing(tmp_path):
    client = FakeGaia(fake_stars(15))
    path = fetch.fetch_cluster("NGC 6397", tmp_path, client=client, page_rows=10)
    assert path == tmp_path / "NGC_6397.parquet"
    assert len(pd.read_parquet(path)) == 15
    record = json.loads(path.with_suffix(".json").read_text())
    cluster = literature_cluster("NGC_6397")
    assert record["radius_deg"] == pytest.approx(cluster.rmax_arcmin / 60)
    assert f"{cluster.ra:.8f}" in client.queries[0]
    n = len(client.queries)
    assert fetch.fetch_cluster("ngc6397", tmp_path, client=client) == path
    assert len(client.queries) == n  # cache hit
    fetch.fetch_cluster("NGC_6397", tmp_path, client=client, refresh=True)
    assert len(client.queries) > n


def test_fetch_names_on_the_command_line_become_one_override():
    assert fetch.fetch_overrides(["NGC_6397", "M4", "cache_dir=/x"]) == ["names=['NGC_6397','M4']", "cache_dir=/x"]


def test_unreachable_archive_is_one_line_and_rc_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    client = FakeGaia(error=ConnectionError("Failed to resolve 'gea.esac.esa.int'"))
    monkeypatch.setattr(fetch, "gaia_client", lambda: client)
    with pytest.raises(SystemExit) as exit_info:
        main(["fetch", "NGC_6397", f"cache_dir={tmp_path / 'cache'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "grasp-dl: error: the Gaia archive cannot be reached (ConnectionError: Failed to resolve" in err
    assert "run fetch where there is network, or give data.path" in err
    assert "Traceback" not in err
    assert not (tmp_path / "cache" / "NGC_6397.parquet").exists()


def test_a_refused_query_is_not_an_unreachable_archive():
    class Refused(OSError):
        response = type("Response", (), {"status_code": 400})()

    with pytest.raises(Refused):
        fetch.query_cone(10.0, -20.0, 0.1, client=FakeGaia(error=Refused("ADQL syntax error")))


def test_fetch_command_prints_the_cached_cone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fetch, "gaia_client", lambda: FakeGaia(fake_stars(12)))
    main(["fetch", "M4", f"cache_dir={tmp_path / 'cache'}"])
    assert "NGC_6121_M_4: 12 stars in" in capsys.readouterr().out


# ----------------------------------------------------------------------------- survey


def small_cone(name: str, n: int, seed: int = 0) -> pd.DataFrame:
    catalog = pd.read_csv(vb21_field_path(name))
    return catalog.sample(n=min(n, len(catalog)), random_state=seed).reset_index(drop=True)


@pytest.fixture
def cones(tmp_path):
    """Two small real cones named as the table names them, and one that cannot be read."""
    folder = tmp_path / "cones"
    folder.mkdir()
    small_cone("djorg1", 700).to_csv(folder / "Djorg_1.csv", index=False)
    small_cone("ngc6652", 700).to_csv(folder / "NGC_6652.csv", index=False)
    (folder / "NGC_6652.ref.csv").write_text("source_id,memberprob\n1,0.5\n")  # not a cone
    (folder / "NGC_6624.csv").write_text("this is not,a catalogue\n")
    return folder


def run_survey(folder, survey_dir, *extra):
    main(["survey", f"survey.cones={folder}", f"survey.dir={survey_dir}", "hydra/launcher=basic", *extra])


def test_survey_targets_are_the_cones_of_the_directory_or_the_names(cones):
    assert list(survey.survey_targets({"cones": str(cones)})) == ["Djorg_1", "NGC_6624", "NGC_6652"]
    assert survey.survey_targets({"names": ["M4", "ngc 6397"]}) == {"NGC_6121_M_4": None, "NGC_6397": None}
    with pytest.raises(survey.ConfigError, match="not both"):
        survey.survey_targets({"cones": str(cones), "names": ["M4"]})


def test_survey_machinery_failures_are_rows_and_reruns_skip_finished(cones, tmp_path, monkeypatch, capsys):
    """The multirun, the rows, the merge and the skips, with a stand-in for train + predict."""
    ran = []

    def fake_run(cfg, name):
        ran.append(name)
        if name == "NGC_6624":
            raise ValueError("cannot read this cone\nsecond line")
        lit = literature_cluster(name)
        summary = {
            "cluster_group": 0,
            "n_rows": 100,
            "n_scored": 100,
            "n_members": 40,
            "mean_pmra": lit.pmra + 0.01,
            "mean_pmra_error": 0.02,
            "mean_pmdec": lit.pmdec,
            "mean_pmdec_error": 0.02,
            "cluster_found": True,
            "cluster_reason": "passes",
            "xd_pm_dispersion": 0.1,
        }
        from grasp_dl.data.clusters import compare_with_literature
        from grasp_dl.membership.summary import ClusterSummary

        summary = ClusterSummary.from_dict(summary)
        return survey.summary_row(name, lit.name, summary.with_literature(compare_with_literature(summary, lit)))

    monkeypatch.setattr(survey, "run_cluster", fake_run)
    out = tmp_path / "survey"
    run_survey(cones, out)
    assert sorted(ran) == ["Djorg_1", "NGC_6624", "NGC_6652"]
    table = pd.read_csv(out / survey.TABLE)
    assert list(table["name"]) == ["Djorg_1", "NGC_6624", "NGC_6652"]
    assert list(table.columns) == list(survey.COLUMNS)
    bad = table.set_index("name").loc["NGC_6624"]
    assert bad["error"] == "ValueError: cannot read this cone"
    good = table.set_index("name").loc["Djorg_1"]
    assert pd.isna(good["error"]) and good["members"] == 40 and good["pm_dispersion"] == 0.1
    assert good["delta_pmra_sigma"] > 0 and good["published_pmra"] == literature_cluster("Djorg_1").pmra
    assert (out / survey.FIGURE).is_file()
    assert "3 clusters, 1 failed" in capsys.readouterr().out

    # a rerun runs only the failed cluster; with retry_failed=false, nothing at all
    ran.clear()
    run_survey(cones, out)
    assert ran == ["NGC_6624"]
    ran.clear()
    run_survey(cones, out, "survey.retry_failed=false")
    assert ran == []
    assert "3 of 3 clusters already finished" in capsys.readouterr().out
    assert len(pd.read_csv(out / survey.TABLE)) == 3


def test_survey_of_an_empty_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run_survey(tmp_path / "empty", tmp_path / "s")
    assert exit_info.value.code == 2
    assert "holds no cone" in capsys.readouterr().err


def test_survey_from_names_reads_the_fetch_cache(tmp_path, monkeypatch):
    """survey.names: each cone comes from the cache (queried once, when absent)."""
    client = FakeGaia(small_cone("djorg1", 50))
    monkeypatch.setattr(fetch, "gaia_client", lambda: client)
    cfg = survey.compose_survey(["survey.names=[Djorg_1]", f"survey.cache_dir={tmp_path}"])
    path = survey.cone_path(cfg, "Djorg_1")
    assert path == tmp_path / "Djorg_1.parquet" and len(pd.read_parquet(path)) == 50
    survey.cone_path(cfg, "Djorg_1")
    assert len(client.queries) == 1


def test_survey_of_names_fetches_missing_cones_first_or_stops_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fetch, "gaia_client", lambda: FakeGaia(error=OSError("Network is unreachable")))
    names = ["survey.names=[Djorg_1,M4]", f"survey.cache_dir={tmp_path / 'cache'}", f"survey.dir={tmp_path / 's'}"]
    with pytest.raises(SystemExit) as exit_info:
        main(["survey", *names])
    assert exit_info.value.code == 2
    assert "the Gaia archive cannot be reached (OSError: Network is unreachable)" in capsys.readouterr().err
    assert not (tmp_path / "s" / "results").exists()  # no job started

    client = FakeGaia(small_cone("djorg1", 40))
    monkeypatch.setattr(fetch, "gaia_client", lambda: client)
    survey.fetch_missing(["Djorg_1", "NGC_6121_M_4"], str(tmp_path / "cache"))
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.parquet")) == ["Djorg_1.parquet", "NGC_6121_M_4.parquet"]
    n = len(client.queries)
    survey.fetch_missing(["Djorg_1", "NGC_6121_M_4"], str(tmp_path / "cache"))
    assert len(client.queries) == n


@pytest.mark.slow
def test_survey_trains_and_predicts_each_cone(cones, tmp_path):
    out = tmp_path / "survey"
    run_survey(cones, out, "model.n_starts=1", "model.max_iter=30")
    table = pd.read_csv(out / survey.TABLE).set_index("name")
    assert len(table) == 3
    assert "NGC_6624" in table.index and "CatalogError" in table.loc["NGC_6624", "error"]
    for name in ("Djorg_1", "NGC_6652"):
        row = table.loc[name]
        assert pd.isna(row["error"]), row["error"]
        assert row["stars"] == 700 and row["members"] > 0
        assert np.isfinite(row["mean_pmra"]) and np.isfinite(row["pm_offset_sigma"])
        assert (out / "runs" / name / "predictions.parquet").is_file()
    assert (out / survey.FIGURE).is_file()


@pytest.mark.slow
def test_survey_on_the_default_joblib_launcher(tmp_path):
    """The default launcher: jobs in joblib's worker processes, the merge in this one."""
    folder = tmp_path / "cones"
    folder.mkdir()
    small_cone("djorg1", 400).to_csv(folder / "Djorg_1.csv", index=False)
    (folder / "NGC_6624.csv").write_text("")
    out = tmp_path / "survey"
    main(["survey", f"survey.cones={folder}", f"survey.dir={out}", "model.n_starts=1", "model.max_iter=30"])
    table = pd.read_csv(out / survey.TABLE).set_index("name")
    assert pd.isna(table.loc["Djorg_1", "error"]) and table.loc["Djorg_1", "stars"] == 400
    assert isinstance(table.loc["NGC_6624", "error"], str)


def run_one_cluster(folder, survey_dir, name, *extra):
    """One cluster of a survey through :func:`survey.survey_task`, in this process (a worker's job)."""
    from omegaconf import open_dict

    cfg = survey.compose_survey([f"survey.cones={folder}", f"survey.dir={survey_dir}", *extra])
    with open_dict(cfg):
        cfg.cluster = name
        cfg.paths.output_dir = str(survey_dir / "runs" / name)
    return survey.survey_task(cfg)


def test_a_survey_job_writes_its_checkpoint_once_and_it_predicts_as_the_row(tmp_path, monkeypatch):
    """No checkpoint per EM iteration (the survey never resumes one): one last.ckpt, the module the row came from."""
    import lightning as L

    from grasp_dl.inference.predict import load_clustering_module, predict_catalog

    folder = tmp_path / "cones"
    folder.mkdir()
    small_cone("ngc6652", 500).to_csv(folder / "NGC_6652.csv", index=False)
    writes = []
    save = L.Trainer.save_checkpoint

    def counted(self, path, *args, **kwargs):
        writes.append(path)
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", counted)
    out = tmp_path / "survey"
    row = run_one_cluster(folder, out, "NGC_6652", "model.n_starts=1", "model.max_iter=20")
    assert row["error"] is None and row["members"] > 0
    checkpoints = out / "runs" / "NGC_6652" / "checkpoints"
    assert [p.name for p in sorted(checkpoints.iterdir())] == ["last.ckpt"]
    assert len(writes) == 1, writes
    written = pd.read_parquet(out / "runs" / "NGC_6652" / "predictions.parquet")
    table, summary = predict_catalog(
        load_clustering_module(checkpoints / "last.ckpt"), str(folder / "NGC_6652.csv"), cluster="NGC_6652"
    )
    assert np.array_equal(written["member_prob"].to_numpy(), table["member_prob"].to_numpy())
    assert summary.n_members == row["members"]


def test_the_launching_process_composes_one_jobs_config_to_check_the_sweep_not_every_one(cones, tmp_path, monkeypatch):
    """Hydra's sweeper composed every job's config before launching (0.25 s each, none running meanwhile);
    the survey's jobs differ only in cluster=NAME, so the first one is checked and each job composes its own."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    composed = []
    load = ConfigLoaderImpl.load_sweep_config

    def counted(self, master_config, sweep_overrides):
        composed.append([o for o in sweep_overrides if o.startswith("cluster=")])
        return load(self, master_config, sweep_overrides)

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counted)
    monkeypatch.setattr(survey, "run_cluster", lambda cfg, name: {"name": name, "members": 1})
    run_survey(cones, tmp_path / "survey")
    # the check (the first job), then each of the three jobs as the (basic) launcher runs it
    assert len(composed) == 4 and composed[0] == composed[1]
    assert sorted(composed[1:]) == [["cluster=Djorg_1"], ["cluster=NGC_6624"], ["cluster=NGC_6652"]]
    assert "validate_batch_is_legal" not in BasicSweeper.__dict__  # Hydra's own sweeper is left as it is


def test_the_survey_registers_its_sweeper_where_hydras_scan_does_not_find_it(cones, tmp_path, monkeypatch):
    """An editable install hides hydra_plugins.grasp_dl_survey from Hydra's walk of the namespace."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    name = "hydra_plugins.grasp_dl_survey.SurveySweeper"
    monkeypatch.delitem(plugins.class_name_to_class, name, raising=False)
    monkeypatch.setattr(survey, "run_cluster", lambda cfg, name: {"name": name, "members": 1})
    run_survey(cones, tmp_path / "survey")
    assert name in plugins.class_name_to_class
    assert sorted(pd.read_csv(tmp_path / "survey" / survey.TABLE)["name"]) == ["Djorg_1", "NGC_6624", "NGC_6652"]


def test_the_survey_composes_with_the_launcher_chosen_on_the_command_line(cones, tmp_path, monkeypatch):
    """A wheel without the sweep extra: the default launcher's config cannot load, hydra/launcher=basic must."""
    import shutil

    import grasp_dl.runtime.config as config

    conf = tmp_path / "conf"
    shutil.copytree(config.conf_dir(), conf)
    (conf / "hydra" / "launcher" / "local_parallel.yaml").write_text("defaults:\n  - not_installed\n")
    monkeypatch.setattr(config, "conf_dir", lambda: conf)
    with pytest.raises(survey.ConfigError, match="not_installed"):
        survey.compose_survey([f"survey.cones={cones}"])
    cfg = survey.compose_survey([f"survey.cones={cones}", "hydra/launcher=basic", "hydra.launcher.n_jobs=3"])
    assert cfg.survey.cones == str(cones)
