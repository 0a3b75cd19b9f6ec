"""User input -> what the model reads: RGB images and checked texts, or a clear error.

Images: :func:`load_image` accepts ``PIL.Image`` (any mode), a file path (``str`` /
``os.PathLike``), raw encoded bytes, a ``datasets`` image dict (``{"bytes": ..., "path": ...}``),
a numpy array (H, W), (H, W, 1|3|4) uint8 or float in [0, 1], or a tensor (C, H, W) / (H, W) uint8 or float in [0, 1] (torchvision's
convention). Grayscale, palette and RGBA images are converted to RGB; transparent pixels are
composited on white, so glyphs with an alpha channel stay visible. :func:`image_key` hashes an
image's content for the feature cache. Texts: :func:`check_texts`.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; alpha is composited on a white background."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _open(data: bytes | str | os.PathLike, what: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        img.load()  # decode now, so a truncated file fails here and not later
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {what}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {what}: {e}") from e
    return img


def load_image(x: Any) -> Image.Image:
    """Return ``x`` as an RGB ``PIL.Image``.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an unreadable or corrupt file, or an array/tensor of an unsupported shape.
        TypeError: anything else.
    """
    if isinstance(x, Image.Image):
        return to_rgb(x)
    if isinstance(x, (str, os.PathLike)):
        return to_rgb(_open(x, repr(os.fspath(x))))
    if isinstance(x, bytes):
        return to_rgb(_open(x, f"<{len(x)} bytes>"))
    if isinstance(x, dict) and ("bytes" in x or "path" in x):  # datasets.Image(decode=False)
        if x.get("bytes"):
            return to_rgb(_open(x["bytes"], repr(x.get("path") or "<bytes>")))
        return load_image(x["path"])
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported: this
    if torch is not None and isinstance(x, torch.Tensor):  # module stays torch-free (serving)
        t = x.detach().cpu()
        if t.ndim == 3:
            t = t.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        return load_image(t.numpy())
    if isinstance(x, np.ndarray):
        a = x
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
            raise ValueError(f"image array must be (H, W) or (H, W, 1|3|4), got shape {x.shape}")
        if a.dtype != np.uint8:
            if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"image array has unsupported dtype {a.dtype}")
            a = a.astype(np.float32)
            if not np.isfinite(a).all():
                raise ValueError("image array contains NaN or inf")
            if np.issubdtype(x.dtype, np.floating):
                a = a * 255.0  # float images are in [0, 1]
            a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return to_rgb(Image.fromarray(a))
    raise TypeError(f"unsupported image type {type(x).__name__}; expected a PIL image, a path, "
                    "bytes, a numpy array or a torch tensor")


def image_key(x: Any) -> str:
    """A content hash of an image, for the feature cache (sha256 hex).

    Files and encoded bytes hash their bytes, so the same file under two names shares a key;
    decoded images hash their mode, size and pixels. A clip (a list or tuple of frames, for
    video X-encoders) hashes its frames' keys in order.
    """
    h = hashlib.sha256()
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError("a clip needs at least one frame")
        h.update(b"clip:" + ",".join(image_key(f) for f in x).encode())
        return h.hexdigest()
    if isinstance(x, dict) and ("bytes" in x or "path" in x):
        x = x.get("bytes") or x["path"]
    if isinstance(x, (str, os.PathLike)):
        try:
            with open(x, "rb") as f:
                h.update(f.read())
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {os.fspath(x)!r}") from None
    elif isinstance(x, bytes):
        h.update(x)
    else:
        img = load_image(x)
        h.update(f"{img.mode}{img.size}".encode())
        h.update(img.tobytes())
    return h.hexdigest()


def as_image_list(images: Any) -> list:
    """A list of images from a list/tuple, or a 4-D tensor / array (B, C, H, W) / (B, H, W, C).

    Raises TypeError for a single image (wrap it in a list), ValueError for no images.
    """
    if isinstance(images, (str, os.PathLike, bytes, Image.Image, dict)) or (
            hasattr(images, "ndim") and images.ndim == 3):
        raise TypeError("images must be a list (or a 4-D batch), got a single image; "
                        "wrap it in a list")
    out = list(images)
    if not out:
        raise ValueError("no images given")
    return out


def check_texts(texts: Sequence[str], what: str) -> list[str]:
    """``texts`` as a list of non-blank strings; ``what`` names them in errors ("questions").

    Raises TypeError for a single string or a non-string, ValueError for an empty/blank one.
    """
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, got a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] must be a string, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"{what}[{i}] is empty")
    return out
