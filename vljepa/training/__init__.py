"""Training: the only Lightning (and Hydra) code of vljepa. The library never imports it.

    features.py     datasets over the feature cache (what a batch holds)
    datamodules.py  LightningDataModules: one base that declares what every datamodule provides
    lightning_modules.py  LightningModules: LitVLJEPA, LitVLMBaseline, LitYDecoder; one schedule
    extract.py      X-encoder feature extraction at scale (Lightning predict)
    chunks.py       litdata chunks: conversion (python -m) and ChunkDataModule
    checkpointing.py  atomic checkpoint writes, exact mid-epoch resume
    configs.py      the library's configs (named models, predictor kinds), registered for Hydra

``python train.py`` composes ``configs/`` with Hydra and instantiates these.
"""
