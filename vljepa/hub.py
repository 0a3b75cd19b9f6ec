"""Files on disk and on the Hugging Face Hub: names, atomic writes, reading a saved model.

A saved model is a directory in huggingface_hub's layout (``config.json`` + ``model.safetensors``,
as ``PyTorchModelHubMixin`` writes): ``config.json`` holds a ``format`` field that names the kind
of model (``"vljepa/1"``, ``"vljepa-vlm-baseline/1"``), its config, the fingerprints of the frozen
encoders it was trained with and its saved answers; ``model.safetensors`` holds the trained
tensors only. A Lightning ``.ckpt`` from ``train.py`` reads into the same pair (meta, tensors), so
one loader per format serves both (:func:`vljepa.factory.load` keeps the table).

This is the one module of persistence: the file layer (names, atomic writes, reading and writing
the pair, hub ids, the model card's text) and :class:`PretrainedMixin`, which gives a VL-JEPA its
``save_pretrained`` / ``from_saved`` / ``from_pretrained`` / ``push_to_hub`` and its card (as
huggingface_hub's ``ModelHubMixin`` does). It knows models only through that mixin, which needs
the config dataclasses and the ternary packing, never the network's own module.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .config import ModelConfig
from .kernels.bitlinear import check_packed_state, export_state_dict, to_packed
from .version import __version__

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"  # the model card, as the Hub renders it
CHECKPOINT_SUFFIX = ".ckpt"
# a serving bundle's own files, beside a saved model's (vljepa.serving)
SERVING_CONFIG_NAME = "serving.json"
SERVING_WEIGHTS_NAME = "serving.safetensors"


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any],
                 durable: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file in ``path``'s directory, then rename it to
    ``path``: a reader never sees a half-written file, and a failure leaves the old one intact.
    The one atomic write of vljepa: saved models, serving bundles, cache shards, checkpoints.

    The temporary file is ``.<name>.tmp-<pid>-<random>``, so a later run can tell a killed
    writer's leftovers (:func:`vljepa.training.checkpointing.remove_stale_temps`). The file gets
    the ordinary mode (0666 minus the umask), not mkstemp's 0600. ``durable=True`` also fsyncs
    the file before the rename and the directory after it, so the new file survives a power
    loss (checkpoints).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # mkstemp makes 0600 (and safetensors may recreate the file): saved files are ordinary
        os.chmod(tmp, 0o666 & ~umask)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def render_card(title: str, summary: str, facts: dict[str, str], card: dict[str, Any],
               usage: str) -> str:
    """A model card (README.md) as the Hugging Face Hub renders it: YAML metadata (library
    name, tags, datasets, metrics; huggingface_hub's ``ModelCardData``) and a body with
    ``facts`` (a table), ``card["metrics"]`` (a table of name -> value), ``usage`` (Python) and
    ``card["recipe"]`` (the command that trained it), then ``card["evaluations"]``.

    ``card``: what training knows, saved with the model: ``datasets`` (names), ``metrics``
    (name -> float), ``recipe`` (a command line), ``evaluations`` (title -> markdown: a later
    evaluation's table with the command that made it, e.g. eval/paraphrase.py ``--card``); every
    key optional.
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
    for title, body in (card.get("evaluations") or {}).items():
        lines += [f"## {title}", "", body.strip(), ""]
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


# ---- a VL-JEPA's persistence: config.json + model.safetensors + README.md ----

class PretrainedMixin:
    """``save_pretrained``, ``from_saved``, ``from_pretrained``, ``push_to_hub`` and the model
    card of :class:`vljepa.model.VLJEPA` (which provides ``config``, ``predictor``,
    ``x_encoder``, ``y_encoder``, ``y_decoder``, ``answers``, ``card``, ``trained_state_dict``
    and ``load_trained``)."""

    FORMAT = "vljepa/1"  # config.json's "format": which loader reads a saved model

    def save_pretrained(self, directory: str | os.PathLike, *, name: str | None = None) -> Path:
        """Write ``config.json`` (the config, the encoders' fingerprints, the saved answers) and
        ``model.safetensors`` (:meth:`trained_state_dict`) to ``directory``, atomically.

        A ternary model (``predictor.quant="ternary"``) is written packed: 2 bits per BitLinear
        weight plus a scale, its other predictor tensors in float16 (see
        :func:`vljepa.kernels.bitlinear.export_state_dict`). The model itself is left as it is.
        ``name`` titles the model card (a hub repo id when pushed; default: the directory's
        name). Returns the directory.
        """
        y_fingerprint = None if self.config.y_encoder.trainable else self.y_encoder.fingerprint
        meta = {"model": self.config.to_dict(), "x_encoder_fingerprint": self.x_encoder.fingerprint,
                "y_encoder_fingerprint": y_fingerprint,
                "predictor_fingerprint": self.predictor.fingerprint,
                "predictor_weights": self.predictor.describe(), "answers": self.answers,
                "card": self.card, "format": self.FORMAT, "vljepa_version": __version__}
        state = self.trained_state_dict()
        if self.config.predictor.quant == "ternary":
            state = export_state_dict(self, state)
        card = self.model_card(name or Path(directory).resolve().name, state)
        return write_pretrained(directory, meta, state, card)

    def model_card(self, name: str, state: dict[str, torch.Tensor]) -> str:
        """The README.md written beside the weights (see :func:`render_card`)."""
        c = self.config
        trained = sum(v.numel() for v in state.values())
        facts = {
            "X-encoder (frozen, not stored)": f"{c.x_encoder.backend} `{c.x_encoder.name}`, "
                                              f"weights `{c.x_encoder.weights}`",
            "Y-encoder": f"{c.y_encoder.backend} `{c.y_encoder.name}` "
                         f"({'trained' if c.y_encoder.trainable else 'frozen, not stored'})",
            "Predictor": self.predictor.describe(),
            "Shared space": f"D = {c.embed_dim}",
            "Trained tensors": f"{trained:,} values in model.safetensors",
            "Answer vocabulary": f"{len(self.answers)} answers" if self.answers else "none",
            "Y-decoder": "yes" if self.y_decoder is not None else "no",
        }
        summary = ("A VL-JEPA (arXiv 2512.10942): it predicts the *embedding* of the answer "
                   "from an image and a question, and answers, classifies and retrieves by the "
                   f"nearest candidate text. Saved by vljepa {__version__}.")
        usage = (f"import vljepa\nmodel = vljepa.load({name!r})   # a directory or hub repo id"
                 "\nanswers, scores = model.answer(images, questions)")
        return render_card(name.rsplit("/", 1)[-1], summary, facts, self.card, usage)

    def push_to_hub(self, repo_id: str, **kw: Any) -> str:
        """Upload this model (``save_pretrained``'s files) to a Hugging Face Hub repo; load it
        back with ``vljepa.load(repo_id)``. Keyword arguments as
        :func:`push_to_hub` (private, token, revision, commit_message, create_pr)."""
        return push_to_hub(self, repo_id, **kw)

    @classmethod
    def from_saved(cls, meta: dict[str, Any], state: dict[str, torch.Tensor], source: str,
                   map_location: str = "cpu") -> PretrainedMixin:
        """Rebuild a model from what :mod:`vljepa.hub` read (config.json or a ``.ckpt``'s
        hyper-parameters, and the trained tensors); in eval mode.

        Ternary weights that arrive packed stay packed (2 bits per weight, each layer unpacked
        on the fly: it serves but cannot train); latent ones (a ``.ckpt``) stay trainable.

        Raises:
            ValueError: ``meta`` has no model config; the tensors do not fit it; or the X- or
                Y-encoder built here is not the one the checkpoint names (says which).
        """
        if "model" not in meta:
            raise ValueError(f"{source} is not a vljepa config (no 'model' key)")
        model = cls(ModelConfig.from_dict(meta["model"]))
        found = model.x_encoder.fingerprint
        if meta.get("x_encoder_fingerprint") not in (None, found):
            raise ValueError(
                f"the X-encoder built here ({model.config.x_encoder.name}, fingerprint {found}) is "
                f"not the one {source} was trained with (fingerprint "
                f"{meta['x_encoder_fingerprint']}): its weights, version or preprocessing differ")
        if meta.get("y_encoder_fingerprint") is not None:
            found = model.y_encoder.fingerprint
            if found != meta["y_encoder_fingerprint"]:
                raise ValueError(
                    f"the Y-encoder built here ({model.config.y_encoder.name}, fingerprint "
                    f"{found}) is not the one {source} was trained with (fingerprint "
                    f"{meta['y_encoder_fingerprint']}): its weights or version differ")
        if meta.get("predictor_fingerprint") not in (None, model.predictor.fingerprint):
            trained_on = meta.get("predictor_weights", "its predictor")
            raise ValueError(
                f"the pretrained weights of the predictor built here "
                f"({model.predictor.describe()}, fingerprint {model.predictor.fingerprint}) are "
                f"not the ones {source} was trained with ({trained_on}, fingerprint "
                f"{meta['predictor_fingerprint']}): their weights or version differ")
        if any(k.endswith(".weight_packed") for k in state):
            to_packed(model.predictor)  # drop the fp32 latent weights before the packed arrive
            check_packed_state(model, state, source)
        model.load_trained(state, source)
        model.answers = meta.get("answers")
        model.card = dict(meta.get("card") or {})
        return model.to(map_location).eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, map_location: str = "cpu"
                        ) -> PretrainedMixin:
        """A saved VL-JEPA (directory, ``.ckpt`` or hub repo id), as :func:`vljepa.load`; raises
        ValueError if the file holds another kind of model (use :func:`vljepa.load`)."""
        meta, state, source = read_any(name_or_path, map_location)
        if meta.get("format", cls.FORMAT) != cls.FORMAT:
            raise ValueError(f"{source} holds a {meta['format']!r} model, not a VL-JEPA; "
                             "load it with vljepa.load")
        return cls.from_saved(meta, state, source, map_location)
