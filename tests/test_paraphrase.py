"""eval/paraphrase.py: the rewordings are new (no training question, no training template) and
the evaluation runs on the released checkpoint."""
from collections import Counter

import pytest

from conftest import ROOT
from eval.paraphrase import (ASKS, PARAPHRASES, TYPES, Paraphrase, check_paraphrases,
                             easy_vqa_vocab, evaluate, meaning, paraphrase_items, text_neighbours,
                             true_values, wordings)


def test_paraphrases_cover_every_type_and_are_not_training_questions():
    counts = Counter(p.type for p in PARAPHRASES)
    assert len(PARAPHRASES) >= 72 and set(counts) == set(TYPES) and min(counts.values()) >= 12
    check_paraphrases()  # raises on a training question or template instance
    assert wordings() == [p.template for p in PARAPHRASES]


def test_negations_and_new_constructions():
    """Every negation wording is a negated yes/no question about colour or shape (both asked);
    the new constructions ask all four things (colour, shape, yes/no colour, yes/no shape)."""
    neg = [p for p in PARAPHRASES if p.type == "negation"]
    assert all(p.negated and p.kind in ("yes/no color", "yes/no shape") for p in neg)
    assert {p.kind for p in neg} == {"yes/no color", "yes/no shape"}
    new = [p for p in PARAPHRASES if p.type == "new construction"]
    assert {p.kind for p in new} == set(ASKS) and not any(p.negated for p in new)


def test_negation_golds_flip():
    """Asked about its true shape, "is there no {shape} ...?" is "no"; about another, "yes";
    half the images each way, and the un-negated wording the other way round."""
    images = [{"color": c, "shape": s} for c in ("red", "blue", "teal") for s in
              ("circle", "triangle")] * 2
    negated = Paraphrase("negation", "is there no {shape} in the image?", True, "yes/no shape")
    plain = Paraphrase("new construction", "is there no {shape} in the image?", False,
                       "yes/no shape")
    asked = paraphrase_items(images, [negated, plain])
    neg, pos = asked[:len(images)], asked[len(images):]
    for it, q in zip(neg, pos):
        named = it.question.split()[3]
        truth = images[it.image]["shape"]
        assert it.gold == ("no" if named == truth else "yes") and it.type == "negation"
        assert q.gold == ("yes" if q.question.split()[3] == truth else "no")
    assert Counter(it.gold for it in neg) == {"yes": 6, "no": 6}
    # a colour negation with the shape filled in with the image's own
    color_neg = Paraphrase("negation", "is the {shape} not {color}?", True, "yes/no color")
    for it in paraphrase_items(images, [color_neg]):
        im = images[it.image]
        assert it.question.startswith(f"is the {im['shape']} not ")
        assert it.gold == ("no" if it.question.endswith(f" {im['color']}?") else "yes")


@pytest.mark.parametrize("planted", [
    Paraphrase("color", "What color is the shape?"),                  # a training question
    Paraphrase("color", "what colour is the   shape"),                # ... spelled differently
    Paraphrase("yes/no color", "is there a {color} shape in the image?"),  # a training template
    Paraphrase("yes/no color", "Is there an orange shape?"),          # its instance, new colour
    Paraphrase("shape", "what is the purple shape?"),                 # the same, another template
    Paraphrase("yes/no shape", "does the image not contain a square?"),
])
def test_check_rejects_training_questions_and_template_instances(planted):
    with pytest.raises(ValueError, match="is the training question|is an instance of the training"):
        check_paraphrases(PARAPHRASES + [planted])


def test_check_rejects_malformed_wordings():
    with pytest.raises(ValueError, match="needs a {color} slot"):
        check_paraphrases([Paraphrase("yes/no color", "is the figure a {shape}?")])
    with pytest.raises(ValueError, match="repeats"):
        check_paraphrases([PARAPHRASES[0], Paraphrase("color", PARAPHRASES[0].template.upper())])
    with pytest.raises(ValueError, match="must be negated"):
        check_paraphrases([Paraphrase("negation", "is the figure {color} at all?", False,
                                      "yes/no color")])
    with pytest.raises(ValueError, match="not one of"):  # a mixed type must say what it asks
        check_paraphrases([Paraphrase("new construction", "the figure has which colour?")])
    with pytest.raises(ValueError, match="only yes/no wordings can be negated"):
        check_paraphrases([Paraphrase("negation", "what colour is it not?", True, "color")])


def test_true_values_read_off_the_questions():
    colors, shapes = ["blue", "red"], ["circle", "triangle"]
    qs = [("what color is the triangle?", "red", "color"),
          ("is there not a blue shape?", "yes", "yes/no color")]
    assert true_values(qs, colors, shapes) == {"color": "red", "shape": "triangle"}
    assert true_values(qs[1:], colors, shapes) == {"color": "red", "shape": None}
    with pytest.raises(ValueError, match="contradict"):
        true_values(qs + [("is there a blue shape?", "yes", "yes/no color")], colors, shapes)


def test_evaluate_on_a_few_images_with_the_released_checkpoint():
    import vljepa
    model = vljepa.load(ROOT / "checkpoints" / "vljepa-easyvqa-lite0")
    r = evaluate(model, n_images=6, seed=0)
    assert r["n_images"] == 6 and r["candidates"] == {"source": "saved vocabulary", "n": 13}
    for part in ("original", "paraphrase"):
        assert set(r[part]["per_type"]) <= set(TYPES)
        for v in [r[part]["overall"], r[part]["mean_over_types"], *r[part]["per_type"].values()]:
            assert 0.0 <= v <= 1.0
    assert set(r["paraphrase"]["per_type"]) == set(TYPES)
    assert r["paraphrase"]["n"]["all"] == 6 * len(PARAPHRASES)
    words = r["paraphrase"]["per_wording"]
    assert len(words) == len(PARAPHRASES) and all(0.0 <= w["accuracy"] <= 1.0 for w in words)
    assert r["original"]["overall"] > 0.9  # the training templates are answered


def test_training_question_meanings_and_the_text_encoders_neighbours():
    """meaning() reads what each easy-VQA training question asks (its type, the asked value and
    negation); text_neighbours() counts a rewording whose nearest training question (by
    MiniLM sentence embedding) asks the same as a hit, and one that asks otherwise as a miss."""
    import easy_vqa as ev
    colors, shapes = easy_vqa_vocab()
    assert meaning("What color is the shape?", colors, shapes) == ("color",)
    assert meaning("what is the blue shape?", colors, shapes) == ("shape",)
    assert meaning("is there not a red shape?", colors, shapes) == ("yes/no color", "red", True)
    assert meaning("is no circle present?", colors, shapes) == ("yes/no shape", "circle", True)
    assert meaning("does the image contain a triangle?", colors, shapes) == (
        "yes/no shape", "triangle", False)
    kinds = Counter(meaning(q, colors, shapes)[0] for q in set(ev.get_train_questions()[0]))
    assert set(kinds) == set(ASKS)
    near_copy = Paraphrase("yes/no color", "is there a {color} shape here?")
    flipped = Paraphrase("yes/no color", "is there a {color} shape here?", negated=True)
    r = text_neighbours(paraphrases=[near_copy, flipped])
    assert [w["same_meaning"] for w in r["per_wording"]] == [1.0, 0.0]
    assert r["overall"] == 0.5 and r["per_wording"][1]["example_miss"] is not None
