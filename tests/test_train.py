"""Training: the loss goes down, train.py runs end to end from Hydra configs, resumes, and a
second run reads X-encoder features from the cache instead of recomputing them."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import vljepa
from conftest import ROOT, TINY_PREDICTOR, compose, tiny_overrides
from vljepa.data.cache import FeatureCache


def test_a_tiny_training_run_lowers_the_loss(model):
    import lightning as L
    from vljepa.training.lightning_modules import LitVLJEPA

    torch.manual_seed(0)
    m = vljepa.create_model({"predictor": TINY_PREDICTOR})
    # 16 fixed examples with 4 distinct answers; the loss on them must fall.
    visual = torch.randn(16, 49, 320)
    ids, mask = m.tokenize_queries(["what color is the shape?"] * 16)
    answers = ["red", "blue", "green", "yellow"] * 4
    target_ids = torch.arange(16) % 4
    lit = LitVLJEPA(m, lr=3e-3)
    opt = torch.optim.AdamW(m.param_groups(3e-3, 0.0))

    def loss():
        return m.loss(m(visual, ids, mask), m.target_embed(answers), target_ids)

    m.train()
    first = loss().item()
    for _ in range(30):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * first
    assert isinstance(lit, L.LightningModule)


def test_train_py_end_to_end_then_resume(tmp_path, cache_dir):
    from train import train

    cfg = compose(tiny_overrides(tmp_path, cache_dir))
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert {"test/acc_color", "test/acc_shape", "test/acc_yes_no"} <= set(metrics)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    # the Lightning checkpoint and the exported model both load, and agree
    a, b = vljepa.load(last), vljepa.load(tmp_path / "model")
    assert b.card["split_seed"] == cfg.data.seed  # evaluations hold out what training held out
    visual = torch.randn(2, a.x_encoder.num_tokens, a.x_encoder.dim)  # the default's token grid
    ids, mask = a.tokenize_queries(["what shape?", "what color?"])
    assert torch.equal(a(visual, ids, mask), b(visual, ids, mask))
    # frozen encoders are not copied into the checkpoint
    state = torch.load(last, weights_only=True)["state_dict"]
    assert not any(k.startswith(("model.x_encoder.", "model.y_encoder.")) for k in state)
    # resume for one more epoch from last.ckpt
    cfg2 = compose(tiny_overrides(tmp_path / "resumed", cache_dir) +
                   [f"ckpt_path={last}", "trainer.max_epochs=2", "test=false"])
    train(cfg2)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    # the second epoch ran in full; last.ckpt is the final state, written after the last
    # validation (epoch 1) or, when no step checkpoint fell in the run, at train end (epoch 2)
    assert resumed["epoch"] in (1, 2) and resumed["global_step"] == 2 * state_step(last)


def state_step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def test_resume_with_a_different_model_config_is_a_clear_error(tmp_path, cache_dir):
    from train import train

    train(compose(tiny_overrides(tmp_path, cache_dir) + ["test=false", "export=false"]))
    bad = compose(tiny_overrides(tmp_path / "b", cache_dir) + [
        f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2",
        "model.config.predictor.width=48"])
    with pytest.raises(ValueError, match=r"predictor\.width: 48 != 32"):
        train(bad)


def test_warm_cache_skips_the_x_encoder(tmp_path, cache_dir, model):
    cfg = compose(tiny_overrides(tmp_path, cache_dir))
    dm = instantiate(cfg.data, model=model)
    dm.prepare_data()  # cold or warm, depending on test order: afterwards everything is cached
    warm = instantiate(cfg.data, model=model)
    warm.prepare_data()
    warm.setup("fit")
    assert warm.cache.computed == 0
    assert len(warm.train_set) + len(warm.val_set) == 300
    batch = warm.train_set.__getitems__([0, 1, 2])
    assert batch["visual"].shape == (3, 49, 320) and len(batch["answer"]) == 3


def test_cache_key_covers_encoder_preprocessing_and_content(tmp_path, easy_vqa_test_image):
    from vljepa.encoders import XEncoder
    from vljepa.config import XEncoderConfig
    from vljepa.inputs import image_key

    full = XEncoder(XEncoderConfig(crop_pct=1.0))
    cropped = XEncoder(XEncoderConfig(crop_pct=0.875))
    assert full.fingerprint != cropped.fingerprint  # preprocessing changes the key
    assert full.fingerprint != XEncoder(XEncoderConfig(weights=None)).fingerprint
    cache = FeatureCache(tmp_path, full.fingerprint)
    key = image_key(easy_vqa_test_image)
    assert cache.compute({key: easy_vqa_test_image}, full, full.transform, progress=False) == 1
    assert cache.compute({key: easy_vqa_test_image}, full, full.transform, progress=False) == 0
    cached = cache.load([key]).float()
    fresh = full(full.transform(vljepa.inputs.load_image(easy_vqa_test_image))[None])
    assert torch.allclose(cached, fresh, atol=1e-2, rtol=1e-2)  # stored as float16
    other = FeatureCache(tmp_path, cropped.fingerprint)
    assert other.missing([key]) == [key]
    with pytest.raises(KeyError, match="not in the feature cache"):
        cache.load(["0" * 64])


def test_ddp_two_processes_on_cpu(tmp_path, cache_dir):
    """A 2-process DDP run (gloo) of train.py completes and writes one checkpoint."""
    cmd = [sys.executable, str(ROOT / "train.py"), *tiny_overrides(tmp_path, cache_dir),
           "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.max_epochs=1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test/acc" in out.stdout
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["model"]["predictor"]["width"] == 32
