"""What the benchmarks that train share: the training config composed from this checkout's
``configs/`` as ``python train.py`` composes it, and the model, LightningModule and datamodule
built from it as ``train.py`` builds them.

A script run as ``python eval/NAME.py`` finds this module as ``common`` (Python searches the
script's own directory first); one loaded as ``eval.NAME`` (``python -m eval.NAME``, pytest) as
``eval.common``.
"""
from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def compose_train(overrides: list[str]):
    """``configs/train.yaml`` with Hydra ``overrides`` (``key=value``, ``experiment=NAME``), as
    ``python train.py <overrides>`` composes it. Returns the config (an omegaconf DictConfig).

    Raises hydra's ``ConfigCompositionException`` / ``MissingConfigException`` for an override
    that names no config or key."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vljepa.training.configs import register_configs

    register_configs()  # the named model configs configs/model/*.yaml start from (train.py's)
    GlobalHydra.instance().clear()  # a Hydra app initialised earlier in this process
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=overrides)


def build(cfg) -> tuple:
    """``(model, module, datamodule)`` from a composed config: ``cfg.model``, then ``cfg.module``
    and ``cfg.data`` on that model, as ``train.py`` instantiates them (seed first: the caller's
    ``L.seed_everything``)."""
    from hydra.utils import instantiate

    model = instantiate(cfg.model, _convert_="all")
    return model, instantiate(cfg.module, model=model), instantiate(cfg.data, model=model)
