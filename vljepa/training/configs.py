"""The library's named configs as Hydra config nodes, so ``configs/model/*.yaml`` start from
them and restate only what differs (a changed library default then reaches ``train.py``).

    configs/model/vljepa_lite.yaml:
        defaults:
          - /model_config@config: lite      # vljepa.config.NAMED_CONFIGS["lite"], every field
        _target_: vljepa.create_model

The nodes hold every field, so a command-line override of any field works without ``+``
(``model.config.predictor.kind=linear``). :func:`register_configs` must run before Hydra
composes: ``train.py`` calls it at import.
"""
from __future__ import annotations

from hydra.core.config_store import ConfigStore

from ..config import NAMED_CONFIGS, BaselineConfig, named_config


def register_configs() -> None:
    """Store ``model_config/<name>`` for every named model config and
    ``baseline_config/default`` for the token-generating baseline (idempotent)."""
    cs = ConfigStore.instance()
    for name in NAMED_CONFIGS:
        cs.store(group="model_config", name=name, node=named_config(name).to_dict())
    cs.store(group="baseline_config", name="default", node=BaselineConfig().to_dict())
