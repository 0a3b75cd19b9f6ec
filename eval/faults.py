"""Fault injection for eval/fault_injection.py and the kill tests (tests/test_faults.py):
callbacks that a ``train.py`` subprocess instantiates through Hydra
(``+callbacks.kill._target_=eval.faults.KillAt``; :func:`env` puts the repo root on its
PYTHONPATH), and helpers that run, kill and resume ``train.py``.

A kill is ``SIGKILL`` of the training process itself: no handler, no cleanup, as a node that
loses power."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]


class KillAt(L.Callback):
    """SIGKILL this process at optimizer step ``step``.

    where="step": right after the step (before any checkpoint of that step is written).
    where="checkpoint": ``delay`` seconds after Lightning starts writing that step's checkpoint
    (a timer thread fires while the main thread serialises and writes the file).
    """

    def __init__(self, step: int, where: str = "step", delay: float = 0.0, group: bool = False):
        if where not in ("step", "checkpoint"):
            raise ValueError(f"where must be 'step' or 'checkpoint', got {where!r}")
        self.step, self.where, self.delay, self.group = step, where, delay, group

    def _kill(self):
        if self.group:  # every rank of a DDP job (started in its own session): a node failure
            os.killpg(os.getpgid(0), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.where == "step" and trainer.global_step == self.step and trainer.is_global_zero:
            self._kill()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self.where == "checkpoint" and trainer.global_step == self.step:
            threading.Timer(self.delay, self._kill).start()


class RecordSteps(L.Callback):
    """Appends one JSON line per optimizer step to ``path``: the step, the batch's answer ids
    (the data order) and the training loss, flushed at once (a kill loses nothing written)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        row = {"step": trainer.global_step, "rank": trainer.global_rank, "t": time.time(),
               "ids": batch["answer_ids"].tolist(), "loss": float(loss)}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


def read_steps(path, rank: int = 0) -> dict[int, dict]:
    """RecordSteps' file -> {step: row} of one rank; a resumed run's rows overwrite the killed
    run's."""
    rows = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("rank", 0) == rank:
                    rows[row["step"]] = row
    return rows


def env() -> dict[str, str]:
    """The environment of a train.py subprocess: this checkout importable (the package and the
    ``eval.faults`` callbacks Hydra instantiates), one thread (so every run computes in the same
    order), offline."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return e


def train_cmd(overrides: list[str]) -> list[str]:
    """The command that runs this checkout's ``train.py`` with Hydra ``overrides``."""
    return [sys.executable, str(ROOT / "train.py"), *overrides]


def run_train(overrides: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """Run train.py to completion (or to its kill) in its own session (so KillAt(group=True)
    takes its DDP ranks with it, nothing else); returncode -9 means killed."""
    return subprocess.run(train_cmd(overrides), cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=timeout, start_new_session=True)


class KillDuringExport(L.Callback):
    """SIGKILL this process ``delay`` seconds after ``save_pretrained`` starts writing the
    exported model (train.py exports after testing): ``vljepa.hub.atomic_write`` is wrapped so
    its first call starts the timer."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def on_test_end(self, trainer, pl_module):
        import vljepa.hub as hub

        real = hub.atomic_write

        def atomic_write(*args, **kwargs):
            if hub.atomic_write is atomic_write:
                hub.atomic_write = real
                threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
            return real(*args, **kwargs)
        hub.atomic_write = atomic_write
