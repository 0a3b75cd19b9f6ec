"""Shared fixtures. Models are built once per session: building loads EfficientNet-Lite0 and
all-MiniLM-L6-v2 from the packages that ship them, a few seconds each."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# A narrow predictor keeps unit tests fast; the encoders are the real offline defaults.
TINY_PREDICTOR = {"width": 32, "depth": 1, "heads": 2, "max_query_len": 24, "visual_pool": 2}


@pytest.fixture(scope="session", autouse=True)
def _offline_and_quiet():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One feature cache for the whole session, so each image is encoded once."""
    return tmp_path_factory.mktemp("vljepa_cache")


@pytest.fixture(scope="session")
def model():
    import vljepa
    torch.manual_seed(0)
    return vljepa.create_model({"predictor": TINY_PREDICTOR}).eval()


@pytest.fixture(scope="session")
def easy_vqa_test_image() -> str:
    import easy_vqa
    return easy_vqa.get_test_image_paths()[0]


def compose(overrides: list[str]):
    """Compose configs/train.yaml as ``python train.py <overrides>`` would."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def tiny_overrides(tmp_path: Path, cache_dir: Path) -> list[str]:
    return ["experiment=tiny", f"paths.output_dir={tmp_path}", f"paths.cache_dir={cache_dir}",
            "run_name=test"]
