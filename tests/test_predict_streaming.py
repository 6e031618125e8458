"""The fast streamed predict: read-ahead and write-behind threads, work done once, same output."""

import threading
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from grasp_dl.data.catalog import CatalogChunkWriter, write_catalog
from grasp_dl.data.prepare import prepare_stellar_data
from grasp_dl.data.simulate import simulate_field
from grasp_dl.inference.predict import (
    load_clustering_module,
    predict_catalog,
    predict_command,
    predict_to_file,
    scoring_device,
)
from grasp_dl.inference.streaming import ReadAhead, WriteBehind, single_scoring_thread
from grasp_dl.jobs import train as pipeline
from grasp_dl.membership.guards import StarSample
from grasp_dl.runtime.errors import CatalogError, ConfigError

from hydra_configs import TINY, compose_config

# --------------------------------------------------------------------------- the threads


def test_read_ahead_keeps_order_and_reads_at_most_depth_ahead():
    taken = []

    def items():
        for i in range(10):
            taken.append(i)
            yield i

    with ReadAhead(items(), depth=2) as ahead:
        first = next(ahead)
        time.sleep(0.2)  # the thread fills the queue, then waits
        assert first == 0 and len(taken) <= 1 + 2 + 1  # taken, queued, one in hand
        assert [first, *ahead] == list(range(10))
    with pytest.raises(StopIteration):
        next(ahead)


def test_read_ahead_raises_the_readers_error_in_order_and_stops_when_closed():
    def failing():
        yield 1
        yield 2
        raise CatalogError("cannot read chunk 3")

    ahead = ReadAhead(failing())
    assert next(ahead) == 1 and next(ahead) == 2
    with pytest.raises(CatalogError, match="chunk 3"):
        next(ahead)
    # a consumer that stops early does not leave the thread running
    endless = ReadAhead(iter(int, 1))
    next(endless)
    endless.close()
    assert not endless._thread.is_alive()
    with pytest.raises(ValueError, match="depth"):
        ReadAhead([], depth=0)


def test_write_behind_writes_in_order_one_behind_and_raises_the_writers_error():
    written, lock = [], threading.Lock()

    def slow_write(item):
        time.sleep(0.01)
        with lock:
            written.append(item)

    with WriteBehind(slow_write) as writer:
        for i in range(5):
            writer.write(i)
            assert len(written) >= i  # the previous write has finished
    assert written == list(range(5))

    def full_disk(item):
        if item == 2:
            raise CatalogError("cannot write out.parquet (No space left on device)")

    with pytest.raises(CatalogError, match="No space left"):
        with WriteBehind(full_disk) as writer:
            for i in range(4):
                writer.write(i)


def test_scoring_runs_on_one_cpu_thread_and_the_setting_comes_back():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with single_scoring_thread(torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="scoring failed"):
            with single_scoring_thread(torch.device("cpu")):
                raise RuntimeError("scoring failed")
        assert torch.get_num_threads() == 2
        with single_scoring_thread(torch.device("cuda")):  # a GPU scores: the CPU threads stay
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- same results, less work


def test_sample_merged_lazily_is_the_smallest_keys_in_key_order():
    rng = np.random.default_rng(3)
    n = 5000
    table = pd.DataFrame({"ra": rng.random(n), "dec": rng.random(n), "pmra": rng.random(n), "pmdec": rng.random(n)})
    predictions = pd.DataFrame({"label": np.where(rng.random(n) < 0.1, -1, 0), "member_prob": rng.random(n)})
    samples = {}
    for chunk in (n, 700, 97):
        sample = StarSample(size=300, seed=4)
        for start in range(0, n, chunk):
            sample.update(predictions.iloc[start : start + chunk], table.iloc[start : start + chunk])
        samples[chunk] = (sample.rows, sample.scale)
    # the reference: every scored row's key (one stream of draws), the 300 smallest
    scored = np.flatnonzero(predictions["label"].to_numpy() >= 0)
    keys = np.random.default_rng(4).random(len(scored))
    best = scored[np.argsort(keys)[:300]]
    for rows, scale in samples.values():
        np.testing.assert_array_equal(rows["ra"].to_numpy(), table["ra"].to_numpy()[best])
        np.testing.assert_array_equal(rows["member_prob"].to_numpy(), predictions["member_prob"].to_numpy()[best])
        assert scale == len(scored) / 300
    # below the size the sample is every scored row, in catalogue order
    small = StarSample(size=10_000, seed=4)
    for start in range(0, n, 700):
        small.update(predictions.iloc[start : start + 700], table.iloc[start : start + 700])
    np.testing.assert_array_equal(small.rows["ra"].to_numpy(), table["ra"].to_numpy()[scored])


def test_missing_feature_patterns_flagged_in_the_order_of_unique_rows():
    rng = np.random.default_rng(0)
    df = simulate_field("m4", n_stars=3000, seed=2)
    features = ["ra", "dec", "pmra", "pmdec", "parallax", "phot_g_mean_mag"]
    for column in ("pmra", "pmdec", "parallax", "phot_g_mean_mag"):
        df.loc[rng.random(len(df)) < 0.1, column] = np.nan
    prepared = prepare_stellar_data(df, features, outlier_removal=False, center=(245.9, -26.5))
    # the reference: one flag per distinct row of the missing-feature matrix, in np.unique's order
    values = df[["pmra", "pmdec", "parallax", "phot_g_mean_mag"]].to_numpy(float)
    missing = ~np.isfinite(values)
    patterns = np.unique(missing[missing.any(axis=1)], axis=0)
    names = np.array(["pmra", "pmdec", "parallax", "phot_g_mean_mag"])
    expected = ["missing:" + "+".join(names[p]) for p in patterns]
    assert [c for c in prepared.cuts if c.startswith("missing:")] == expected and len(expected) > 8
    for flag in expected:
        pattern = np.isin(names, flag.removeprefix("missing:").split("+"))
        np.testing.assert_array_equal(prepared.flags == flag, (missing == pattern).all(axis=1))
    # a chunk already read is prepared the same without the copy
    again = prepare_stellar_data(df, features, outlier_removal=False, center=(245.9, -26.5), already_read=True)
    np.testing.assert_array_equal(again.features, prepared.features)
    np.testing.assert_array_equal(again.flags, prepared.flags)
    assert again.cuts == prepared.cuts


def test_parquet_chunks_dictionary_encode_text_only(tmp_path):
    table = pd.DataFrame({"x": np.arange(1000) / 7.0, "label": np.arange(1000) % 3, "flag": ["", "missing:pmra"] * 500})
    path = tmp_path / "out.parquet"
    with CatalogChunkWriter(path) as writer:
        writer.write(table.iloc[:600])
        writer.write(table.iloc[600:].reset_index(drop=True))
    pd.testing.assert_frame_equal(pd.read_parquet(path), table)
    group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)}
    assert any("DICTIONARY" in e for e in encodings["flag"])
    assert not any("DICTIONARY" in e for e in encodings["x"] + encodings["label"])


def test_scoring_device_is_the_gpu_when_there_is_one_and_never_for_the_mixture(monkeypatch):
    class Network:
        pass

    class Mixture:
        def predict_proba_stars(self, stars):
            return stars

    assert scoring_device(Network(), "cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert scoring_device(Network()) == torch.device("cuda")
    assert scoring_device(Network(), "cuda:1") == torch.device("cuda:1")
    assert scoring_device(Mixture()) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert scoring_device(Network()) == torch.device("cpu")
    with pytest.raises(ConfigError, match="device='tpu'"):
        scoring_device(Network(), "tpu")


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DEC checkpoint trained by the real pipeline on a small simulated M4-like field."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose_config("train", TINY + ["data.simulate.seed=5"], out)
    return pipeline.train(cfg).checkpoint


@pytest.mark.slow
def test_streamed_table_is_exactly_the_in_memory_one_for_any_chunk(trained, tmp_path):
    # one chunk; chunks of 333 rows (the first ends inside the block without parallax); chunks of
    # one row (those of rows 3, 50 and 51 with no usable star)
    df = simulate_field("m4", n_stars=400, seed=12)
    df.loc[[3, 50, 51], "pmra"] = np.nan
    df.loc[300:350, "parallax"] = np.nan
    path = tmp_path / "cone.parquet"
    write_catalog(df, path)
    module = load_clustering_module(trained)
    expected, _ = predict_catalog(module, path)
    summaries = []
    for chunk in (10**6, 333, 1):
        output = tmp_path / f"out_{chunk}.parquet"
        summaries.append(predict_to_file(module, path, output, chunk_size=chunk))
        # One chunk runs the same forward passes as the in-memory table: bit for bit the same.
        # Smaller ones batch the network differently (float32 sums in another order).
        exact = {"check_exact": True} if chunk >= len(df) else {"rtol": 1e-4, "atol": 1e-6}
        pd.testing.assert_frame_equal(pd.read_parquet(output), expected, **exact)
    assert summaries[0]["n_members"] == summaries[1]["n_members"] == summaries[2]["n_members"]


@pytest.mark.slow
def test_a_read_error_mid_stream_is_raised_and_leaves_no_file(trained, tmp_path):
    df = simulate_field("m4", n_stars=3000, seed=13)
    path = tmp_path / "cone.csv"
    write_catalog(df, path)
    lines = path.read_text().splitlines()
    lines[2500] += ",1.0"  # a row with one field more than the header, far past the first chunk
    path.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.parquet"
    fields = len(df.columns)
    with pytest.raises(CatalogError, match=f"Expected {fields} fields in line 2501, saw {fields + 1}"):
        predict_to_file(load_clustering_module(trained), path, output, chunk_size=500)
    assert not output.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.gpu
def test_predict_command_scores_on_the_gpu_as_on_the_cpu(trained, tmp_path):
    df = simulate_field("m4", n_stars=5000, seed=14)
    path = tmp_path / "cone.parquet"
    write_catalog(df, path)
    tables = {}
    for device in ("cpu", "auto"):
        cfg = compose_config(
            "predict",
            [f"ckpt_path={trained}", f"data.path={path}", f"output={tmp_path}/{device}.parquet", f"device={device}"],
            tmp_path / device,
        )
        predict_command(cfg)
        tables[device] = pd.read_parquet(tmp_path / f"{device}.parquet")
    cpu, gpu = tables["cpu"], tables["auto"]
    assert (cpu["label"] == gpu["label"]).mean() > 0.999
    np.testing.assert_allclose(gpu["member_prob"], cpu["member_prob"], atol=1e-4)
