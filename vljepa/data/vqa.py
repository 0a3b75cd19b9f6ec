"""VQA data as Hugging Face ``datasets.Dataset``s with the columns image, question, answer and
question_type.

``source="easy_vqa"`` reads the easy-VQA package (offline). Any other source goes through
``datasets.load_dataset`` (a hub name such as VQAv2 or GQA, or ``"parquet"``, ``"json"``,
``"imagefolder"`` with ``data_files``), with the column names given in config.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import datasets

EASY_VQA_SHAPES = {"circle", "rectangle", "triangle"}


def _easy_vqa_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    return "shape" if answer in EASY_VQA_SHAPES else "color"


def easy_vqa(split: str) -> datasets.Dataset:
    """easy-VQA (Zhou, 2020) from the ``easy-vqa`` package: split "train" (4,000 images, 38,575
    questions) or "test" (1,000 images, 9,673 questions), 13 answers. The question type is the
    answer's kind: shape, color or yes/no."""
    try:
        import easy_vqa as ev
    except ImportError as e:
        raise ImportError("easy-VQA needs the package 'easy-vqa': pip install easy-vqa") from e
    if split not in ("train", "test"):
        raise ValueError(f"easy-VQA has the splits 'train' and 'test', not {split!r}")
    questions, answers, image_ids = getattr(ev, f"get_{split}_questions")()
    paths = getattr(ev, f"get_{split}_image_paths")()
    ds = datasets.Dataset.from_dict({
        "image": [paths[i] for i in image_ids],
        "question": questions,
        "answer": answers,
        "question_type": [_easy_vqa_type(a) for a in answers],
    })
    return ds.cast_column("image", datasets.Image(decode=False))


def true_values(questions: Sequence[tuple[str, str, str]], colors: Sequence[str],
                shapes: Sequence[str]) -> dict[str, str | None]:
    """An easy-VQA image's colour and shape as its own questions determine them.

    ``questions``: the image's (question, answer, type) triples; type "color", "shape" or a
    yes/no type ("yes/no", "yes/no color", ...). A colour or shape answer fixes that value; the
    word naming the other one fixes it too ("what color is the rectangle?"); a yes/no question
    keeps or rules out the value it names ("is there not a red shape?" "no" -> red). Every
    easy-VQA image shows exactly one shape in one colour.

    Returns {"color": value or None, "shape": value or None}: None where the questions leave
    more than one value open (about 11% of easy-VQA's test images).

    Raises ValueError when the questions contradict each other.
    """
    allowed = {"color": set(colors), "shape": set(shapes)}
    for q, a, t in questions:
        words = set(re.findall(r"[a-z]+", q.lower()))
        for kind, values in (("color", set(colors)), ("shape", set(shapes))):
            named = words & values
            if t == kind:
                allowed[kind] &= {a}
            elif named and t in ("color", "shape"):
                allowed[kind] &= named
            elif named:  # yes/no: is the named value there?
                present = (a == "yes") != bool(words & {"no", "not"})
                allowed[kind] &= named if present else values - named
            if not allowed[kind]:
                raise ValueError(f"the easy-VQA questions {list(questions)} contradict each "
                                 f"other on the {kind}")
    return {k: next(iter(v)) if len(v) == 1 else None for k, v in allowed.items()}


def load_vqa(source: str, split: str, name: str | None = None, data_files: Any = None,
             image_column: str = "image", question_column: str = "question",
             answer_column: str = "answer", question_type_column: str | None = None,
             max_samples: int | None = None, seed: int = 0) -> datasets.Dataset:
    """A VQA split with the standard columns image (``datasets.Image(decode=False)``: path or
    bytes, decoded later), question, answer and question_type ("all" when the source has none).

    Raises:
        ValueError: a configured column is missing, or answers are not strings.
    """
    if source == "easy_vqa":
        ds = easy_vqa(split)
    else:
        ds = datasets.load_dataset(source, name, data_files=data_files, split=split)
        wanted = {image_column: "image", question_column: "question", answer_column: "answer"}
        if question_type_column:
            wanted[question_type_column] = "question_type"
        absent = [c for c in wanted if c not in ds.column_names]
        if absent:
            raise ValueError(f"dataset {source!r} split {split!r} has no column(s) {absent}; "
                             f"it has {ds.column_names}. Set the *_column options.")
        ds = ds.select_columns(list(wanted)).rename_columns(
            {k: v for k, v in wanted.items() if k != v})
        if not question_type_column:
            ds = ds.add_column("question_type", ["all"] * len(ds))
        if not isinstance(ds.features["answer"], datasets.Value) or \
                ds.features["answer"].dtype not in ("string", "large_string"):
            raise ValueError(f"answer column {answer_column!r} must hold strings, found "
                             f"{ds.features['answer']}")
        ds = ds.cast_column("image", datasets.Image(decode=False))
    if max_samples is not None and max_samples < len(ds):
        ds = ds.shuffle(seed=seed).select(range(max_samples))
    return ds
