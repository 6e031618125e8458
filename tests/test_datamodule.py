"""StellarCatalogDataModule: sources, split, scaling stored as plain state, device copies, errors."""

import pickle

import numpy as np
import pytest
import torch

from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.simulate import load_simulation_config, simulate_field
from grasp_dl.runtime.errors import CatalogError, ConfigError

SIM = load_simulation_config("m4") | {"n_stars": 3000}


def test_split_is_seeded_disjoint_and_complete():
    dm = StellarCatalogDataModule(simulate=SIM, val_fraction=0.2, seed=1)
    dm.setup()
    train, val = set(dm.train_index.tolist()), set(dm.val_index.tolist())
    assert not train & val and len(train | val) == len(dm.data)
    assert abs(len(val) - 0.2 * len(dm.data)) <= 1
    again = StellarCatalogDataModule(simulate=SIM, val_fraction=0.2, seed=1)
    again.setup()
    assert torch.equal(again.val_index, dm.val_index)
    other = StellarCatalogDataModule(simulate=SIM, val_fraction=0.2, seed=2)
    other.setup()
    assert not torch.equal(other.val_index, dm.val_index)


def test_sources_agree_and_state_is_plain(tmp_path):
    table = simulate_field("m4", n_stars=3000)
    path = tmp_path / "cone.parquet"
    table.to_parquet(path)
    modules = [
        StellarCatalogDataModule(simulate=SIM),
        StellarCatalogDataModule(catalog=table),
        StellarCatalogDataModule(path=str(path)),
    ]
    for dm in modules:
        dm.setup()
    for dm in modules[1:]:
        torch.testing.assert_close(dm.data, modules[0].data)
    state = modules[0].preprocessing_state()
    assert state["feature_names"] == ["xi", "eta", "pmra", "pmdec", "parallax"]
    assert pickle.loads(pickle.dumps(state)) == state
    assert all(type(v) in (int, float) for v in state["scaler"]["center"] + state["scaler"]["scale"])
    # standardised: robust centre 0, scale ~1 per feature
    med = modules[0].data.median(dim=0).values
    assert torch.allclose(med, torch.zeros(5), atol=0.05)
    # usable rows map back into the table
    rows = modules[0].usable_rows()
    assert len(rows) == len(modules[0].data) and np.isfinite(table.loc[rows, "pmra"]).all()


def test_batches_are_slices_of_one_tensor_copied_once():
    dm = StellarCatalogDataModule(simulate=SIM, batch_size=500)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.features is dm.split_tensor("train") is dm.train_dataloader().features
    block = next(iter(loader))
    # training batches come in blocks of up to 8 (this catalogue has fewer batches than that)
    assert dm.batches_per_step == 8 and len(block) == len(loader._bounds()) < 8
    x, idx = block[0]
    assert x.shape == (500, 5)
    torch.testing.assert_close(x, dm.split_tensor("train")[idx])
    assert sum(len(b) for b, _ in dm.predict_dataloader()) == len(dm.data)
    copy = pickle.loads(pickle.dumps(dm))
    assert copy._device_copies == {} and torch.equal(copy.data, dm.data)


def test_batches_already_on_the_device_are_handed_on_without_a_copy():
    dm = StellarCatalogDataModule(simulate=SIM, batch_size=500)
    dm.setup()
    block = next(iter(dm.train_dataloader()))
    assert dm.transfer_batch_to_device(block, torch.device("cpu"), 0) is block
    batch = block[0]
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert moved is batch
    moved_block = dm.transfer_batch_to_device(block, torch.device("meta"), 0)
    assert moved_block is not block and moved_block[0][0].device.type == "meta"
    # anything else still goes through Lightning's generic transfer
    other = {"x": batch[0]}
    assert torch.equal(dm.transfer_batch_to_device(other, torch.device("cpu"), 0)["x"], batch[0])
    meta = dm.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert meta is not batch and meta[0].device.type == "meta"


def test_bad_configuration_is_named():
    with pytest.raises(ConfigError, match="exactly one catalogue source"):
        StellarCatalogDataModule()
    with pytest.raises(ConfigError, match="exactly one catalogue source"):
        StellarCatalogDataModule(path="a.csv", simulate=SIM)
    with pytest.raises(ConfigError, match="val_fraction"):
        StellarCatalogDataModule(simulate=SIM, val_fraction=1.5)
    with pytest.raises(ConfigError, match="batches_per_step must be a positive integer"):
        StellarCatalogDataModule(simulate=SIM, batches_per_step=0)
    with pytest.raises(ConfigError, match="unknown quality cut"):
        StellarCatalogDataModule(simulate=SIM, quality={"ruwe": 1.4})
    with pytest.raises(CatalogError, match="nowhere.csv"):
        StellarCatalogDataModule(path="nowhere.csv").setup()
    with pytest.raises(RuntimeError, match="setup"):
        StellarCatalogDataModule(simulate=SIM).train_dataloader()


def test_quality_cuts_from_config_reach_preparation():
    dm = StellarCatalogDataModule(simulate=SIM, quality={"ruwe_max": 1.4, "mag_max": 19.0})
    dm.setup()
    cuts = dm.prepared.cuts
    assert cuts["ruwe>1.4"] > 0 and cuts["phot_g_mean_mag outside [None, 19.0]"] > 0
    assert dm.preprocessing_state()["ruwe_max"] == 1.4
