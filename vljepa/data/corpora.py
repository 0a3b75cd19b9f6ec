"""Text corpora for the Y-decoder, which trains on text: lists of texts by source and
split, held-out splits never trained on."""
from __future__ import annotations

import unicodedata

from . import captions as cap

# The text sources a corpus can draw from (any text serves: the decoder never sees images).
TEXT_SOURCES = ("easy_vqa", "openmoji", "scenes", "unicode")


def corpus_texts(source: str, split: str, seed: int = 0) -> list[str]:
    """The texts of one source and split ("train", "val" or "test"), de-duplicated, in order.

    easy_vqa: the questions and the 13 answers ("train" only: its questions are templates that
        the test split shares).
    openmoji: emoji names of that split (split by emoji: test names are never trained on).
    scenes: captions of :func:`vljepa.data.captions.scenes` of that split.
    unicode: names of Unicode symbols (category So) that are not OpenMoji glyphs, a general
        vocabulary of symbol names ("train" only).
    """
    if source not in TEXT_SOURCES:
        raise ValueError(f"unknown text source {source!r}; use some of {TEXT_SOURCES}")
    if source in ("easy_vqa", "unicode") and split != "train":
        return []
    if source == "easy_vqa":
        import easy_vqa as ev  # optional: the offline easy-VQA package
        return list(dict.fromkeys(list(ev.get_train_questions()[0]) + list(ev.get_answers())))
    if source == "openmoji":
        return list(dict.fromkeys(cap.emoji_caption(c) for c in cap.openmoji_split_codepoints(split)))
    if source == "scenes":
        return list(dict.fromkeys(cap.scenes(split)["caption"]))
    emoji = set(cap.openmoji_codepoints())
    return list(dict.fromkeys(
        unicodedata.name(chr(c)).lower() for c in range(0x110000)
        if c not in emoji and unicodedata.category(chr(c)) == "So" and unicodedata.name(chr(c), "")))
