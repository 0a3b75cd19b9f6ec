"""What users call: raw images and texts in, unit vectors, answers and text out.

:class:`VLJEPAInterface` is the user-facing half of :class:`vljepa.model.VLJEPA` (the network
half is tensors in, tensors out). Every method takes lists of any length and runs in batches of
``batch_size``, with a tqdm progress bar when ``progress=True``. Images are PIL images, paths,
bytes, numpy arrays or tensors (:func:`vljepa.inputs.load_image`); a 4-D tensor (B, 3, H, W) is B
images. There is one way from user images to tensors, :meth:`VLJEPAInterface.visual_tokens`
(the X-encoder's own preprocessing, then the X-encoder); every image method goes through it.
All embeddings are L2-normalised float32 of width D = ``config.embed_dim``. The open_clip names
(``encode_image``, ``encode_text``, ``get_tokenizer``) are here too, so CLIP tooling
(open_clip's zero-shot code, clip_benchmark) runs on a VL-JEPA.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .inputs import as_image_list, check_texts, load_image


class VLJEPAInterface:
    """The user API of a VL-JEPA (paper §3, inference: answers, classes and retrieval by the
    nearest candidate embedding; text by the Y-decoder only when asked). It relies on the
    network's ``x_encoder``, ``y_encoder``, ``y_head``, ``predictor``, ``y_decoder``,
    ``forward``, ``target_embed``, ``tokenize_queries``, ``logit_scale``, ``answers``, ``config``
    and ``device`` (:class:`vljepa.model.VLJEPA`)."""

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

