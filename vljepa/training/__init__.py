"""Training: the only Lightning (and Hydra) code of vljepa. The library never imports it.

    features.py     datasets over the feature cache (what a batch holds)
    datamodules.py  LightningDataModules: one base that declares what every datamodule provides
    modules.py      LightningModules: LitVLJEPA, LitVLMBaseline, LitYDecoder; one schedule
    extract.py      X-encoder feature extraction at scale (Lightning predict)
    configs.py      the library's named model configs, registered for Hydra

``python train.py`` composes ``configs/`` with Hydra and instantiates these.
"""
