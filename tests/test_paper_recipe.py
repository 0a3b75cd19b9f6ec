"""experiment=paper_stage1 with tiny random stand-ins of the paper's models (V-JEPA 2, Llama,
a sentence-transformers Y-encoder): trains a few steps on CPU, saves, reloads and answers."""
import pytest

import vljepa

from conftest import CONFIGS, compose


@pytest.mark.parametrize("stage", ["paper_stage1"])
def test_paper_recipe_runs_with_tiny_stand_ins(stage, tmp_path, cache_dir, tiny_vjepa2, tiny_llama,
                                               tiny_sentence_transformer):
    from train import train


    from vljepa.training.chunks import main as convert_main

    stand_ins = [f"experiment={stage}", f"paths.output_dir={tmp_path}",
                 f"paths.cache_dir={cache_dir}", "run_name=test",
                 f"model.config.x_encoder.name={tiny_vjepa2}", "model.config.x_encoder.frames=4",
                 f"model.config.predictor.llm={tiny_llama}", "model.config.predictor.llm_layers=2",
                 f"model.config.y_encoder.name={tiny_sentence_transformer}",
                 "model.config.embed_dim=48"]
    # the recipe trains from litdata chunks: convert its stand-in source (OpenMoji) first
    chunks = tmp_path / "chunks"
    assert convert_main(["--source-data", "openmoji", "--out", str(chunks),
                         "--config-dir", str(CONFIGS), *stand_ins, "data.image_size=32"]) == 0
    cfg = compose([*stand_ins, f"data.data_dir={chunks}",
                   "trainer=cpu", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true", "+trainer.max_steps=3",
                   "trainer.accumulate_grad_batches=2", "+trainer.limit_val_batches=1",
                   "+trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
                   "data.batch_size=16"])
    assert cfg.module.schedule == "constant" and cfg.model.config.loss.gather
    assert cfg.data._target_ == "vljepa.training.chunks.ChunkDataModule"
    train(cfg)
    model = vljepa.load(tmp_path / "model")
    assert model.config.predictor.kind == "llm" and model.config.embed_dim == 48
    assert model.config.y_encoder.trainable and model.config.y_encoder.lr_mult == 0.05
    from PIL import Image
    answers, scores = model.answer([Image.new("RGB", (40, 40), (250, 200, 0))],
                                   ["what is this?"], candidates=["grinning face", "red apple"])
    assert answers[0] in ("grinning face", "red apple") and scores.shape == (1,)
