"""VLJEPA: the whole model, from images and questions to the shared embedding space.

    image ──X-encoder (frozen)──► visual tokens (B, N, Dx) ─┐
    question ──tokenizer──► query tokens (B, L) ────────────┴─► predictor ─► Ŝ_Y (B, D)
    target text ──Y-encoder──► (B, Dy) ──y_head──► S_Y (B, D)

Answering is discriminative (paper §3, inference): embed the candidate answers with the
Y-encoder and pick the one whose S_Y is nearest (cosine) to Ŝ_Y. No tokens are generated.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import hub
from .config import ModelConfig, YDecoderConfig
from .inputs import as_image_list, check_texts, load_image
from .losses import gather_ids, gather_with_grad, get_loss, init_logit_scale
from .modules.bitlinear import check_packed_state, export_state_dict, to_packed
from .modules.encoders import XEncoder, YEncoder
from .modules.predictor import build_predictor
from .modules.queries import add_query_noise
from .modules.y_decoder import YDecoder
from .version import __version__


def weight_decay_groups(module: nn.Module, lr: float, weight_decay: float,
                        skip: tuple[str, ...] = ("x_encoder.", "y_encoder."),
                        lr_mults: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``module``'s trainable parameters outside ``skip``: weights at
    ``weight_decay``; norms, biases and positional embeddings (1-D tensors, names ending in
    "pos") without decay, as in GPT-2 / timm. ``lr_mults`` (name prefix -> multiplier) puts
    matching parameters at ``lr * multiplier`` (pretrained layers that should move slowly)."""
    groups: dict[tuple[float, bool], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad or name.startswith(skip):
            continue
        mult = next((m for prefix, m in (lr_mults or {}).items() if name.startswith(prefix)), 1.0)
        no_decay = p.ndim < 2 or name.endswith("pos")
        groups.setdefault((mult, no_decay), []).append(p)
    groups.setdefault((1.0, False), [])
    groups.setdefault((1.0, True), [])
    return [{"params": ps, "lr": lr * mult, "weight_decay": 0.0 if no_decay else weight_decay}
            for (mult, no_decay), ps in sorted(groups.items())]


class VLJEPA(nn.Module):
    """A VL-JEPA model (arXiv 2512.10942 §3).

    Build it with :func:`vljepa.create_model` or load it with :func:`vljepa.load`.
    All public embeddings are L2-normalised float32 of width D = ``config.embed_dim``.
    """

    FORMAT = "vljepa/1"  # config.json's "format": which loader reads a saved model

    def __init__(self, config: ModelConfig | dict):
        super().__init__()
        self.config = config = ModelConfig.from_dict(config)
        self.x_encoder = XEncoder(config.x_encoder)
        self.y_encoder = YEncoder(config.y_encoder)
        self.predictor = build_predictor(config.predictor, self.x_encoder, self.y_encoder,
                                         config.embed_dim)
        self.y_head = nn.Linear(self.y_encoder.dim, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(init_logit_scale(config.loss.temperature)),
                                        requires_grad=config.loss.learn_temperature)
        self.loss_fn = get_loss(config.loss.kind)
        # answer()'s default candidates: the training answer vocabulary, saved with the model
        self.answers: list[str] | None = None
        # what training knows for the model card: datasets, metrics, recipe (hub.model_card)
        self.card: dict[str, Any] = {}
        self.y_decoder: YDecoder | None = None
        if config.y_decoder is not None:
            self.y_decoder = YDecoder(config.y_decoder, self.y_encoder, config.embed_dim)

    def add_y_decoder(self, config: YDecoderConfig | dict | None = None) -> YDecoder:
        """Give the model a (new, untrained) Y-decoder; its config is saved with the model.
        Raises RuntimeError if it already has one."""
        if self.y_decoder is not None:
            raise RuntimeError("this model already has a Y-decoder")
        cfg = YDecoderConfig(**dict(config or {})) if not isinstance(config, YDecoderConfig) \
            else config
        self.config.y_decoder = cfg
        self.y_decoder = YDecoder(cfg, self.y_encoder, self.config.embed_dim).to(self.device)
        return self.y_decoder

    @torch.no_grad()
    def decode(self, embeddings: torch.Tensor, max_new_tokens: int = 24,
               num_beams: int = 1) -> list[str]:
        """Shared-space embeddings (B, D) -> B strings with the Y-decoder (paper §3): e.g.
        ``model.decode(model.predict(images, questions))`` or ``model.decode(model.embed_text(t))``.

        Greedy with ``num_beams=1``, else beam search; at most ``max_new_tokens`` tokens.
        Raises RuntimeError when the model has no Y-decoder (train one with
        ``python train.py experiment=y_decoder model.name_or_path=...``), ValueError for a wrong shape,
        an empty batch, or NaN / inf embeddings.
        """
        if self.y_decoder is None:
            raise RuntimeError("this model has no Y-decoder: train one with `python train.py "
                               "experiment=y_decoder model.name_or_path=<this model>`")
        return self.y_decoder.decode(embeddings, max_new_tokens, num_beams)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # ---- building blocks used by training (features may come from the cache) ----

    def tokenize_queries(self, queries: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B questions -> (ids (B, L) int64, mask (B, L) bool), L <= predictor.max_query_len.

        Raises ValueError for an empty question, TypeError for a non-string.
        """
        return self.predictor.tokenize(check_texts(queries, "questions"))

    def forward(self, visual: torch.Tensor, query_ids: torch.Tensor | None = None,
                query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Visual tokens (B, N, Dx) + query ids/mask (B, L) -> Ŝ_Y (B, D), not normalised.

        Query token embeddings come from the predictor's own query reader (the Y-encoder's
        token table, or for an LLM predictor the LM's), detached, so the predictor starts from
        pretrained lexical knowledge and never moves the table itself. In training mode they get
        ``predictor.query_noise`` (:func:`~vljepa.modules.queries.add_query_noise`).
        """
        query = None
        if query_ids is not None:
            query = self.predictor.embed_query(query_ids.to(self.device))  # (B, L, Dq)
            if self.training:  # predictor.query_noise, for every kind that reads the query
                query = add_query_noise(query, self.config.predictor.query_noise)
            query_mask = query_mask.to(self.device)
        return self.predictor(visual.to(self.device, torch.float32), query, query_mask)

    def target_embed(self, texts: Sequence[str]) -> torch.Tensor:
        """B target texts -> S_Y (B, D), not normalised. Gradients reach the Y-encoder only when
        it is trainable; the head always trains."""
        return self.y_head(self.y_encoder(check_texts(texts, "target texts")).to(self.device))

    def loss(self, pred: torch.Tensor, target: torch.Tensor,
             target_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The configured objective (InfoNCE by default) between Ŝ_Y and S_Y, (B, D) each."""
        scale = self.logit_scale.exp().clamp(max=100.0)  # CLIP's cap on 1/temperature
        if self.config.loss.kind == "infonce" and self.config.loss.gather:
            # negatives from every rank (a no-op in one process): open_clip's gather_with_grad
            pred, target = gather_with_grad(pred), gather_with_grad(target)
            target_ids = gather_ids(target_ids)
        return self.loss_fn(pred, target, scale, target_ids)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: predictor and heads at ``lr`` (a predictor's pretrained layers at
        its ``lr_mults``); norms, biases, positional embeddings and the logit scale without
        weight decay; a trainable Y-encoder at ``lr * lr_mult``."""
        mults = {f"predictor.{k}": m for k, m in self.predictor.lr_mults.items()}
        groups = weight_decay_groups(self, lr, weight_decay, lr_mults=mults)
        y_params = [p for p in self.y_encoder.parameters() if p.requires_grad]
        if y_params:
            groups.append({"params": y_params, "lr": lr * self.config.y_encoder.lr_mult,
                           "weight_decay": weight_decay})
        return groups

    # ---- user API: raw inputs in, unit vectors or answers out ----
    # Every method takes lists of any length: they run in batches of ``batch_size``, with a tqdm
    # progress bar when ``progress=True``. Images are PIL images, paths, bytes, numpy arrays or
    # tensors (see :func:`vljepa.inputs.load_image`); a 4-D tensor (B, 3, H, W) is B images.

    def _batches(self, n: int, batch_size: int, progress: bool, desc: str):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        starts = range(0, n, batch_size)
        if progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc=desc, unit="batch")
        return starts

    @torch.no_grad()
    def visual_tokens(self, images: Sequence[Any], batch_size: int = 64,
                      progress: bool = False) -> torch.Tensor:
        """Images -> visual tokens (B, N, Dx) float32. Runs the frozen X-encoder.

        Raises ValueError for no images; see :func:`vljepa.inputs.load_image` for per-image errors.
        """
        images = as_image_list(images)
        out = []
        for i in self._batches(len(images), batch_size, progress, "X-encoder"):
            pixels = torch.stack([self.x_encoder.transform(load_image(im))
                                  for im in images[i:i + batch_size]])
            out.append(self.x_encoder(pixels.to(self.device)))
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, images: Sequence[Any], queries: Sequence[str] | None,
                batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Images and one question each -> predicted answer embeddings Ŝ_Y (B, D) float32, unit
        norm. ``queries=None`` gives the query-free prediction (paper's VL-JEPA_BASE captioning).

        Raises ValueError when the counts differ or a question is empty.
        """
        images = as_image_list(images)
        if queries is not None:
            queries = check_texts(queries, "questions")
            if len(images) != len(queries):
                raise ValueError(f"{len(images)} images but {len(queries)} questions")
        out = []
        for i in self._batches(len(images), batch_size, progress, "predict"):
            visual = self.visual_tokens(images[i:i + batch_size], batch_size)
            ids = mask = None
            if queries is not None:
                ids, mask = self.tokenize_queries(queries[i:i + batch_size])
            out.append(F.normalize(self(visual, ids, mask), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def embed_image(self, images: Sequence[Any], batch_size: int = 64,
                    progress: bool = False) -> torch.Tensor:
        """Images -> (B, D) float32 unit vectors in the shared space: the query-free prediction,
        or the prediction for ``config.default_prompt`` when one is set (paper §3: VL-JEPA_BASE
        embeds an image by predicting its caption's embedding)."""
        images = as_image_list(images)
        return torch.cat([self.embed_visual(self.visual_tokens(images[i:i + batch_size]))
                          for i in self._batches(len(images), batch_size, progress, "embed")])

    @torch.no_grad()
    def embed_visual(self, visual: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Visual tokens (B, N, Dx) (e.g. from the feature cache) -> :meth:`embed_image`'s
        (B, D) float32 unit vectors (not normalised with ``normalize=False``)."""
        ids = mask = None
        if self.config.default_prompt is not None:
            ids, mask = self.tokenize_queries([self.config.default_prompt] * len(visual))
        z = self(visual, ids, mask).float()
        return F.normalize(z, dim=-1) if normalize else z

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str], batch_size: int = 256,
                   progress: bool = False) -> torch.Tensor:
        """Texts -> S_Y (B, D) float32, unit norm: the Y-encoder followed by its head.

        Raises TypeError for a single string or a non-string, ValueError for an empty one.
        """
        texts = check_texts(texts, "texts")
        if not texts:
            raise ValueError("no texts given")
        return torch.cat([F.normalize(self.target_embed(texts[i:i + batch_size]), dim=-1)
                          for i in self._batches(len(texts), batch_size, progress, "Y-encoder")])

    # ---- open_clip's conventions, so CLIP tooling (open_clip's zero-shot code, clip_benchmark)
    # runs on a VL-JEPA: create_model_and_transforms / get_tokenizer give the inputs ----

    @torch.no_grad()
    def encode_image(self, images: Any, normalize: bool = False, **kw) -> torch.Tensor:
        """open_clip's ``encode_image``: image embeddings (B, D) float32 (unit norm with
        ``normalize=True``; open_clip's default is False).

        ``images`` is a float tensor (B, 3, H, W) that the model's own preprocessing produced
        (``create_model_and_transforms``'s transforms, or ``x_encoder.transform``), used as is
        (video X-encoders: clips (B, T, 3, H, W)); or anything :meth:`embed_image` takes (PIL
        images, paths, arrays), preprocessed here. Works under a caller's ``torch.no_grad`` or
        autocast (the result is float32 either way).
        """
        if isinstance(images, torch.Tensor) and images.is_floating_point() and images.ndim >= 4:
            visual = self.x_encoder(images.to(self.device, torch.float32))  # preprocessed pixels
            return self.embed_visual(visual, normalize)
        return self.embed_visual(self.visual_tokens(images, **kw), normalize)

    @torch.no_grad()
    def encode_text(self, texts: torch.Tensor | Sequence[str], normalize: bool = False,
                    **kw) -> torch.Tensor:
        """open_clip's ``encode_text``: S_Y (B, D) float32 (unit norm with ``normalize=True``).

        ``texts`` is a token tensor (B, L) int64 from :func:`vljepa.get_tokenizer` (padding
        recovered as ``ids != tokenizer.pad_id``) or a list of strings.
        Raises TypeError for a float tensor, and as :meth:`embed_text` for strings.
        """
        if isinstance(texts, torch.Tensor):
            if texts.is_floating_point() or texts.ndim != 2:
                raise TypeError(f"encode_text takes token ids (B, L) int64 from get_tokenizer or "
                                f"a list of strings, got a {texts.dtype} tensor {tuple(texts.shape)}")
            z = self.y_head(self.y_encoder.encode_ids(texts.to(self.device))).float()
        else:
            z = self.target_embed(check_texts(texts, "texts")).float()
        return F.normalize(z, dim=-1) if normalize else z

    def get_tokenizer(self, context_length: int | None = None):
        """The Y-encoder's tokenizer in open_clip's convention (list[str] -> (B, L) int64)."""
        return self.y_encoder.get_tokenizer(context_length)

    @torch.no_grad()
    def answer(self, images: Sequence[Any], questions: Sequence[str],
               candidates: Sequence[str] | None = None, batch_size: int = 64,
               progress: bool = False) -> tuple[list[str], torch.Tensor]:
        """Answer each question by the nearest candidate text in the shared space (paper §3).

        Args:
            candidates: the answers to choose from; None uses the answer vocabulary saved with
                the model (``self.answers``, the training answers).
        Returns:
            (B answer strings, (B,) float32 cosine similarity of each chosen answer).
        Raises:
            ValueError: no candidates given and none saved with the model.
        """
        if candidates is None:
            if not self.answers:
                raise ValueError("no candidates given and this model has no saved answer "
                                 "vocabulary; pass candidates=[...]")
            candidates = self.answers
        candidates = check_texts(candidates, "candidates")
        if not candidates:
            raise ValueError("no candidate answers given")
        sims = (self.predict(images, questions, batch_size, progress)
                @ self.embed_text(candidates).T)  # (B, C)
        scores, idx = sims.max(1)
        return [candidates[i] for i in idx.tolist()], scores

    @torch.no_grad()
    def text_classifier(self, labels: Sequence[str],
                        templates: Sequence[str] | None = None) -> torch.Tensor:
        """Zero-shot classifier weights (C, D), unit norm: for each label the mean of its
        templated text embeddings, renormalised (open_clip's ``build_zero_shot_classifier``).
        Templates contain ``{}`` (e.g. ``"an emoji of {}"``); None uses the bare label."""
        labels = check_texts(labels, "labels")
        if not labels:
            raise ValueError("no labels given")
        templates = check_texts(templates or ["{}"], "templates")
        if any("{}" not in t for t in templates):
            raise ValueError(f"every template needs a '{{}}' slot, got {templates}")
        emb = self.embed_text([t.format(c) for c in labels for t in templates])
        emb = emb.view(len(labels), len(templates), -1).mean(1)
        return F.normalize(emb, dim=-1)

    @torch.no_grad()
    def classify(self, images: Sequence[Any], labels: Sequence[str],
                 templates: Sequence[str] | None = None, batch_size: int = 64,
                 progress: bool = False) -> torch.Tensor:
        """Zero-shot classification: (B, C) float32 probabilities, rows summing to 1, from
        ``softmax(logit_scale * embed_image @ text_classifier.T)`` as in CLIP."""
        weights = self.text_classifier(labels, templates)
        z = self.embed_image(images, batch_size, progress)
        scale = self.logit_scale.exp().clamp(max=100.0)
        return (scale * z @ weights.T).softmax(-1)

    @torch.no_grad()
    def embed(self, items: Any, kind: str | None = None, **kw) -> torch.Tensor:
        """Embed a list of texts or images, or pass through precomputed (B, D) embeddings.

        ``kind`` is "text", "image" or None (auto: strings are texts; a string naming an
        existing file is ambiguous and raises ValueError asking for ``kind``).
        """
        if isinstance(items, torch.Tensor) and items.ndim == 2 and items.is_floating_point():
            if items.shape[1] != self.config.embed_dim:
                raise ValueError(f"embeddings have width {items.shape[1]}, the model's is "
                                 f"{self.config.embed_dim}")
            return F.normalize(items.float().to(self.device), dim=-1)
        if kind is None:
            items = items if isinstance(items, torch.Tensor) else list(items)
            if not isinstance(items, torch.Tensor) and items and all(isinstance(x, str) for x in items):
                if any(os.path.isfile(x) for x in items):
                    raise ValueError("these strings include file paths: pass kind='image' (or "
                                     "kind='text' if they are texts)")
                kind = "text"
            else:
                kind = "image"
        if kind == "text":
            return self.embed_text(items, **kw)
        if kind == "image":
            return self.embed_image(items, **kw)
        raise ValueError(f"kind must be 'text', 'image' or None, got {kind!r}")

    @torch.no_grad()
    def retrieve(self, queries: Any, gallery: Any, k: int = 5, query_kind: str | None = None,
                 gallery_kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k gallery items for each query by cosine similarity, in either direction
        (text -> image, image -> text, or same-modality). Queries and gallery are lists of
        texts or images, or (B, D) embeddings (see :meth:`embed` for ``*_kind``).

        Returns:
            (indices (Q, k) int64 into the gallery, scores (Q, k) float32 cosines), best first.
        Raises:
            ValueError: k < 1 (k larger than the gallery is clipped to its size).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = self.embed(queries, query_kind)
        g = self.embed(gallery, gallery_kind)
        scores, idx = (q @ g.T).topk(min(k, len(g)), dim=1)
        return idx, scores

    # ---- save / load: config.json + model.safetensors (vljepa.hub) ----

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint must hold: all but the frozen encoders' (the X-encoder, and
        the Y-encoder unless it trains), detached, on the CPU."""
        frozen = ["x_encoder."]
        if not self.config.y_encoder.trainable:
            frozen.append("y_encoder.")
        out, seen = {}, set()
        for k, v in self.state_dict().items():
            if k.startswith(tuple(frozen)):
                continue
            if v.numel() and (v.data_ptr(), v.shape) in seen:
                continue  # an alias (e.g. the Y-encoder's token table): saved once, first name
            seen.add((v.data_ptr(), v.shape))
            out[k] = v.detach().cpu().contiguous()
        return out

    def load_trained(self, state: dict[str, torch.Tensor], source: str) -> VLJEPA:
        """Load trained tensors (:meth:`trained_state_dict`'s keys) into this model.

        Raises ValueError naming the tensors missing, unexpected or of the wrong shape, and
        ``source`` (the file they came from)."""
        expected = self.trained_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]
        if missing or unexpected or wrong:
            raise ValueError(f"{source} does not fit this model config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
        self.load_state_dict(state, strict=False)
        return self

    def save_pretrained(self, directory: str | os.PathLike, *, name: str | None = None) -> Path:
        """Write ``config.json`` (the config, the encoders' fingerprints, the saved answers) and
        ``model.safetensors`` (:meth:`trained_state_dict`) to ``directory``, atomically.

        A ternary model (``predictor.quant="ternary"``) is written packed: 2 bits per BitLinear
        weight plus a scale, its other predictor tensors in float16 (see
        :func:`vljepa.modules.bitlinear.export_state_dict`). The model itself is left as it is.
        ``name`` titles the model card (a hub repo id when pushed; default: the directory's
        name). Returns the directory.
        """
        y_fingerprint = None if self.config.y_encoder.trainable else self.y_encoder.fingerprint
        meta = {"model": self.config.to_dict(), "x_encoder_fingerprint": self.x_encoder.fingerprint,
                "y_encoder_fingerprint": y_fingerprint,
                "predictor_fingerprint": self.predictor.fingerprint, "answers": self.answers,
                "card": self.card, "format": self.FORMAT, "vljepa_version": __version__}
        state = self.trained_state_dict()
        if self.config.predictor.quant == "ternary":
            state = export_state_dict(self, state)
        card = self.model_card(name or Path(directory).resolve().name, state)
        return hub.write_pretrained(directory, meta, state, card)

    def model_card(self, name: str, state: dict[str, torch.Tensor]) -> str:
        """The README.md written beside the weights (see :func:`vljepa.hub.model_card`)."""
        c = self.config
        trained = sum(v.numel() for v in state.values())
        p = c.predictor
        facts = {
            "X-encoder (frozen, not stored)": f"{c.x_encoder.backend} `{c.x_encoder.name}`, "
                                              f"weights `{c.x_encoder.weights}`",
            "Y-encoder": f"{c.y_encoder.backend} `{c.y_encoder.name}` "
                         f"({'trained' if c.y_encoder.trainable else 'frozen, not stored'})",
            "Predictor": f"`{p.kind}`" + (f", width {p.width}, depth {p.depth}, {p.heads} heads"
                                          if p.kind == "transformer" else "")
                         + (", ternary (BitNet b1.58, packed)" if p.quant == "ternary" else ""),
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
        return hub.model_card(name.rsplit("/", 1)[-1], summary, facts, self.card, usage)

    def push_to_hub(self, repo_id: str, **kw: Any) -> str:
        """Upload this model (``save_pretrained``'s files) to a Hugging Face Hub repo; load it
        back with ``vljepa.load(repo_id)``. Keyword arguments as
        :func:`vljepa.hub.push_to_hub` (private, token, revision, commit_message, create_pr)."""
        return hub.push_to_hub(self, repo_id, **kw)

    @classmethod
    def from_saved(cls, meta: dict[str, Any], state: dict[str, torch.Tensor], source: str,
                   map_location: str = "cpu") -> VLJEPA:
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
            raise ValueError(
                f"the pretrained text encoder of the predictor built here "
                f"({model.config.predictor.text_model or model.config.y_encoder.name}, "
                f"fingerprint {model.predictor.fingerprint}) is not the one {source} was trained "
                f"with (fingerprint {meta['predictor_fingerprint']}): its weights or version differ")
        if any(k.endswith(".weight_packed") for k in state):
            to_packed(model.predictor)  # drop the fp32 latent weights before the packed arrive
            check_packed_state(model, state, source)
        model.load_trained(state, source)
        model.answers = meta.get("answers")
        model.card = dict(meta.get("card") or {})
        return model.to(map_location).eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, map_location: str = "cpu"
                        ) -> VLJEPA:
        """A saved VL-JEPA (directory, ``.ckpt`` or hub repo id), as :func:`vljepa.load`; raises
        ValueError if the file holds another kind of model (use :func:`vljepa.load`)."""
        meta, state, source = hub.read_any(name_or_path, map_location)
        if meta.get("format", cls.FORMAT) != cls.FORMAT:
            raise ValueError(f"{source} holds a {meta['format']!r} model, not a VL-JEPA; "
                             "load it with vljepa.load")
        return cls.from_saved(meta, state, source, map_location)
