"""Checkpoints that lose nothing: atomic writes, exact mid-epoch resume, an early check of the
output directory.

Step checkpoints themselves are Lightning's ``ModelCheckpoint`` (``every_n_train_steps`` /
``train_time_interval``, ``save_last``), configured in ``configs/callbacks/``; the training
loaders are ``torchdata``'s ``StatefulDataLoader`` (or litdata's ``StreamingDataLoader``), whose
position Lightning's fit loop saves in the checkpoint and restores on ``ckpt_path=``. This module
adds the three things Lightning leaves out:

``AtomicCheckpointIO``
    Lightning's local save (``_atomic_save``: an fsspec transaction) writes the checkpoint to a
    temporary file in the *system* temp directory and then ``shutil.move``\\ s it over the target.
    That is a rename only when ``$TMPDIR`` and the checkpoint directory share a filesystem;
    otherwise (a tmpfs ``/tmp``, checkpoints on NFS or a mounted volume) it is a copy, and a kill
    during the copy leaves a truncated ``last.ckpt``. Nothing is fsync'ed either, and a kill
    before the move leaves a checkpoint-sized orphan in ``/tmp``. This plugin writes
    ``.<name>.tmp-<pid>-*`` in the checkpoint's own directory (:func:`vljepa.hub.atomic_write`), fsyncs it, ``os.replace``\\ s it over
    the target and fsyncs the directory (POSIX rename is atomic), so ``last.ckpt`` is at every
    instant either the previous or the next complete checkpoint. Remote URLs (``s3://`` ...)
    go to Lightning's own save, whose single-object PUT is atomic.

``ExactResume``
    Lightning restores weights, optimiser, schedulers and loop counters; it drops the saved
    loader position when ``configure_optimizers`` reads ``estimated_stepping_batches``, and it
    does not save the global random generators. This callback fixes both, so the steps after a
    resume see the batches, in the order, and draw the random numbers of the uninterrupted run.

``check_output_dir``
    A read-only, missing-permission or full output directory fails before the feature cache is
    filled or a step is trained, with the path in the message.
"""
from __future__ import annotations

import errno
import io
import os
import random
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..hub import atomic_write

# Adam-like optimisers keep two moments per trained parameter: weights + 2 moments, 4 bytes each
BYTES_PER_TRAINED_PARAM = 12


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`vljepa.hub.atomic_write` (durable: fsync, then
    ``os.replace``, atomic on POSIX, then fsync of the directory). The object is serialised
    first, so a failure in pickling writes nothing; on any failure the temporary file is
    removed and the old ``path`` is untouched."""
    buf = io.BytesIO()
    torch.save(obj, buf)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())

    atomic_write(path, write, durable=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with local writes made atomic and durable (temporary file
    in the target's directory, fsync, ``os.replace``); see the module docstring for why
    Lightning's own save is not. Pass as ``Trainer(plugins=[AtomicCheckpointIO()])``
    (``configs/trainer/cpu.yaml`` does).

    Raises ``OSError`` naming the path when the directory cannot be written (read-only, full)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path)  # object storage: atomic PUT
        path = str(path).removeprefix("file://")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as e:
            raise OSError(e.errno, f"could not write checkpoint {path}: {e.strerror or e}") from e


class ExactResume(L.Callback):
    """Makes a run resumed from a mid-epoch checkpoint continue exactly as the uninterrupted run.

    1. The data position. Lightning's fit loop saves the training loaders' ``state_dict`` (a
       ``StatefulDataLoader``'s shuffle generator and batches yielded) but applies it only if the
       loaders are first set up after the checkpoint's loop state is restored. A
       ``configure_optimizers`` that reads ``trainer.estimated_stepping_batches`` (vljepa's, and
       most schedules') sets the loaders up earlier, and the saved position is then silently
       dropped: the resumed epoch starts over from a fresh permutation. At ``on_train_start``
       (loop state restored, no batch drawn yet) this callback applies the pending loader states
       and re-creates the iterator, through the fit loop's own ``_load_combined_loader_states``.
    2. The global random generators (python ``random``, numpy, torch: dropout, random caption
       templates), which Lightning does not checkpoint: stored in every checkpoint (when it is
       written, i.e. after the step that triggered it) and restored after (1), before the first
       batch of the resumed run is drawn.
    """

    def __init__(self):
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # plain types and tensors only, so checkpoints load with torch.load(weights_only=True)
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"python": random.getstate(), "torch": torch.get_rng_state(),
                "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                          int(has_gauss), float(gauss)]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        loop = trainer.fit_loop
        if getattr(loop, "_combined_loader_states_to_load", None) and loop.restarting:
            loop._load_combined_loader_states()
            iter(loop._data_fetcher)  # a new iterator, starting at the restored position
        if self._pending is not None:
            state, self._pending = self._pending, None
            random.setstate(state["python"])
            kind, keys, pos, has_gauss, gauss = state["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            torch.set_rng_state(state["torch"])


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.<name>.tmp-<pid>-*``) that :func:`atomic_torch_save` left in
    ``directory`` when its process was killed mid-write (the pid is no longer alive on this
    machine). Returns the files removed."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp-*"):
        pid = tmp.name.rpartition(".tmp-")[2].partition("-")[0]  # .<name>.tmp-<pid>-<random>
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its writer is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, someone else's
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def check_output_dir(path: str | os.PathLike, need_bytes: int = 0) -> Path:
    """Fail fast, before any caching or training, if checkpoints cannot be written to ``path``.

    Creates ``path``, writes, fsyncs and removes a probe file in it, deletes temporary files
    of killed writers (:func:`remove_stale_temps`), and checks that the filesystem has
    ``need_bytes`` free (a checkpoint is written beside the previous one before replacing it,
    so pass about twice its size).

    Raises:
        OSError: (``EROFS``, ``EACCES``, ``ENOSPC``, ``ENOTDIR`` ...) with a message naming
            ``path`` and what is wrong.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise OSError(e.errno, f"output directory {path} is not writable "
                               f"({e.strerror or e}); checkpoints could not be saved there") from e
    remove_stale_temps(path)
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise OSError(errno.ENOSPC, f"output directory {path} has {free / 2**20:.1f} MiB free, "
                                    f"checkpoints need about {need_bytes / 2**20:.1f} MiB")
    return path
