"""PhaseTimer (vljepa.training.timing): per-epoch wall seconds, also on a mid-epoch resume."""
from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from vljepa.training.timing import PhaseTimer


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.layer(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(40, 4))
        return torch.utils.data.DataLoader(data, batch_size=4)  # 10 steps per epoch


def _trainer(tmp_path, callbacks, **kw) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, callbacks=callbacks, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, **kw)


def test_an_epoch_resumed_mid_way_is_timed_from_the_start_of_training(tmp_path):
    # Lightning skips on_train_epoch_start for the epoch a mid-epoch checkpoint resumes; the timer
    # once counted that epoch from perf_counter's zero (hours: 61,823 s in a 65-minute run)
    save = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_last=True)
    _trainer(tmp_path, [save], max_steps=15).fit(_Tiny())  # stops mid-way through epoch 1
    timer = PhaseTimer()
    start = time.perf_counter()
    _trainer(tmp_path, [timer], max_epochs=3).fit(_Tiny(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    wall = time.perf_counter() - start
    assert len(timer.epochs) == 2  # the rest of epoch 1, then epoch 2
    assert all(0 <= e <= wall for e in timer.epochs), (timer.epochs, wall)
