"""Train a VL-JEPA: ``python train.py [experiment=NAME] [key=value ...]``.

``train(cfg)`` does the work and is what tests call; ``main`` only lets Hydra parse the command
line. The default config trains on easy-VQA over cached EfficientNet-Lite0 features on a CPU,
then reports VQA test accuracy and writes checkpoints under ``checkpoints/<run>/``.
"""
from __future__ import annotations

import time

_PROCESS_T0 = time.perf_counter()  # before the heavy imports: the breakdown counts them

import json
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vljepa import init_from
from vljepa.hub import atomic_write
from vljepa.profiling import peak_rss_mib
from vljepa.training.checkpointing import BYTES_PER_TRAINED_PARAM, check_output_dir
from vljepa.training.configs import register_configs
from vljepa.training.timing import PhaseTimer

register_configs()  # the library's named model configs, which configs/model/*.yaml start from


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test and export one run. Returns the test metrics (empty when ``cfg.test`` is off)."""
    start = time.perf_counter()
    phases = {"imports + config": start - _PROCESS_T0}
    L.seed_everything(cfg.seed, workers=True)
    model = instantiate(cfg.model, _convert_="all")
    if cfg.get("init_from"):
        init_from(model, cfg.init_from)
    module = instantiate(cfg.module, model=model)
    # a read-only or full output directory fails now, naming it, not after caching and training
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    check_output_dir(Path(cfg.paths.output_dir) / "checkpoints",
                     need_bytes=2 * BYTES_PER_TRAINED_PARAM * trained)
    data = instantiate(cfg.data, model=model)
    timer = PhaseTimer()
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()] + [timer]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    phases["build model + data"] = time.perf_counter() - start

    t = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - start
    fit_wall = time.perf_counter() - t
    features = data.cache.seconds if data.cache is not None else 0.0
    phases["X-encoder features"] = features
    phases["train epochs"] = sum(timer.epochs)
    phases["validation"] = timer.validation
    phases["rest of fit (setup, checkpoints)"] = (fit_wall - features - sum(timer.epochs)
                                                  - timer.validation)
    metrics: dict[str, float] = {}
    if cfg.get("test"):
        t = time.perf_counter()
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        results = trainer.test(module, datamodule=data, ckpt_path=best or None)
        metrics = {k: float(v) for k, v in results[0].items()}
        phases["test (best checkpoint)"] = time.perf_counter() - t
    if trainer.is_global_zero:
        if data.answer_vocabulary:  # a text-only run (the Y-decoder) keeps the model's own
            model.answers = list(data.answer_vocabulary)
        if cfg.get("export"):
            # the model card says what the model was trained on, how it scores, and how to redo it
            overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
            # where outputs and caches go does not change the model: left out of the recipe
            overrides = [o for o in overrides if not o.lstrip("+~").startswith("paths.")]
            source = cfg.data.get("source") or cfg.data.get("sources") or []
            model.card = {"datasets": [source] if isinstance(source, str) else list(source),
                          "metrics": metrics, "recipe": " ".join(["python train.py", *overrides])}
            if cfg.data.get("seed") is not None:  # which held-out split evaluations must use
                model.card["split_seed"] = int(cfg.data.seed)
            t = time.perf_counter()
            model.save_pretrained(Path(cfg.paths.output_dir) / "model", name=str(cfg.run_name))
            phases["export"] = time.perf_counter() - t
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        lines = [
            "== vljepa run summary ==",
            *(f"{k}: {v:.4f}" for k, v in metrics.items()),
            f"trainable parameters: {trainable:,}" + (
                f" (predictor {sum(p.numel() for p in model.predictor.parameters() if p.requires_grad):,})"
                if hasattr(model, "predictor") else ""),
            *([f"X-encoder features computed this run: {data.cache.computed} images "
               f"in {data.cache.seconds:.1f} s"] if data.cache is not None else []),
            f"wall time: {time.perf_counter() - start:.1f} s (fit incl. caching {fit_seconds:.1f} s)",
            f"peak RSS: {peak_rss_mib():.0f} MiB",
            f"outputs: {cfg.paths.output_dir}",
            "== time breakdown (wall s) ==",
            *(f"  {name:<34}{sec:7.1f}" + (
                "   " + " + ".join(f"{e:.1f}" for e in timer.epochs)
                if name == "train epochs" and len(timer.epochs) > 1 else "")
              for name, sec in phases.items()),
            f"  {'total since process start':<34}{time.perf_counter() - _PROCESS_T0:7.1f}",
        ]
        print("\n".join(lines), flush=True)
        # the same figures for scripts (eval/backbones.py): summary.json beside the checkpoints
        summary = {"metrics": metrics, "trainable_parameters": trainable,
                   "predictor_parameters": sum(p.numel() for p in model.predictor.parameters())
                   if hasattr(model, "predictor") else None,
                   "predictor_trainable_parameters": sum(
                       p.numel() for p in model.predictor.parameters() if p.requires_grad)
                   if hasattr(model, "predictor") else None,
                   "wall_seconds": round(time.perf_counter() - _PROCESS_T0, 1),
                   "peak_rss_mib": round(peak_rss_mib()), "phases": {
                       k: round(v, 1) for k, v in phases.items()}}
        atomic_write(Path(cfg.paths.output_dir) / "summary.json",
                     lambda p: Path(p).write_text(json.dumps(summary, indent=2)))
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    if cfg.get("print_config"):
        print(OmegaConf.to_yaml(cfg, resolve=True))
    train(cfg)


if __name__ == "__main__":
    sys.exit(main())
