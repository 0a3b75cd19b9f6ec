"""Where a run's wall time goes: a Lightning callback that times the phases of ``fit`` / ``test``.

``train.py`` adds the phases outside Lightning (imports and config, building the model and
data, the export) and prints the table after its run summary, e.g.::

    == time breakdown (wall s) ==
      imports + config            4.1
      build model + data          6.7
      X-encoder features         21.8   5,000 images
      train epochs               84.5   31.0 + 27.0 + 26.5
      ...

Lightning's own ``Timer`` callback gives train / validate / test totals; this one gives each
epoch without its validation, so ``train.py`` can show what the rest of ``fit`` (feature
caching in ``prepare_data``, setup, the sanity check, checkpoint writes) costs.
"""
from __future__ import annotations

import time

import lightning as L


class PhaseTimer(L.Callback):
    """Times each train epoch (validation excluded) and the validation passes, in wall seconds
    (``time.perf_counter``), so ``train.py`` can split ``fit`` into feature caching and setup,
    epochs and validation.

    A run resumed from a mid-epoch checkpoint (``ckpt_path=``) gets no ``on_train_epoch_start``
    for the epoch it resumes (Lightning's fit loop skips it), so that epoch is timed from the start
    of training: its entry is the resumed part of the epoch, not the whole.

    Attributes:
        epochs: each train epoch's seconds, without the validation run inside it.
        validation: seconds of all validation passes (the sanity check included).
    """

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.validation = 0.0
        self._epoch_start = self._val_start = self._val_in_epoch = 0.0

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: D102
        # the only start a mid-epoch resume gets: without it that epoch counted from perf_counter 0
        self._epoch_start, self._val_in_epoch = time.perf_counter(), 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: D102
        self._epoch_start, self._val_in_epoch = time.perf_counter(), 0.0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:  # noqa: D102
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102
        seconds = time.perf_counter() - self._val_start
        self.validation += seconds
        self._val_in_epoch += seconds  # reset at each epoch's start; the sanity check is before

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102
        self.epochs.append(time.perf_counter() - self._epoch_start - self._val_in_epoch)
