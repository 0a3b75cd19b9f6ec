"""The Y-encoder: embeds target texts as S_Y (paper §3), with its tokenizer in open_clip's
convention. It wraps sentence-transformers or open_clip's text tower.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import YEncoderConfig
from ..hub import hub_error
from .packaged import resolve_st_name
from .weights import FrozenMixin, tensors_digest


class TextTokenizer:
    """open_clip's tokenizer convention for a Y-encoder: a list of B strings -> a padded
    ``LongTensor`` (B, context_length), with ``pad_id`` at padding (so a model recovers the
    attention mask as ``ids != pad_id``). Built from the Y-encoder's config alone (no weights),
    as ``open_clip.get_tokenizer(name)`` is.

    Args:
        cfg: the Y-encoder's config (backend, name).
        context_length: tokens per text, special tokens included (None: ``cfg.max_length``);
            longer texts are truncated.
    Raises:
        RuntimeError: the tokenizer cannot be loaded (names it).
    """

    def __init__(self, cfg: YEncoderConfig, context_length: int | None = None,
                 tokenizer=None):
        self.cfg = cfg
        self.context_length = context_length or cfg.max_length
        if tokenizer is not None:  # an already-loaded one (a built model's)
            self._tokenizer = tokenizer
        elif cfg.backend == "sentence-transformers":
            from transformers import AutoTokenizer  # heavy; a tokenizer alone needs no model
            path = resolve_st_name(cfg.name)
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(path)
            except Exception as e:
                raise hub_error("tokenizer", path, e) from e
        elif cfg.backend == "open_clip":
            import open_clip
            self._tokenizer = open_clip.get_tokenizer(cfg.name)
        else:
            raise ValueError(f"unknown Y-encoder backend {cfg.backend!r}")
        self.pad_id = self._tokenizer.pad_token_id if cfg.backend == "sentence-transformers" else 0

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        """Texts (a string is one text, as open_clip allows) -> ids (B, L) int64, L =
        ``context_length`` (or this tokenizer's)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        L = context_length or self.context_length
        if self.cfg.backend == "open_clip":
            return self._tokenizer(texts, context_length=L)
        enc = self._tokenizer(texts, padding="max_length", truncation=True, max_length=L,
                              return_tensors="pt")
        return enc["input_ids"]


class YEncoder(FrozenMixin, nn.Module):
    """Text encoder: list of B strings -> target embeddings S_Y before the head, (B, Dy) float32.

    Also provides the tokenizer and token embedding table that the predictor uses for its query
    tokens, so queries carry the encoder's pretrained lexical knowledge (paper §3 uses its LLM's
    own tokenizer and embeddings in the same way).

    Frozen (``cfg.trainable=False``): eval mode, no grad, and embeddings of repeated texts are
    memoised. Trainable: trained with ``cfg.lr_mult`` x the base learning rate (paper: 0.05).
    """

    MEMO_SIZE = 100_000  # frozen-mode memo of text -> embedding

    def __init__(self, cfg: YEncoderConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.backend == "sentence-transformers":
            from sentence_transformers import SentenceTransformer
            path = resolve_st_name(cfg.name)
            try:
                self.model = SentenceTransformer(path, device="cpu")
            except Exception as e:
                raise hub_error("sentence-transformers model", path, e) from e
            self.model.max_seq_length = cfg.max_length
            # sentence-transformers >= 6 renamed these; older releases have only the old names
            self.dim = getattr(self.model, "get_embedding_dimension",
                               self.model.get_sentence_embedding_dimension)()
            self.token_embedding = self.model[0].auto_model.get_input_embeddings()
        elif cfg.backend == "open_clip":
            import open_clip
            try:
                model = open_clip.create_model(cfg.name, pretrained=cfg.pretrained)
                self._oc_tokenizer = open_clip.get_tokenizer(cfg.name)
            except Exception as e:
                raise hub_error("open_clip model", f"{cfg.name}:{cfg.pretrained}", e) from e
            model.visual = nn.Identity()  # keep the text tower only
            self.model = model
            self.dim = model.text_projection.shape[1] if isinstance(
                model.text_projection, torch.Tensor) else model.text_projection.out_features
            self.token_embedding = model.token_embedding
        else:
            raise ValueError(f"unknown Y-encoder backend {cfg.backend!r}; "
                             "use 'sentence-transformers' or 'open_clip'")
        self._memo: dict[str, torch.Tensor] = {}
        self._fingerprint: str | None = None
        if not cfg.trainable:
            self.freeze()

    @property
    def fingerprint(self) -> str:
        """A hash of the encoder's identity (backend, name, pretrained tag, max length) and its
        weights, computed once: a checkpoint records it, and loading checks it."""
        if self._fingerprint is None:
            cfg = self.cfg
            self._fingerprint = tensors_digest(
                self.state_dict().items(),
                f"{cfg.backend}|{cfg.name}|{cfg.pretrained}|{cfg.max_length}")
        return self._fingerprint

    def train(self, mode: bool = True):
        return nn.Module.train(self, mode and self.cfg.trainable)

    @property
    def vocab_dim(self) -> int:
        """Width of the token embedding table used for query tokens."""
        return self.token_embedding.embedding_dim

    def tokenize(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input ids (B, L) int64, attention mask (B, L) bool, True = real token)."""
        if self.cfg.backend == "sentence-transformers":
            enc = self.model.tokenizer(list(texts), padding=True, truncation=True,
                                       max_length=max_length, return_tensors="pt")
            return enc["input_ids"], enc["attention_mask"].bool()
        ids = self._oc_tokenizer(list(texts), context_length=max_length)
        mask = ids != 0
        keep = int(mask.sum(1).max())
        return ids[:, :keep], mask[:, :keep]

    def get_tokenizer(self, context_length: int | None = None) -> TextTokenizer:
        """This encoder's tokenizer in open_clip's convention (:class:`TextTokenizer`)."""
        tokenizer = self.model.tokenizer if self.cfg.backend == "sentence-transformers" \
            else self._oc_tokenizer
        return TextTokenizer(self.cfg, context_length, tokenizer)

    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) int64 from :class:`TextTokenizer` -> (B, Dy) float32, as
        :meth:`forward` gives for the same texts (padding, ``pad_id``, is masked out).
        No gradient unless the encoder is trainable."""
        with torch.set_grad_enabled(self.cfg.trainable and torch.is_grad_enabled()):
            if self.cfg.backend == "open_clip":
                return self.model.encode_text(ids).float()
            pad_id = self.model.tokenizer.pad_token_id
            features = {"input_ids": ids, "attention_mask": (ids != pad_id).long()}
            return self.model(features)["sentence_embedding"].float()

    def _encode(self, texts: list[str]) -> torch.Tensor:
        if self.cfg.backend == "sentence-transformers":
            features = getattr(self.model, "preprocess", self.model.tokenize)(texts)
            return self.model(features)["sentence_embedding"]
        ids = self._oc_tokenizer(texts)
        return self.model.encode_text(ids)

    def forward(self, texts: list[str]) -> torch.Tensor:
        """B strings -> (B, Dy) float32."""
        if self.cfg.trainable:
            return self._encode(list(texts))
        new = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if len(self._memo) + len(new) > self.MEMO_SIZE:
            self._memo.clear()  # bounded: a caption corpus need not fit in memory
        if new:
            with torch.no_grad():
                for t, e in zip(new, self._encode(new)):
                    self._memo[t] = e
        return torch.stack([self._memo[t] for t in texts])
