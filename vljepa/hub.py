"""Files on disk and on the Hugging Face Hub: names, atomic writes, reading a saved model.

A saved model is a directory in huggingface_hub's layout (``config.json`` + ``model.safetensors``,
as ``PyTorchModelHubMixin`` writes): ``config.json`` holds a ``format`` field that names the kind
of model (``"vljepa/1"``, ``"vljepa-vlm-baseline/1"``), its config, the fingerprints of the frozen
encoders it was trained with and its saved answers; ``model.safetensors`` holds the trained
tensors only. A Lightning ``.ckpt`` from ``train.py`` reads into the same pair (meta, tensors), so
one loader per format serves both (:func:`vljepa.factory.load` keeps the table).

This module knows files, not models: it imports nothing else of vljepa.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"  # the model card, as the Hub renders it
CHECKPOINT_SUFFIX = ".ckpt"
# a serving bundle's own files, beside a saved model's (vljepa.serving)
SERVING_CONFIG_NAME = "serving.json"
SERVING_WEIGHTS_NAME = "serving.safetensors"


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file in ``path``'s directory, then rename it to
    ``path``: a reader never sees a half-written file, and a failure leaves the old one intact.

    The file gets the ordinary mode (0666 minus the umask), not mkstemp's 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # mkstemp makes 0600 (and safetensors may recreate the file): saved files are ordinary
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def hub_error(what: str, name: str, err: Exception) -> RuntimeError:
    """The error for a model that could not be loaded by name (hub id or local path)."""
    return RuntimeError(
        f"could not load {what} {name!r}: {err}. With no network (or HF_HUB_OFFLINE=1) a hub name "
        "works only if it is already in the local cache; pass a local path instead.")


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local directory or ``.ckpt`` as is; otherwise a hub repo id (``owner/name``, optional
    ``@revision``) downloaded with ``huggingface_hub.snapshot_download`` (cache only when
    ``HF_HUB_OFFLINE=1``).

    Raises:
        FileNotFoundError: not a local path, and the hub could not provide it (says why).
    """
    path = Path(name_or_path)
    text = str(name_or_path)
    repo_part = text.partition("@")[0]  # a revision may hold "/" (refs/pr/1)
    if path.exists() or path.suffix == CHECKPOINT_SUFFIX or repo_part.count("/") != 1 \
            or text.startswith((".", "/")):
        return path
    from huggingface_hub import snapshot_download

    repo_id, _, revision = text.partition("@")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None,
                                      allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME,
                                                      SERVING_CONFIG_NAME,
                                                      SERVING_WEIGHTS_NAME]))
    except Exception as e:  # offline, unknown repo, no network: all mean "not available here"
        raise FileNotFoundError(
            f"no local model directory {text!r}, and it could not be fetched as a hub repo id "
            f"({type(e).__name__}: {e}). With HF_HUB_OFFLINE=1 only the local HF cache is read."
        ) from e


def write_pretrained(directory: str | os.PathLike, meta: dict[str, Any],
                     state: dict[str, torch.Tensor], card: str | None = None) -> Path:
    """Write ``model.safetensors`` (``state``), ``config.json`` (``meta``, which must carry a
    ``format``) and, if given, the model card ``README.md`` to ``directory`` (created if
    needed), each atomically; temporary files left in it by a writer that was killed are removed
    first (so two processes must not save to one directory at once). Returns the directory."""
    from safetensors.torch import save_file

    if "format" not in meta:
        raise ValueError("a saved model's config needs a 'format' field")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME):  # temp files of a writer killed mid-save
        for stale in d.glob(f".{name}.*"):
            stale.unlink(missing_ok=True)
    atomic_write(d / WEIGHTS_NAME, lambda p: save_file(state, p))
    atomic_write(d / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    if card is not None:
        atomic_write(d / CARD_NAME, lambda p: Path(p).write_text(card))
    return d


def model_card(title: str, summary: str, facts: dict[str, str], card: dict[str, Any],
               usage: str) -> str:
    """A model card (README.md) as the Hugging Face Hub renders it: YAML metadata (library
    name, tags, datasets, metrics; huggingface_hub's ``ModelCardData``) and a body with
    ``facts`` (a table), ``card["metrics"]`` (a table of name -> value), ``usage`` (Python) and
    ``card["recipe"]`` (the command that trained it).

    ``card``: what training knows, saved with the model: ``datasets`` (names), ``metrics``
    (name -> float), ``recipe`` (a command line); every key optional.
    """
    from huggingface_hub import ModelCardData

    metrics = dict(card.get("metrics") or {})
    data = ModelCardData(library_name="vljepa", tags=["vl-jepa", "jepa", "vision-language",
                                                      "embeddings", "zero-shot"],
                         datasets=list(card.get("datasets") or []) or None,
                         metrics=["accuracy"] if metrics else None)
    lines = ["---", data.to_yaml(), "---", "", f"# {title}", "", summary, "",
             "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in facts.items()), ""]
    if metrics:
        lines += ["## Results", "", "| metric | value |", "|---|---|",
                  *(f"| {k} | {v:.4f} |" for k, v in metrics.items()), ""]
    lines += ["## Use", "", "```python", usage.strip(), "```", ""]
    if card.get("recipe"):
        lines += ["## Training recipe", "", "```bash", card["recipe"], "```", ""]
    return "\n".join(lines)


def push_to_hub(model, repo_id: str, *, private: bool | None = None, token: str | None = None,
                revision: str | None = None, commit_message: str = "Upload model",
                create_pr: bool = False) -> str:
    """Save ``model`` (its ``save_pretrained``: config, weights, card) and upload it to the Hub
    repo ``repo_id`` (created if needed), as huggingface_hub's ``ModelHubMixin.push_to_hub``
    does. The endpoint is huggingface_hub's (``HF_ENDPOINT``). Returns the commit URL.

    Raises huggingface_hub's errors (no token, no network, ...) unchanged.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, name=repo.repo_id)  # the card names the repo, not tmp
        info = api.upload_folder(repo_id=repo.repo_id, folder_path=tmp, revision=revision,
                                 commit_message=commit_message, create_pr=create_pr)
    return str(getattr(info, "commit_url", info))


def read_pretrained(path: Path, map_location: str = "cpu"
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A ``save_pretrained`` directory -> (its config.json, its tensors).

    Raises:
        FileNotFoundError: no such directory, or a file missing from it (names which).
    """
    from safetensors.torch import load_file

    if not path.is_dir():
        raise FileNotFoundError(f"no model directory at {str(path)!r}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{name} is missing from {str(path)!r}")
    meta = json.loads((path / CONFIG_NAME).read_text())
    return meta, load_file(str(path / WEIGHTS_NAME), device=map_location)


def read_checkpoint(path: Path, map_location: str = "cpu", default_format: str = "vljepa/1"
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A Lightning ``.ckpt`` written by ``train.py`` -> (meta, the model's tensors), the same
    pair :func:`read_pretrained` gives (no encoder fingerprints: a checkpoint does not carry
    them). Read with ``weights_only=True``: the hyper-parameters are plain data.

    Raises:
        FileNotFoundError: no such file. ValueError: not a vljepa training checkpoint.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    try:
        config = ckpt["hyper_parameters"]["model_config"]
    except KeyError:
        raise ValueError(f"{str(path)!r} is not a vljepa training checkpoint "
                         "(no hyper_parameters.model_config)") from None
    meta = {"format": ckpt.get("vljepa_format", default_format), "model": config,
            "answers": ckpt.get("vljepa_answers")}
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return meta, state


def read_meta(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Only the config of a saved model (directory, ``.ckpt`` or hub repo id), no tensors:
    ``config.json``, or a checkpoint's meta as :func:`read_checkpoint` makes it.
    Raises FileNotFoundError naming what is missing."""
    path = resolve(name_or_path)
    if path.suffix == CHECKPOINT_SUFFIX:
        return read_checkpoint(path)[0]
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{CONFIG_NAME} is missing from {str(path)!r}")
    return json.loads((path / CONFIG_NAME).read_text())


def read_any(name_or_path: str | os.PathLike, map_location: str = "cpu"
             ) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """A directory, ``.ckpt`` or hub repo id -> (meta, tensors, source), ``source`` naming the
    file in errors. Raises as :func:`resolve`, :func:`read_pretrained`, :func:`read_checkpoint`."""
    path = resolve(name_or_path)
    if path.suffix == CHECKPOINT_SUFFIX:
        return (*read_checkpoint(path, map_location), repr(str(path)))
    meta, state = read_pretrained(path, map_location)
    return meta, state, repr(str(path / WEIGHTS_NAME))
