"""What step checkpoints cost: checkpoint write time against optimizer step time, at the
default recipe (``python train.py``: easy-VQA over cached EfficientNet-Lite0 features, the
lite predictor, batch 128).

    python eval/checkpoint_overhead.py                    # ~2 min with a warm feature cache
    python eval/checkpoint_overhead.py experiment=tiny    # any train.py overrides

Trains ``--steps`` optimizer steps without checkpoints, timing each step (from batch start to
batch end, the first 5 dropped), then writes the checkpoint of that state ``--saves`` times
through the same path ModelCheckpoint uses (``trainer.save_checkpoint``) with vljepa's
AtomicCheckpointIO and, for comparison, Lightning's default TorchCheckpointIO. Overhead per
step at interval N = median write time / (N x median step time).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vljepa.profiling import Stopwatch, median_ms
from vljepa.training.checkpointing import AtomicCheckpointIO

if __package__:  # python -m eval.checkpoint_overhead
    from .common import build, compose_train
else:  # python eval/checkpoint_overhead.py: Python searches the script's directory first
    from common import build, compose_train


class StepTimer(L.Callback):
    """Wall-clock seconds of each training batch, from batch start to batch end."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._watch = Stopwatch()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(self._watch.stop())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--saves", type=int, default=10)
    ap.add_argument("--intervals", type=int, nargs="*", default=[1, 10, 100])
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="vljepa-ckpt-overhead-"))
    cfg = compose_train([f"paths.output_dir={out}", "run_name=overhead", *args.overrides])
    L.seed_everything(cfg.seed)
    model, module, data = build(cfg)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=args.steps, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[timer], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()])
    trainer.fit(module, datamodule=data)
    step = statistics.median(timer.times[5:])
    results = {}
    for name, io in (("AtomicCheckpointIO (temp beside + fsync + rename)", AtomicCheckpointIO()),
                     ("Lightning TorchCheckpointIO (fsspec, /tmp + move)", TorchCheckpointIO())):
        trainer.strategy.checkpoint_io = io
        # every write counts, the first included (no warm-up)
        results[name] = median_ms(lambda: trainer.save_checkpoint(out / "last.ckpt"), args.saves,
                                  warmup=False)
    size = (out / "last.ckpt").stat().st_size
    print(f"recipe: {' '.join(args.overrides) or 'default (python train.py)'}; batch "
          f"{cfg.data.batch_size}; checkpoint {size / 2**20:.2f} MiB; "
          f"median optimizer step {step * 1000:.1f} ms over {len(timer.times) - 5} steps")
    print("| checkpoint writer | write (ms) | " + " | ".join(
        f"overhead every {n} steps" for n in args.intervals) + " |")
    print("|---|---|" + "---|" * len(args.intervals))
    for name, w_ms in results.items():
        print(f"| {name} | {w_ms:.1f} | " + " | ".join(
            f"{100 * (w_ms / 1000) / (n * step):.2f}%" for n in args.intervals) + " |")


if __name__ == "__main__":
    main()
