"""What the HTTP server (:mod:`vljepa.serving.http`) runs a model through: one interface over
numpy arrays, whatever holds the weights (torch: :mod:`~vljepa.serving.torch_backend`; ONNX
Runtime without torch: :mod:`~vljepa.serving.onnx_runtime`), and the decoding of images that
clients send (base64 data URLs).

A :class:`Backend` takes images already preprocessed (:meth:`Backend.preprocess`, per image, in
the request's thread: decoded, resized and cropped, still uint8) and runs the network on batches
(:meth:`Backend.embed_images`, :meth:`Backend.predict`, :meth:`Backend.embed_texts`) from the
server's one inference thread, which normalises a batch's pixels in one operation
(:meth:`Backend.float_pixels`) rather than image by image: per-request work on the event loop is
what batching cannot share.
All embeddings are float32 rows of unit L2 norm, width D (``embed_dim``).

Standard library, numpy and PIL only: importing this module imports no torch.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..inputs import to_rgb

# the image formats the server decodes (PIL names); others are refused before decoding
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?)(;base64)?,",
                       re.IGNORECASE)


class InputError(ValueError):
    """A request the model cannot serve as sent; the server answers 400 with this message.

    Attributes:
        param: the request field at fault (e.g. ``"input[2]"``), or None.
        code: a short machine-readable code (``"invalid_image"``, ``"not_in_bundle"``), or None.
    """

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


class Backend:
    """A served model: preprocessing, batched inference, and what the server reports about it.

    Subclasses set the attributes and implement the ``_``-methods; all methods but
    :meth:`preprocess` and the ``check_*`` methods are called from one thread at a time.

    Attributes:
        kind: "torch", "torch-lean" or "onnx" (reported by ``/health`` and ``/v1/models``).
        embed_dim: D, the width of every embedding.
        candidates: the default candidate answers (the model's saved vocabulary), or None.
        logit_scale: the CLIP-style inverse temperature :meth:`classify` uses (``exp`` of the
            model's learned logit scale, at most 100).
        image_size: (H, W) of the preprocessed pixels.
        pixel_spec: the eval preprocessing as data (:func:`resize_crop`), or None.
    """

    kind = "?"
    embed_dim: int
    candidates: list[str] | None = None
    logit_scale: float = 100.0
    image_size: tuple[int, int]
    TEXT_MEMO = 20_000  # distinct texts whose embeddings are kept

    def __init__(self) -> None:
        self._text_memo: OrderedDict[str, np.ndarray] = OrderedDict()

    # ---- what subclasses implement ----

    # the ``resize`` / ``interpolation`` / ``crop`` / ``mean`` / ``std`` of the model's eval
    # preprocessing (:func:`resize_crop`), or None: :meth:`preprocess` is the model's own
    # transform, whole, and returns normalised float32 pixels
    pixel_spec: dict[str, Any] | None = None

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image -> the X-encoder's input, resized and cropped: (H, W, 3) uint8 when
        :attr:`pixel_spec` is set (normalised later, a batch at a time), else (3, H, W) float32
        normalised. Thread-safe: requests run it in parallel."""
        if self.pixel_spec is None:
            raise NotImplementedError
        return resize_crop(image, self.pixel_spec)

    def float_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """A stack of :meth:`preprocess` outputs -> (B, 3, H, W) float32, normalised: (B, H, W,
        3) uint8 through :func:`normalize_pixels`, float32 as it is. Raises ValueError for
        uint8 pixels on a backend without :attr:`pixel_spec`."""
        if pixels.dtype != np.uint8:
            return np.ascontiguousarray(pixels, np.float32)
        if self.pixel_spec is None:
            raise ValueError("uint8 pixels need the model's pixel_spec (mean and std)")
        return normalize_pixels(pixels, self.pixel_spec)

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed pixels (a stack of :meth:`preprocess` outputs: (B, H, W, 3) uint8 or
        (B, 3, H, W) float32) -> query-free image embeddings (B, D) float32, unit norm
        (``VLJEPA.embed_image``)."""
        raise NotImplementedError

    def predict(self, pixels: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        """Pixels (as :meth:`embed_images`) and B questions -> Ŝ_Y (B, D) float32, unit norm
        (``VLJEPA.predict``). Raises InputError for a question it cannot read."""
        raise NotImplementedError

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        """Distinct texts -> S_Y (B, D) float32, unit norm (``VLJEPA.embed_text``)."""
        raise NotImplementedError

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens the Y-encoder reads of each text (special tokens included, after truncation),
        for the ``usage`` of ``/v1/embeddings``. Called on the server's event loop while the
        inference thread runs a batch: an implementation must not share mutable state (a
        tokenizer's truncation and padding settings) with inference."""
        return [len(t.split()) + 2 for t in texts]

    def check_questions(self, questions: Sequence[str]) -> None:
        """Raise InputError (400) for questions this backend cannot read (a lean bundle's
        unstored ones), before any work is queued."""

    def check_texts(self, texts: Sequence[str], param: str) -> None:
        """Raise InputError (400) for texts this backend cannot embed (``param`` names them)."""

    def describe(self) -> dict[str, Any]:
        """What ``/health`` and ``/v1/models`` report about the model beyond its name."""
        return {"backend": self.kind, "embed_dim": self.embed_dim,
                "candidates": len(self.candidates or [])}

    # ---- shared ----

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> S_Y (B, D) float32, unit norm; repeated texts are embedded once and kept
        (at most ``TEXT_MEMO``)."""
        texts = list(texts)
        new = [t for t in dict.fromkeys(texts) if t not in self._text_memo]
        if new:
            for t, e in zip(new, self._embed_texts(new)):
                self._text_memo[t] = np.ascontiguousarray(e, np.float32)
            while len(self._text_memo) > self.TEXT_MEMO:
                self._text_memo.popitem(last=False)
        out = np.empty((len(texts), self.embed_dim), np.float32)
        for i, t in enumerate(texts):
            e = self._text_memo.get(t)
            if e is None:  # evicted by this very call (a batch larger than the memo)
                e = self._embed_texts([t])[0]
            out[i] = e
        return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (as ``torch.nn.functional.normalize``: eps 1e-12)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32."""
    z = np.exp(x - x.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).astype(np.float32)


# ---- images ----

def image_bytes(value: Any, param: str) -> tuple[bytes, str]:
    """An image as a client sends it -> (its encoded bytes, the name of the field that held
    them, e.g. ``"input[2].image"``).

    ``value`` is a data URL (``data:image/png;base64,...``), bare base64, or a dict
    ``{"image": ...}`` / ``{"image_url": {"url": ...}}`` / ``{"image_url": "..."}`` holding one.
    Remote URLs are not fetched.

    Raises:
        InputError: any other type, a remote URL, a data URL that is not base64, or invalid
            base64 (``param`` names the field).
    """
    if isinstance(value, dict):
        if "image" in value:
            return image_bytes(value["image"], f"{param}.image")
        if "image_url" in value:
            url = value["image_url"]
            url = url.get("url") if isinstance(url, dict) else url
            return image_bytes(url, f"{param}.image_url")
        raise InputError(f"{param}: an image item needs an 'image' field (a base64 data URL)",
                         param, "invalid_image")
    if not isinstance(value, str):
        raise InputError(f"{param}: an image must be a base64 string or data URL, got "
                         f"{type(value).__name__}", param, "invalid_image")
    s = value.strip()
    if s.lower().startswith(("http://", "https://", "file:", "ftp://")):
        raise InputError(f"{param}: remote image URLs are not fetched; send the image inline "
                         "as a base64 data URL (data:image/png;base64,...)", param,
                         "invalid_image")
    if s[:5].lower() == "data:":
        m = _DATA_URL.match(s)
        if m is None or not m.group(0).lower().endswith(";base64,"):
            raise InputError(f"{param}: a data URL must be base64-encoded "
                             "(data:image/png;base64,...)", param, "invalid_image")
        s = s[m.end():]
    if not s:
        raise InputError(f"{param}: the image is empty", param, "invalid_image")
    try:
        return base64.b64decode(s, validate=True), param
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{param}: not valid base64 ({e})", param, "invalid_image") from None


def decode_image(data: bytes, param: str, max_pixels: int) -> Image.Image:
    """Encoded image bytes -> an RGB PIL image, checking the size before decoding the pixels.

    Args:
        data: PNG, JPEG, WebP, GIF, BMP or TIFF bytes.
        param: the request field, for errors.
        max_pixels: the largest width x height accepted.
    Raises:
        InputError: undecodable or truncated data (code "invalid_image"), or an image of more
            than ``max_pixels`` pixels (code "image_too_large", status 413).
    """
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        w, h = img.size
        if w * h > max_pixels:
            raise InputError(f"{param}: the image is {w}x{h} = {w * h} pixels, over the limit of "
                             f"{max_pixels}", param, "image_too_large", 413)
        img.load()  # decode now: a truncated file fails here
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{param}: not an image in a format the server reads "
                         f"({', '.join(IMAGE_FORMATS)})", param, "invalid_image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            EOFError) as e:
        raise InputError(f"{param}: cannot decode the image ({e})", param,
                         "invalid_image") from None
    return to_rgb(img)


_INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
                   "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS, "box": Image.BOX,
                   "hamming": Image.HAMMING}


def resize_crop(img: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """The PIL half of torchvision's eval preprocessing (Resize of the short side, then
    CenterCrop), with the same PIL calls as :class:`vljepa.serving.lean_cnn.LeanTransform`:
    RGB image -> (H, W, 3) uint8. :func:`normalize_pixels` does the rest, a batch at a time.

    ``spec``: ``resize`` (short side, px), ``interpolation`` (PIL name: "bilinear", "bicubic",
    ...), ``crop`` ([H, W]); ``mean`` and ``std`` are read by :func:`normalize_pixels`."""
    size = int(spec["resize"])
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _INTERPOLATIONS[spec["interpolation"]])
    ch, cw = (int(v) for v in spec["crop"])
    top, left = int(round((new_h - ch) / 2.0)), int(round((new_w - cw) / 2.0))
    img = img.crop((left, top, left + cw, top + ch))
    return np.asarray(img, np.uint8).reshape(ch, cw, 3)


def normalize_pixels(pixels: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """The tensor half of torchvision's eval preprocessing (ToTensor, Normalize) on a batch:
    (B, H, W, 3) uint8 -> (B, 3, H, W) float32, ``(x / 255 - mean) / std`` per channel, the same
    float32 operations as ToTensor and Normalize per image (so the same bits)."""
    x = np.asarray(pixels, np.uint8).astype(np.float32) / np.float32(255)  # (B, H, W, 3)
    x -= np.asarray(spec["mean"], np.float32)  # channels last: contiguous, broadcast over 3
    x /= np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

