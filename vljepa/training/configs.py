"""The library's configs as Hydra config nodes, so ``configs/`` starts from them and restates
only what differs (a changed library default then reaches ``train.py``):

    model_config/<name>      vljepa.config.NAMED_CONFIGS[name], every field but the predictor
    predictor_config/<kind>  each predictor kind's config dataclass, every field at its default
    predictor_config/<name>  the predictor of a named config ("lite", "paper")
    baseline_config/default  the token-generating baseline's config

The predictor is a config group of its own (``configs/predictor/``), one option per kind, so
choosing a kind (``python train.py predictor=linear``) brings that kind's fields and no other;
then any field is overridden as usual (``model.config.predictor.width=64``). Setting
``model.config.predictor.kind`` alone keeps the old kind's fields, which the new kind rejects
with an error naming them. :func:`register_configs` must run before Hydra composes:
``train.py`` calls it at import.
"""
from __future__ import annotations

import dataclasses

from hydra.core.config_store import ConfigStore

from ..config import NAMED_CONFIGS, PREDICTOR_CONFIGS, BaselineConfig, named_config


def register_configs() -> None:
    """Store the nodes listed in the module docstring (idempotent)."""
    cs = ConfigStore.instance()
    for name in NAMED_CONFIGS:
        node = named_config(name).to_dict()
        cs.store(group="predictor_config", name=name, node=node.pop("predictor"))
        cs.store(group="model_config", name=name, node=node)
    for kind, cls in PREDICTOR_CONFIGS.items():
        cs.store(group="predictor_config", name=kind, node=dataclasses.asdict(cls()))
    cs.store(group="baseline_config", name="default", node=BaselineConfig().to_dict())
