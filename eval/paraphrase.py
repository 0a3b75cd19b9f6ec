"""Paraphrase robustness on easy-VQA: accuracy on the original test questions beside accuracy on
hand-written rewordings of them, on the same test images, for one or several models.

    python eval/paraphrase.py                                   # the released checkpoint
    python eval/paraphrase.py checkpoints/vljepa-easyvqa-lite0
    python eval/paraphrase.py old=DIR new=DIR --n-images 300 --seed 0 --threads 1
    python -m eval.paraphrase ...                               # the same, from the repo root
    python eval/paraphrase.py --text-neighbours                 # + the text encoder's own reading

easy-VQA asks its questions in a couple of dozen fixed templates, so a model can score ~99% on
the test split without reading a question it has not seen. Here every test image is also asked
PARAPHRASES: 12-16 rewordings for each of six question types, none of which is a training
question or an instance of a training template (checked in code, check_paraphrases):

    color             "name the colour of the figure."        gold: the image's colour
    shape             "which geometric figure is drawn here?" gold: the image's shape
    yes/no color      "is the figure coloured {color}?"       {color}: the true colour for half
    yes/no shape      "would you call this shape a {shape}?"  the images, another one for the rest
    negation          "is there no {shape} in the image?"     yes/no, the answer flipped: "no"
                                                              when {shape} is the image's shape
    new construction  "a {shape}: is that what is drawn?"     colour, shape and yes/no questions
                      "the figure drawn here is a what?"      with the attribute or the object
                                                              where no training template puts it

The first four types hold a few negated wordings too ("is the shape not {color}?"); "overall
without negation" leaves out the negation type (the issue's bar), not those.

The true colour and shape of each image are read off its own easy-VQA test questions (answers,
and what yes/no answers keep or rule out); the ~11% of images whose questions leave one of them
open are not sampled. An answer is model.answer's: the nearest candidate among the model's saved
answer vocabulary, else the 13 easy-VQA answers (each image goes through the X-encoder once for
all its questions; a few answers are checked against model.answer itself).

Prints, per question type and overall, the original vs paraphrase accuracy, then each wording's
accuracy (worst first) with its most frequent wrong answer; writes results.json and results.md
to --out (default: results/paraphrase at the repo root). Takes ~15 s per model on 1 CPU thread.
--text-neighbours adds how often all-MiniLM-L6-v2 itself reads each rewording as a training
question that asks the same (nearest by sentence embedding): a reference for what a predictor
reading questions through that encoder starts from.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

import vljepa
from vljepa.data.vqa import EASY_VQA_SHAPES, easy_vqa, true_values
from vljepa.hub import atomic_write
from vljepa.profiling import Stopwatch

ROOT = Path(__file__).resolve().parents[1]
RELEASED = ROOT / "checkpoints" / "vljepa-easyvqa-lite0"
TYPES = ("color", "shape", "yes/no color", "yes/no shape", "negation", "new construction")
ASKS = TYPES[:4]  # what a wording asks: its answer is a colour, a shape, or yes/no about one


@dataclass(frozen=True)
class Paraphrase:
    """One rewording. ``template`` may hold the slots {color} and {shape}: in a yes/no question
    the asked-about slot gets the true value or another one; every other slot gets the image's
    true colour / shape. ``negated`` flips a yes/no gold answer ("is the shape not red?").
    ``asks``: what the wording asks, one of :data:`ASKS`; needed by the types "negation" and
    "new construction", which mix them; the other types ask their own type."""
    type: str
    template: str
    negated: bool = False
    asks: str | None = None

    @property
    def kind(self) -> str:
        """What the wording asks (one of :data:`ASKS`): ``asks``, else its type."""
        return self.asks or self.type


class Item(NamedTuple):
    """One question asked of one image."""
    image: int     # index into the sampled images
    question: str
    gold: str      # the correct answer
    type: str      # one of TYPES (the wording's type, not what it asks)
    wording: str   # the paraphrase's template; for an original test question, the question


PARAPHRASES = [Paraphrase("color", t) for t in (
    "name the colour of the figure.",
    "which colour does the shape have?",
    "tell me the colour of the {shape}.",
    "the {shape} in this picture is which colour?",
    "what hue is the figure?",
    "in what colour is the shape drawn?",
    "identify the color of the object in the picture.",
    "what is the shape's colour?",
    "which colour is used for the {shape}?",
    "say what color the drawn figure is.",
    "colour of the object?",
    "what color would you say the figure is?",
)] + [Paraphrase("shape", t) for t in (
    "which geometric figure is drawn here?",
    "what kind of shape is this?",
    "name the shape in the picture.",
    "what is the form of the {color} object?",
    "what shape has been drawn?",
    "identify the figure shown.",
    "which shape can you see?",
    "the {color} figure is what shape?",
    "what type of figure appears in the image?",
    "tell me which shape is shown.",
    "what geometric shape is drawn in the picture?",
    "what shape is the {color} object?",
)] + [Paraphrase("yes/no color", t, neg) for t, neg in (
    ("is the figure coloured {color}?", False),
    ("is the shape {color}?", False),
    ("is this a {color} figure?", False),
    ("does the object appear {color}?", False),
    ("is the {shape} painted {color}?", False),
    ("would you describe the shape's colour as {color}?", False),
    ("can you see a {color} object here?", False),
    ("is {color} the colour of the figure?", False),
    ("is the drawn figure {color} in colour?", False),
    ("is the picture showing something {color}?", False),
    ("is the shape not {color}?", True),
    ("is the figure any colour other than {color}?", True),
)] + [Paraphrase("yes/no shape", t, neg) for t, neg in (
    ("would you call this shape a {shape}?", False),
    ("is the figure a {shape}?", False),
    ("is the drawn object shaped like a {shape}?", False),
    ("does the picture show a {shape}?", False),
    ("is the {color} figure a {shape}?", False),
    ("can a {shape} be seen in the image?", False),
    ("is the shape in the picture a {shape}?", False),
    ("is a {shape} drawn here?", False),
    ("does the image depict a {shape}?", False),
    ("is it a {shape} that is shown?", False),
    ("is the figure something other than a {shape}?", True),
    ("is the figure not a {shape}?", True),
)] + [Paraphrase("negation", t, True, asks) for t, asks in (
    # yes/no questions whose answer is the flip of the question without the negation; the image
    # shows one shape in one colour, so "is there no {shape}" is "no" exactly when it is the shape
    ("is the {shape} not {color}?", "yes/no color"),
    ("does the {shape} lack the colour {color}?", "yes/no color"),
    ("is there no {color} figure in the picture?", "yes/no color"),
    ("would it be wrong to call the figure {color}?", "yes/no color"),
    ("is {color} absent from the image?", "yes/no color"),
    ("is the colour of the {shape} anything but {color}?", "yes/no color"),
    ("is it true that the object is not {color}?", "yes/no color"),
    ("is the colour {color} missing from this picture?", "yes/no color"),
    ("is there no {shape} in the image?", "yes/no shape"),
    ("is the figure not shaped like a {shape}?", "yes/no shape"),
    ("does the picture lack a {shape}?", "yes/no shape"),
    ("is the {color} object not a {shape}?", "yes/no shape"),
    ("is a {shape} absent from the drawing?", "yes/no shape"),
    ("would it be wrong to call the drawn figure a {shape}?", "yes/no shape"),
    ("is the drawn shape anything but a {shape}?", "yes/no shape"),
    ("can no {shape} be seen here?", "yes/no shape"),
)] + [Paraphrase("new construction", t, False, asks) for t, asks in (
    # the attribute or the object where no training template puts it: fronted as a topic, asked
    # in place, in a cleft, after a statement
    ("the shape in this picture is coloured how?", "color"),
    ("of what colour is the figure shown?", "color"),
    ("{shape}: what colour?", "color"),
    ("a {shape} is drawn. in which colour?", "color"),
    ("the figure drawn here is a what?", "shape"),
    ("it is {color}, but which shape is it?", "shape"),
    ("of which shape is the object?", "shape"),
    ("drawn in {color}, the figure is what shape?", "shape"),
    ("{color}: is that the colour of the figure?", "yes/no color"),
    ("the figure, is it {color}?", "yes/no color"),
    ("is it in {color} that the shape is drawn?", "yes/no color"),
    ("yes or no: the {shape} is {color}?", "yes/no color"),
    ("a {shape}: is that what is drawn?", "yes/no shape"),
    ("the drawn figure, is it a {shape}?", "yes/no shape"),
    ("yes or no: the picture shows a {shape}?", "yes/no shape"),
    ("is it as a {shape} that the {color} figure is drawn?", "yes/no shape"),
)]


def wordings(paraphrases=PARAPHRASES) -> list[str]:
    """Every evaluation wording's template, with its {color} / {shape} slots: what generated
    training rewordings must never equal (``data.held_out_wordings`` of configs/data/easy_vqa.yaml
    names this function; vljepa.data.rewordings.check_disjoint compares)."""
    return [p.template for p in paraphrases]

# ---- the check: no rewording is a training question or an instance of a training template ----

# spelling variants count as the same word, so "what colour is the shape?" is a training question
_SAME_WORD = {"colour": "color", "colours": "colors", "coloured": "colored", "grey": "gray",
              "an": "a"}
# colour / shape words beyond easy-VQA's, so "is there an orange shape?" is a template instance
_MORE_COLORS = {"orange", "purple", "pink", "white", "violet", "cyan", "magenta", "grey"}
_MORE_SHAPES = {"square", "oval", "ellipse", "pentagon", "hexagon", "star", "diamond"}


def easy_vqa_vocab() -> tuple[list[str], list[str]]:
    """The easy-VQA colours (8) and shapes (3): its answers other than yes/no, split by the
    library's list of shapes."""
    import easy_vqa as ev
    answers = ev.get_answers()
    colors = sorted(a for a in answers if a not in EASY_VQA_SHAPES and a not in ("yes", "no"))
    return colors, sorted(a for a in answers if a in EASY_VQA_SHAPES)


def normalize(text: str) -> str:
    """Lowercase words (slots like {color} kept), punctuation and spacing dropped, British
    spellings and "an" mapped to one form."""
    return " ".join(_SAME_WORD.get(w, w) for w in re.findall(r"[a-z{}]+", text.lower()))


def to_template(text: str, colors, shapes) -> str:
    """``normalize(text)`` with each colour word replaced by {color}, each shape word by {shape}."""
    colors, shapes = set(colors) | _MORE_COLORS, set(shapes) | _MORE_SHAPES
    return " ".join("{color}" if w in colors else "{shape}" if w in shapes else w
                    for w in normalize(text).split())


def check_paraphrases(paraphrases=PARAPHRASES, train_questions=None) -> None:
    """Raise ValueError naming the first bad wording: one with an instantiation equal to a
    training question or a template equal to a training template (after :func:`normalize`), an
    unknown type, slot or ``asks``, a yes/no wording without the slot it asks about, a negated
    wording that does not ask yes/no, a "negation" wording that is not negated, or a duplicate.
    ``train_questions`` defaults to easy-VQA's."""
    import easy_vqa as ev
    colors, shapes = easy_vqa_vocab()
    if train_questions is None:
        train_questions = ev.get_train_questions()[0]
    train = {normalize(q): q for q in train_questions}
    train_templates = {to_template(q, colors, shapes) for q in train_questions}
    seen = {}
    for p in paraphrases:
        slots = set(re.findall(r"{(\w*)}", p.template))
        if not slots <= {"color", "shape"}:
            raise ValueError(f"paraphrase {p.template!r}: unknown slot(s) "
                             f"{slots - {'color', 'shape'}}")
        for c in colors:
            for s in shapes:
                q = normalize(p.template.format(color=c, shape=s))
                if q in train:
                    raise ValueError(f"paraphrase {p.template!r} is the training question "
                                     f"{train[q]!r}")
        template = to_template(p.template, colors, shapes)
        if template in train_templates:
            raise ValueError(f"paraphrase {p.template!r} is an instance of the training template "
                             f"{template!r}")
        if p.type not in TYPES:
            raise ValueError(f"paraphrase {p.template!r}: type {p.type!r} is not one of {TYPES}")
        if p.kind not in ASKS or (p.asks and p.type in ASKS and p.asks != p.type):
            raise ValueError(f"paraphrase {p.template!r}: it asks {p.kind!r}, not one of "
                             f"{ASKS}, or not its own type")
        if p.kind.startswith("yes/no") and p.kind.split()[1] not in slots:
            raise ValueError(f"paraphrase {p.template!r}: a {p.kind!r} wording needs a "
                             f"{{{p.kind.split()[1]}}} slot")
        if p.negated and not p.kind.startswith("yes/no"):
            raise ValueError(f"paraphrase {p.template!r}: only yes/no wordings can be negated")
        if p.type == "negation" and not p.negated:
            raise ValueError(f"paraphrase {p.template!r}: a negation wording must be negated")
        if normalize(p.template) in seen:
            raise ValueError(f"paraphrase {p.template!r} repeats {seen[normalize(p.template)]!r}")
        seen[normalize(p.template)] = p.template


# ---- data: test images with their true colour and shape, and the questions asked of them ----

def easy_vqa_test_images() -> list[dict]:
    """All 1,000 easy-VQA test images, read with the library's reader: dicts with path, color,
    shape (None where the questions leave it open) and questions (its test questions as
    (question, answer, type) triples, yes/no split into "yes/no color" and "yes/no shape")."""
    colors, shapes = easy_vqa_vocab()
    ds = easy_vqa("test")  # image path, question, answer, question_type (color / shape / yes/no)
    by_path: dict[str, list] = defaultdict(list)
    for im, q, a, t in zip(ds["image"], ds["question"], ds["answer"], ds["question_type"]):
        if t == "yes/no":
            t = "yes/no shape" if set(re.findall(r"[a-z]+", q)) & set(shapes) else "yes/no color"
        by_path[im["path"]].append((q, a, t))
    return [{"path": path, **true_values(qs, colors, shapes), "questions": qs}
            for path, qs in sorted(by_path.items())]


def sample_images(images: list[dict], n_images: int = 300, seed: int = 0) -> list[dict]:
    """``n_images`` of ``images`` whose colour and shape are both known, sampled with ``seed``.

    Raises ValueError when fewer are known (naming how many and which are not).
    """
    known = [im for im in images if im["color"] and im["shape"]]
    if not 1 <= n_images <= len(known):
        unknown = [Path(im["path"]).name for im in images if not (im["color"] and im["shape"])]
        raise ValueError(f"n_images must be in [1, {len(known)}], got {n_images}: only {len(known)}"
                         f" of {len(images)} test images have a colour and a shape their questions "
                         f"determine (not e.g. {unknown[:5]})")
    return random.Random(seed).sample(known, n_images)


def paraphrase_items(images: list[dict], paraphrases=PARAPHRASES, seed: int = 0) -> list[Item]:
    """Every wording asked of every image. A yes/no wording asks about the true value on a seeded
    half of the images and about another value on the rest."""
    colors, shapes = easy_vqa_vocab()
    items = []
    for p in paraphrases:
        rng = random.Random(f"{seed}/{p.template}")
        asks_truth = set(rng.sample(range(len(images)), (len(images) + 1) // 2))
        for i, im in enumerate(images):
            slots = {"color": im["color"], "shape": im["shape"]}
            gold = im.get(p.kind)
            if p.kind.startswith("yes/no"):
                kind = p.kind.split()[1]
                if i not in asks_truth:
                    slots[kind] = rng.choice([v for v in (colors if kind == "color" else shapes)
                                              if v != slots[kind]])
                gold = "yes" if (i in asks_truth) != p.negated else "no"
            items.append(Item(i, p.template.format(**slots), gold, p.type, p.template))
    return items


def original_items(images: list[dict]) -> list[Item]:
    """The images' own easy-VQA test questions."""
    return [Item(i, q, a, t, q) for i, im in enumerate(images) for q, a, t in im["questions"]]


# ---- answering and scoring ----

@torch.no_grad()
def answer_items(model, paths: list[str], items: list[Item], candidates: list[str],
                 batch_size: int = 512) -> list[str]:
    """What ``model.answer(images, questions, candidates)`` answers for every item, but each
    image goes through the X-encoder once, not once per question (on a CPU an image costs ~30x a
    question through the predictor). Checked against ``model.answer`` itself on 8 items.

    Raises RuntimeError if the two disagree.
    """
    visual = model.visual_tokens(paths)  # (n_images, N, Dx)
    cand = model.embed_text(candidates)  # (C, D), unit norm
    answers = []
    for b in range(0, len(items), batch_size):
        chunk = items[b:b + batch_size]
        ids, mask = model.tokenize_queries([it.question for it in chunk])
        pred = F.normalize(model(visual[[it.image for it in chunk]], ids, mask), dim=-1)
        answers += [candidates[j] for j in (pred @ cand.T).argmax(1).tolist()]
    step = max(1, len(items) // 8)
    probe, mine = items[::step][:8], answers[::step][:8]
    ref, _ = model.answer([paths[it.image] for it in probe], [it.question for it in probe],
                          candidates)
    if ref != mine:
        raise RuntimeError(f"answers from cached visual tokens {mine} differ from "
                           f"model.answer's {ref}")
    return answers


def score(items: list[Item], answers: list[str]) -> dict:
    """Accuracy overall, overall without the "negation" type, per type (and their mean), per
    wording (with its most frequent wrong answer and how often it was given), with counts."""
    by_type, by_wording = defaultdict(list), defaultdict(list)
    for it, a in zip(items, answers):
        by_type[it.type].append(a == it.gold)
        by_wording[(it.type, it.wording)].append((a == it.gold, a))
    acc = lambda xs: sum(xs) / len(xs)  # noqa: E731
    per_type = {t: acc(by_type[t]) for t in TYPES if by_type[t]}
    return {
        "overall": acc([a == it.gold for it, a in zip(items, answers)]),
        "overall_without_negation": acc([a == it.gold for it, a in zip(items, answers)
                                         if it.type != "negation"]),
        "mean_over_types": sum(per_type.values()) / len(per_type),
        "per_type": per_type,
        "n": {"all": len(items), **{t: len(by_type[t]) for t in per_type}},
        "per_wording": [{"type": t, "wording": w, "accuracy": acc([c for c, _ in r]), "n": len(r),
                         "top_wrong": wrong.most_common(1)[0] if wrong else None}
                        for (t, w), r in by_wording.items()
                        for wrong in [Counter(a for c, a in r if not c)]],
    }


def evaluate(model, n_images: int = 300, seed: int = 0, paraphrases=PARAPHRASES,
             images: list[dict] | None = None, batch_size: int = 512) -> dict:
    """Original vs paraphrased accuracy of one model on ``n_images`` test images (or ``images``
    from :func:`sample_images`): {"original": score, "paraphrase": score, "candidates": ...}."""
    if not hasattr(model, "answer"):
        raise TypeError(f"{type(model).__name__} has no answer(): only VL-JEPA models are scored")
    if images is None:
        images = sample_images(easy_vqa_test_images(), n_images, seed)
    if model.answers:
        candidates, source = list(model.answers), "saved vocabulary"
    else:
        import easy_vqa as ev
        candidates, source = ev.get_answers(), "easy-VQA answers"
    paths = [im["path"] for im in images]
    orig, para = original_items(images), paraphrase_items(images, paraphrases, seed)
    answers = answer_items(model, paths, orig + para, candidates, batch_size)
    out = {"original": score(orig, answers[:len(orig)]),
           "paraphrase": score(para, answers[len(orig):]),
           "candidates": {"source": source, "n": len(candidates)}, "n_images": len(images)}
    del out["original"]["per_wording"]  # one row per test question: too many to list
    return out


# ---- the text encoder's own reading: nearest training question by sentence embedding ----

def meaning(question: str, colors, shapes) -> tuple:
    """What an easy-VQA training question asks: ("color",), ("shape",), or ("yes/no color" |
    "yes/no shape", value, negated). Its templates ask an open colour question with the word
    "color", any other "what" question asks the shape, and negate with "not" / "no"."""
    words = normalize(question).split()
    if words[0] == "what":
        return ("color",) if "color" in words else ("shape",)
    negated = "not" in words or "no" in words
    color = [w for w in words if w in colors]
    if color:
        return ("yes/no color", color[0], negated)
    return ("yes/no shape", next(w for w in words if w in shapes), negated)


def paraphrase_meaning(p: Paraphrase, color: str, shape: str) -> tuple:
    """What one instantiation of a rewording asks, in :func:`meaning`'s terms."""
    if p.kind in ("color", "shape"):
        return (p.kind,)
    return (p.kind, color if p.kind == "yes/no color" else shape, p.negated)


@torch.no_grad()
def text_neighbours(encoder: str = "all-MiniLM-L6-v2", paraphrases=PARAPHRASES) -> dict:
    """How often the text encoder itself reads a rewording as a training question of the same
    meaning: every instantiation of every rewording (each colour x shape) is matched to its
    nearest distinct easy-VQA training question by cosine of sentence embeddings
    (sentence-transformers' own ``encode``: for all-MiniLM-L6-v2, the mean over tokens of the
    last hidden states). A ceiling-like reference for a predictor that reads questions through
    that encoder.

    Returns {"overall": fraction, "per_wording": [{"type", "wording", "same_meaning",
    "example_miss": (rewording, nearest training question) or None}]}."""
    import easy_vqa as ev
    from sentence_transformers import SentenceTransformer

    from vljepa.encoders import resolve_st_name
    colors, shapes = easy_vqa_vocab()
    model = SentenceTransformer(resolve_st_name(encoder), device="cpu")

    def embed(texts):  # (B, W) unit vectors
        return model.encode(texts, convert_to_tensor=True, normalize_embeddings=True)

    train = sorted(set(ev.get_train_questions()[0]))
    train_meaning = [meaning(q, colors, shapes) for q in train]
    train_emb = embed(train)  # (T, W)
    rows, hits = [], []
    for p in paraphrases:
        asked = [(p.template.format(color=c, shape=s), paraphrase_meaning(p, c, s))
                 for c in colors for s in shapes]
        nearest = (embed([q for q, _ in asked]) @ train_emb.T).argmax(1).tolist()
        same = [train_meaning[j] == m for j, (_, m) in zip(nearest, asked)]
        miss = next(((q, train[j]) for j, (q, _), ok in zip(nearest, asked, same) if not ok), None)
        rows.append({"type": p.type, "wording": p.template, "same_meaning": sum(same) / len(same),
                     "example_miss": miss})
        hits += same
    return {"encoder": encoder, "overall": sum(hits) / len(hits), "per_wording": rows}


# ---- output ----

def tables(results: dict) -> tuple[list[list[str]], list[list[str]]]:
    """Rows of the summary table (type x model: original, paraphrase) and of the per-wording
    table (worst first, by the first model), each starting with its header."""
    names = list(results)
    head = ["type"] + [f"{n} {k}" for n in names for k in ("original", "paraphrase")]
    summary = [head]
    for t in (*TYPES, "mean over types", "overall", "overall without negation"):
        row = [t]
        for n in names:
            for k in ("original", "paraphrase"):
                r = results[n][k]
                v = r["per_type"].get(t) if t in TYPES else r[t.replace(" ", "_")]
                row.append("-" if v is None else f"{v:.3f}")
        summary.append(row)
    first = results[names[0]]["paraphrase"]["per_wording"]
    acc = {n: {(w["type"], w["wording"]): w for w in results[n]["paraphrase"]["per_wording"]}
           for n in names}
    wordings = [head[:1] + ["wording"] + [f"{n} (top wrong answer)" for n in names]]
    for w in sorted(first, key=lambda w: w["accuracy"]):
        key = (w["type"], w["wording"])
        wordings.append([w["type"], w["wording"]] + [
            f"{acc[n][key]['accuracy']:.3f}" + (" ({} x{})".format(*acc[n][key]["top_wrong"])
                                                if acc[n][key]["top_wrong"] else "")
            for n in names])
    return summary, wordings


def text_table(rows: list[list[str]]) -> str:
    """Rows as aligned plain text."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def markdown_table(rows: list[list[str]]) -> str:
    """Rows as a markdown table."""
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([lines[0], "|" + "---|" * len(rows[0])] + lines[1:])


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (the library's temp-file-and-rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def parse_models(specs: list[str]) -> dict[str, str]:
    """MODEL or NAME=MODEL -> {name: path}. A relative path missing from the current directory is
    looked up from the repo root; with no specs, the released checkpoint."""
    models = {}
    for spec in specs or [str(RELEASED)]:
        name, sep, path = spec.partition("=")
        if not sep or "/" in name or not name:
            name, path = Path(spec.rstrip("/")).name, spec
        if not Path(path).exists() and (ROOT / path).exists():
            path = str(ROOT / path)
        if name in models:
            raise ValueError(f"two models are named {name!r}: name them, e.g. old=DIR new=DIR")
        models[name] = path
    return models


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("models", nargs="*",
                    help="MODEL or NAME=MODEL (default: the released checkpoint)")
    ap.add_argument("--n-images", type=int, default=300, help="easy-VQA test images (of 1,000)")
    ap.add_argument("--seed", type=int, default=0, help="image sample and yes/no slot values")
    ap.add_argument("--out", default=str(ROOT / "results" / "paraphrase"), help="output directory")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--card", action="store_true",
                    help="also put the per-type table into the (one) model's card: its "
                         "config.json and README.md are rewritten, its weights unchanged")
    ap.add_argument("--text-neighbours", action="store_true",
                    help="also report how often all-MiniLM-L6-v2's nearest training question "
                         "(by sentence embedding) has the rewording's meaning")
    args = ap.parse_args(argv)
    total = Stopwatch()
    if args.threads:
        torch.set_num_threads(args.threads)
    check_paraphrases()
    models = parse_models(args.models)
    pool = easy_vqa_test_images()
    images = sample_images(pool, args.n_images, args.seed)
    n_known = sum(bool(im["color"] and im["shape"]) for im in pool)
    results = {}
    for name, path in models.items():
        with Stopwatch() as watch:
            model = vljepa.load(path)
            results[name] = {"path": path, **evaluate(model, seed=args.seed, images=images,
                                                      batch_size=args.batch_size)}
        results[name]["seconds"] = round(watch.seconds, 1)
    summary, wordings = tables(results)
    n_orig = next(iter(results.values()))["original"]["n"]["all"]
    candidates = ", ".join(f"{n}: {r['candidates']['source']} ({r['candidates']['n']})"
                           for n, r in results.items())
    info = (f"{len(images)} easy-VQA test images (seed {args.seed}; of the {n_known} of "
            f"{len(pool)} whose questions determine their colour and shape): {n_orig} original "
            f"questions, {len(PARAPHRASES)} paraphrases x {len(images)} = "
            f"{len(PARAPHRASES) * len(images)} questions; candidates: {candidates}")
    neighbours = neighbour_text = None
    if args.text_neighbours:
        neighbours = text_neighbours()
        rows = [["type", "wording", "same meaning", "example miss (rewording -> nearest)"]] + [
            [r["type"], r["wording"], f"{r['same_meaning']:.2f}",
             " -> ".join(r["example_miss"]) if r["example_miss"] else ""]
            for r in sorted(neighbours["per_wording"], key=lambda r: r["same_meaning"])]
        neighbour_text = (f"nearest training question by {neighbours['encoder']} sentence "
                          f"embedding has the rewording's meaning: {neighbours['overall']:.3f} "
                          f"of instantiations", rows)
    seconds = round(total.seconds, 1)
    print(info + "\n\n" + text_table(summary) + "\n\n" + text_table(wordings))
    if neighbours:
        print("\n" + neighbour_text[0] + "\n\n" + text_table(neighbour_text[1]))
    out = Path(args.out)
    write_atomic(out / "results.json", json.dumps(
        {"n_images": len(images), "seed": args.seed, "n_known_images": n_known,
         "n_paraphrases": len(PARAPHRASES), "models": results, "text_neighbours": neighbours,
         "seconds": seconds}, indent=2) + "\n")
    write_atomic(out / "results.md", "# Paraphrase robustness on easy-VQA\n\n" + info + "\n\n"
                 + markdown_table(summary) + "\n\n## Per wording (worst first)\n\n"
                 + markdown_table(wordings) + "\n"
                 + (f"\n## The text encoder's own reading\n\n{neighbour_text[0]}\n\n"
                    + markdown_table(neighbour_text[1]) + "\n" if neighbours else ""))
    print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}; wall time {seconds:.1f} s")
    if args.card:
        if len(models) != 1:
            raise SystemExit(f"--card takes one model, got {len(models)}")
        [(name, path)] = models.items()
        write_card(path, markdown_table(summary), info, args)
        print(f"wrote the table into {path}'s model card")
    return results


def write_card(path: str, table: str, info: str, args) -> None:
    """Put ``table`` (with ``info`` and the command) into the card of the model saved at
    ``path``: reloaded and saved again in place (atomic writes), so config.json keeps it."""
    model = vljepa.load(path)
    command = (f"python eval/paraphrase.py MODEL --n-images {args.n_images} --seed {args.seed}")
    body = (f"Questions in wordings no training question has ({len(PARAPHRASES)} hand-written "
            f"wordings in six types, negations with the answer flipped): {info}.\n\n{table}\n\n"
            f"```bash\n{command}\n```")
    model.card = {**(model.card or {}), "evaluations": {
        **((model.card or {}).get("evaluations") or {}), "Reworded questions": body}}
    model.save_pretrained(path)


if __name__ == "__main__":
    main()
