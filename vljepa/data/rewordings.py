"""Generated training rewordings of easy-VQA questions: a small grammar over what a question
means, so a model can learn to read questions beyond easy-VQA's couple of dozen templates.

A question's meaning is the attribute it asks about (colour or shape), the asked value, and its
form: a wh question ("what colour is the thing here?", answer: the value), a yes/no question
("is the symbol in view {color}?") or a negated yes/no question ("is there no {color} item
here?"), whose answer is the flip of the yes/no one. The grammar writes each form as frames
(direct question, imperative, embedded, tag, "true or false", topic first, in place) around a
noun phrase (a referent noun, optionally the other attribute's value, optionally a place), all
written from the meaning alone: this module reads no evaluation wording. Polarity is also
carried by words other than "not" and "no": a frame may ask whether it is right / wrong (correct
/ incorrect, accurate / a mistake, untrue) to say the value holds, in both polarities, so that
the evaluative word, not the frame, decides the answer. Every frame x noun
phrase is a :class:`Rewording` template with {color} / {shape} slots; :func:`templates` keeps a
seeded sample per form, and :func:`rewordings_for` fills them for one training question.

    ts = templates(["blue", "red"], ["circle", "triangle"], seed=0, per_form=20)
    m = Meaning("color", "red", yes_no=True, holds=False, other="circle")
    rewordings_for(m, ts)  # [(question, answer)]: "is the circle here not red?" -> "yes"

:func:`check_disjoint` raises when generated rewordings equal held-out (evaluation) wordings,
as templates or filled in with any colour and shape; the training data path
(vljepa.training.datamodules.VQADataModule, ``rewordings > 0``) calls it with the wordings its
config names.
"""
from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

FORMS = ("wh", "yes/no", "negated")
ATTRIBUTES = ("color", "shape")

# ---- the grammar: noun phrases and frames, per attribute and form ----

# the referent. "shape" is not a referent of a shape question ("what shape is the shape?")
_NOUNS = {"color": ("shape", "figure", "object", "thing", "item", "symbol", "graphic"),
          "shape": ("figure", "object", "thing", "item", "symbol", "graphic")}
# Two rules of the grammar: a definite noun phrase always carries a place ("the figure here",
# never the bare "the figure"), and places and scenes are adverbial or demonstrative ("in view",
# "this photo", never "the image"). Generated wordings so stay apart from the bare wordings a
# hand-written test is likeliest to use, and from easy-VQA's own "... in the image?".
_PLACES = (" here", " in this image", " in this picture", " in this photo", " on the canvas",
           " in view", " on display", " in this scene")
_SCENES = ("this image", "this picture", "this photo", "this scene", "this drawing")

# Frames. {np}: a definite noun phrase ("the thing here", "the {shape} in view"); {noun} and
# {place} for an indefinite one; {scene}: the whole picture. {color} / {shape} stay slots.
_FRAMES = {
    ("color", "wh"): (
        "what colour is {np}?",
        "what is the colour of {np}?",
        "which colour is {np}?",
        "what colour does {np} have?",
        "tell me the colour of {np}.",
        "can you tell me what colour {np} is?",
        "do you know the colour of {np}?",
        "as for {np}, what colour is it?",
        "{np} is what colour?",
        "what colour has been used for {np}?",
        "in which colour is {np} drawn?",
        "give the colour of {np}.",
        "what shade is {np}?",
        "what hue does {np} have?",
    ),
    ("shape", "wh"): (
        "what shape is {np}?",
        "which shape is {np}?",
        "what is the shape of {np}?",
        "what kind of shape is {np}?",
        "what form does {np} have?",
        "tell me the shape of {np}.",
        "can you tell me what shape {np} is?",
        "as for {np}, what shape is it?",
        "{np} has what shape?",
        "what geometric form is {np}?",
        "what is {np} shaped like?",
        "name the shape of {np}.",
    ),
    ("color", "yes/no"): (
        "is {np} {{color}}?",
        "is {np} coloured {{color}}?",
        "is {np} {{color}} in colour?",
        "does {np} look {{color}}?",
        "is the colour of {np} {{color}}?",
        "is {np} drawn in {{color}}?",
        "would you say {np} is {{color}}?",
        "{np} is {{color}}, right?",
        "true or false: {np} is {{color}}.",
        "is {np} filled with {{color}}?",
        "do you see a {{color}} {noun}{place}?",
        "is there a {{color}} {noun}{place}?",
        "does {scene} show a {{color}} {noun}?",
        "is a {{color}} {noun} visible{place}?",
        "is it right to say {np} is {{color}}?",
        "would it be correct to describe {np} as {{color}}?",
        "is it accurate to say that {np} is {{color}}?",
    ),
    ("shape", "yes/no"): (
        "is {np} a {{shape}}?",
        "is {np} shaped like a {{shape}}?",
        "does {np} look like a {{shape}}?",
        "is {np} in the shape of a {{shape}}?",
        "would you say {np} is a {{shape}}?",
        "{np} is a {{shape}}, right?",
        "true or false: {np} is a {{shape}}.",
        "is the shape of {np} a {{shape}}?",
        "do you see a {{shape}}{place}?",
        "is there a {{shape}}{place}?",
        "does {scene} show a {{shape}}?",
        "is a {{shape}} visible{place}?",
        "can you spot a {{shape}}{place}?",
        "is a {{color}} {{shape}} visible{place}?",
        "is it right to say {np} is a {{shape}}?",
        "would it be correct to describe {np} as a {{shape}}?",
        "is it accurate to say that {np} is a {{shape}}?",
    ),
    ("color", "negated"): (
        "is {np} not {{color}}?",
        "is {np} not coloured {{color}}?",
        "is the colour of {np} not {{color}}?",
        "is {np} some colour other than {{color}}?",
        "is it false that {np} is {{color}}?",
        "{np} is not {{color}}, right?",
        "true or false: {np} is not {{color}}.",
        "does {np} have a colour other than {{color}}?",
        "is {{color}} not the colour of {np}?",
        "is there no {{color}} {noun}{place}?",
        "does {scene} show no {{color}} {noun}?",
        "is no {{color}} {noun} visible{place}?",
        "is it wrong to say {np} is {{color}}?",
        "would it be incorrect to describe {np} as {{color}}?",
        "is it a mistake to say that {np} is {{color}}?",
        "is it untrue that {np} is {{color}}?",
        "would you be mistaken to think {np} is {{color}}?",
    ),
    ("shape", "negated"): (
        "is {np} not a {{shape}}?",
        "is {np} not shaped like a {{shape}}?",
        "is it false that {np} is a {{shape}}?",
        "{np} is not a {{shape}}, right?",
        "true or false: {np} is not a {{shape}}.",
        "is the shape of {np} not a {{shape}}?",
        "does {np} not look like a {{shape}}?",
        "does {scene} show no {{shape}}?",
        "is no {{shape}} visible{place}?",
        "is there no {{shape}}{place}?",
        "can you spot no {{shape}}{place}?",
        "is a {{color}} {{shape}} absent{place}?",
        "is it wrong to say {np} is a {{shape}}?",
        "would it be incorrect to describe {np} as a {{shape}}?",
        "is it a mistake to say that {np} is a {{shape}}?",
        "is it untrue that {np} is a {{shape}}?",
        "would you be mistaken to think {np} is a {{shape}}?",
    ),
}


@dataclass(frozen=True)
class Rewording:
    """One generated template. ``template`` holds the slot of the attribute it ``asks`` about
    when it asks yes/no (that slot gets the asked value), and possibly the other attribute's slot
    (filled with the image's own value). ``form``: one of :data:`FORMS`."""
    template: str
    asks: str
    form: str

    @property
    def slots(self) -> set[str]:
        """The slots the template holds: a subset of {"color", "shape"}."""
        return set(re.findall(r"{(\w+)}", self.template))

    @property
    def negated(self) -> bool:
        return self.form == "negated"


def _noun_phrases(asks: str) -> list[str]:
    """Definite noun phrases for a question about ``asks``: a referent noun, or the other
    attribute's value (a slot), at a place."""
    other = "shape" if asks == "color" else "color"
    heads = [f"the {n}" for n in _NOUNS[asks]]
    heads += ["the {shape}"] if other == "shape" else [f"the {{color}} {n}" for n in _NOUNS[asks]]
    return [h + p for h in heads for p in _PLACES]


def grammar() -> list[Rewording]:
    """Every template the grammar makes, deduplicated, in a fixed order (attribute, form, then
    frame by frame)."""
    out: dict[str, Rewording] = {}
    for (asks, form), frames in _FRAMES.items():
        nps = _noun_phrases(asks)
        for frame in frames:
            fields = set(re.findall(r"(?<!{){(\w+)}(?!})", frame))
            choices = {"np": nps if "np" in fields else [""],
                       "noun": _NOUNS[asks] if "noun" in fields else [""],
                       "place": _PLACES if "place" in fields else [""],
                       "scene": _SCENES if "scene" in fields else [""]}
            for np, noun, place, scene in itertools.product(*choices.values()):
                t = frame.format(np=np, noun=noun, place=place, scene=scene)
                if t not in out:
                    out[t] = Rewording(t, asks, form)
    return list(out.values())


# ---- comparing wordings: spelling variants and articles do not make a wording new ----

_SAME_WORD = {"colour": "color", "colours": "colors", "coloured": "colored", "grey": "gray"}
_ARTICLES = {"a", "an", "the"}


def wording_key(text: str, colors: Iterable[str] = (), shapes: Iterable[str] = ()) -> str:
    """``text`` lowercased, punctuation dropped, British spellings mapped to American, articles
    dropped, and each word of ``colors`` / ``shapes`` replaced by its slot: two wordings with
    the same key count as the same wording (stricter than equality)."""
    colors, shapes = set(colors), set(shapes)
    words = (_SAME_WORD.get(w, w) for w in re.findall(r"[a-z{}]+", text.lower()))
    return " ".join("{color}" if w in colors else "{shape}" if w in shapes else w
                    for w in words if w not in _ARTICLES)


def templates(colors: Sequence[str], shapes: Sequence[str], seed: int = 0,
              per_form: int | None = 80, avoid: Iterable[str] = ()) -> list[Rewording]:
    """A seeded sample of at most ``per_form`` templates for each (attribute, form) of the
    :func:`grammar` (None: all), leaving out any whose key (:func:`wording_key`) equals that of
    a question of ``avoid`` (e.g. the training questions, so every rewording is new). The same
    arguments give the same list.

    Raises ValueError on an empty ``colors`` / ``shapes`` or a ``per_form`` below 1.
    """
    if not colors or not shapes:
        raise ValueError(f"need colours and shapes to fill the slots, got {colors!r} and "
                         f"{shapes!r}")
    if per_form is not None and per_form < 1:
        raise ValueError(f"per_form must be >= 1 or None, got {per_form}")
    avoided = {wording_key(q, colors, shapes) for q in avoid}
    out = []
    for asks, form in itertools.product(ATTRIBUTES, FORMS):
        pool = [r for r in grammar() if (r.asks, r.form) == (asks, form)
                and wording_key(r.template, colors, shapes) not in avoided]
        if per_form is not None and len(pool) > per_form:
            keep = set(random.Random(f"{seed}/{asks}/{form}").sample(range(len(pool)), per_form))
            pool = [r for i, r in enumerate(pool) if i in keep]
        out += pool
    return out


def fill(rewording: Rewording, color: str, shape: str) -> str:
    """The question ``rewording`` asks with its slots filled."""
    return rewording.template.format(color=color, shape=shape)


def filled(rewordings: Iterable[Rewording], colors: Sequence[str],
           shapes: Sequence[str]) -> set[str]:
    """Every question the templates ask, over all colours x shapes."""
    return {fill(r, c, s) for r in rewordings for c in colors for s in shapes}


# ---- what a training question means, and its rewordings with their answers ----

class Meaning(NamedTuple):
    """What an easy-VQA question asks of its image.

    asks: "color" or "shape". value: the asked value (a wh question's answer; the value a yes/no
    question names). yes_no: a yes/no question (else wh). holds: the image has ``value`` (always
    True for a wh question). other: the image's value of the other attribute, None if unknown.
    """
    asks: str
    value: str
    yes_no: bool
    holds: bool
    other: str | None = None


def question_meaning(question: str, answer: str, colors: Sequence[str], shapes: Sequence[str],
                     other: str | None = None) -> Meaning:
    """The :class:`Meaning` of an easy-VQA question with its answer: a colour or shape answer
    is a wh question about that attribute; a yes/no answer is about the colour or shape the
    question names, negated when it holds "not" or "no". ``other``: the image's value of the
    attribute not asked about, if known.

    Raises ValueError for a yes/no question that names no colour or shape, or an answer that
    is none of yes, no, a colour or a shape.
    """
    words = re.findall(r"[a-z]+", question.lower())
    if answer in colors:
        return Meaning("color", answer, False, True, other)
    if answer in shapes:
        return Meaning("shape", answer, False, True, other)
    if answer not in ("yes", "no"):
        raise ValueError(f"answer {answer!r} of {question!r} is none of yes, no, "
                         f"{list(colors)} or {list(shapes)}")
    named = [("color", w) for w in words if w in colors] + \
            [("shape", w) for w in words if w in shapes]
    if not named:
        raise ValueError(f"yes/no question {question!r} names no colour or shape")
    asks, value = named[0]
    negated = bool({"not", "no"} & set(words))
    return Meaning(asks, value, True, (answer == "yes") != negated, other)


def answer_of(rewording: Rewording, meaning: Meaning) -> str:
    """The correct answer to ``rewording`` asked with ``meaning``'s values: the value for a wh
    question; for a yes/no one "yes" when the value holds, flipped when negated."""
    if not meaning.yes_no:
        return meaning.value
    return "yes" if meaning.holds != rewording.negated else "no"


def rewordings_for(meaning: Meaning, rewordings: Sequence[Rewording]) -> list[tuple[str, str]]:
    """Every (question, answer) of ``rewordings`` that asks what ``meaning`` asks: a wh
    question's wh templates, a yes/no question's yes/no and negated templates, each about the
    same attribute; a template with the other attribute's slot only when ``meaning.other`` is
    known."""
    out = []
    other = "shape" if meaning.asks == "color" else "color"
    for r in rewordings:
        if r.asks != meaning.asks or (r.form == "wh") == meaning.yes_no:
            continue
        if other in r.slots and meaning.other is None:
            continue
        values = {meaning.asks: meaning.value, other: meaning.other or ""}
        out.append((fill(r, values["color"], values["shape"]), answer_of(r, meaning)))
    return out


# ---- disjointness from held-out wordings ----

def check_disjoint(rewordings: Iterable[Rewording | str], held_out: Iterable[str],
                   colors: Sequence[str], shapes: Sequence[str]) -> None:
    """Raise ValueError naming the first generated wording that equals a held-out one (both
    templates with {color} / {shape} slots): as templates (:func:`wording_key`, which maps
    spelling variants, drops articles and reads colour / shape words as slots) or filled in
    with any colour x shape (the same key without the slot mapping)."""
    gen = [r.template if isinstance(r, Rewording) else r for r in rewordings]
    held = list(held_out)
    held_keys = {wording_key(h, colors, shapes): h for h in held}
    for g in gen:
        if (k := wording_key(g, colors, shapes)) in held_keys:
            raise ValueError(f"generated rewording {g!r} is the held-out wording "
                             f"{held_keys[k]!r} (template {k!r})")
    held_filled = {wording_key(h.format(color=c, shape=s)): h
                   for h in held for c in colors for s in shapes}
    for g in gen:
        for c in colors:
            for s in shapes:
                if (k := wording_key(g.format(color=c, shape=s))) in held_filled:
                    raise ValueError(f"generated rewording {g!r} asks {k!r}, as the held-out "
                                     f"wording {held_filled[k]!r} does")


# ---- python -m vljepa.data.rewordings: how many, and examples ----

def summary(seed: int = 0, per_form: int | None = 80, examples: int = 3) -> str:
    """How many templates and filled questions the grammar makes, all and kept (``seed``,
    ``per_form``; the training questions avoided), with ``examples`` filled questions and their
    answers per attribute x form, for easy-VQA's colours and shapes (the easy-vqa package)."""
    import easy_vqa as ev

    from .vqa import EASY_VQA_SHAPES
    colors = sorted(a for a in ev.get_answers()
                    if a not in EASY_VQA_SHAPES and a not in ("yes", "no"))
    shapes = sorted(EASY_VQA_SHAPES)
    train = set(ev.get_train_questions()[0])
    every, kept = grammar(), templates(colors, shapes, seed, per_form, avoid=train)
    lines = [f"grammar: {len(every)} templates, {len(filled(every, colors, shapes))} questions "
             f"over {len(colors)} colours x {len(shapes)} shapes",
             f"kept (seed {seed}, {per_form} per attribute x form): {len(kept)} templates, "
             f"{len(filled(kept, colors, shapes))} questions", ""]
    rng = random.Random(seed)
    truth = {"color": "red", "shape": "circle"}
    wrong = {"color": "blue", "shape": "triangle"}
    for asks, form in itertools.product(ATTRIBUTES, FORMS):
        pool = [r for r in kept if (r.asks, r.form) == (asks, form)]
        lines.append(f"{asks} {form} ({len(pool)} templates), for a red circle:")
        other = "shape" if asks == "color" else "color"
        for r in rng.sample(pool, min(examples, len(pool))):
            holds = form == "wh" or rng.random() < 0.5  # a yes/no question asks a wrong value too
            value = {asks: truth[asks] if holds else wrong[asks], other: truth[other]}
            m = Meaning(asks, value[asks], form != "wh", holds, truth[other])
            lines.append(f"  {fill(r, value['color'], value['shape'])!r:68} -> "
                         f"{answer_of(r, m)}")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Count and show the generated rewordings.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-form", type=int, default=80)
    ap.add_argument("--examples", type=int, default=3)
    a = ap.parse_args()
    print(summary(a.seed, a.per_form, a.examples))
