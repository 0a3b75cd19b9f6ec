"""Every Hydra config composes, and everything in it instantiates."""
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import CONFIGS, compose

GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml"))
          for g in CONFIGS.iterdir() if g.is_dir()}


def _options():
    for group, names in sorted(GROUPS.items()):
        for name in names:
            yield group, name


@pytest.mark.parametrize("group,name", list(_options()))
def test_config_composes_and_instantiates(group, name, model, tmp_path, cache_dir):
    overrides = [f"{group}={name}", f"paths.output_dir={tmp_path}",
                 f"paths.cache_dir={cache_dir}", "run_name=test"]
    cfg = compose(overrides)
    assert cfg.model.config.get("embed_dim", 1) > 0  # the VLM baseline has no shared space
    if group == "trainer" and cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("no GPU on this machine: composed only")
    if group in ("model", "experiment"):
        built = instantiate(cfg.model, _convert_="all")  # builds both encoders
        assert built.config.to_dict().get("embed_dim") == cfg.model.config.get("embed_dim")
    else:
        built = model
    instantiate(cfg.module, model=built)
    instantiate(cfg.data, model=built)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate(cfg.logger))


def test_every_group_has_options():
    assert {"model", "data", "module", "trainer", "callbacks", "logger", "experiment"} <= set(GROUPS)
    assert {"cpu", "gpu", "ddp"} <= set(GROUPS["trainer"])
