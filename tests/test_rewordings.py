"""vljepa.data.rewordings: generated training rewordings are disjoint from the evaluation
wordings (eval/paraphrase.py), deterministic, answered correctly (negations flipped), never read
the evaluation file, and reach training batches through VQADataModule(rewordings=...)."""
import ast
import re
from collections import Counter

import pytest
import torch

from eval.paraphrase import PARAPHRASES, easy_vqa_vocab, wordings
from vljepa.data import rewordings as rw
from vljepa.data.vqa import true_values


@pytest.fixture(scope="module")
def vocab():
    return easy_vqa_vocab()


@pytest.fixture(scope="module")
def train_questions():
    import easy_vqa as ev
    return set(ev.get_train_questions()[0])


def test_the_whole_grammar_is_disjoint_from_every_evaluation_wording(vocab):
    colors, shapes = vocab
    grammar = rw.grammar()
    held = wordings()
    assert len(held) == len(PARAPHRASES) and len(grammar) > 1000
    rw.check_disjoint(grammar, held, colors, shapes)  # raises on a shared wording
    # the same, spelled out: no shared template, no shared question for any colour x shape
    key = lambda t: rw.wording_key(t, colors, shapes)  # noqa: E731
    assert not {key(r.template) for r in grammar} & {key(h) for h in held}
    asked = {rw.wording_key(q) for q in rw.filled(grammar, colors, shapes)}
    evaluated = {rw.wording_key(h.format(color=c, shape=s))
                 for h in held for c in colors for s in shapes}
    assert not asked & evaluated


@pytest.mark.parametrize("planted", [
    "is the figure a {shape}?",        # an evaluation wording as it is
    "Is the figure an {shape}",        # ... capitalised, "an", no question mark
    "is the figure a circle?",         # ... filled in
    "of what color is figure shown?",  # ... American spelling, no article
])
def test_check_disjoint_sees_an_evaluation_wording(planted, vocab):
    colors, shapes = vocab
    with pytest.raises(ValueError, match="held-out wording"):
        rw.check_disjoint(rw.grammar()[:50] + [planted], wordings(), colors, shapes)


def test_templates_are_seeded_bounded_and_new(vocab, train_questions):
    colors, shapes = vocab
    a = rw.templates(colors, shapes, seed=0, avoid=train_questions)
    assert a == rw.templates(colors, shapes, seed=0, avoid=train_questions)
    assert a != rw.templates(colors, shapes, seed=1, avoid=train_questions)
    counts = Counter((r.asks, r.form) for r in a)
    assert set(counts) == {(x, f) for x in rw.ATTRIBUTES for f in rw.FORMS}
    assert set(counts.values()) == {80}
    questions = rw.filled(a, colors, shapes)
    assert 2000 < len(questions) < 6000  # well inside the query-state memo (20,000)
    # none is a training question, as a template or filled in
    train_keys = {rw.wording_key(q, colors, shapes) for q in train_questions}
    assert not {rw.wording_key(r.template, colors, shapes) for r in a} & train_keys
    assert not {rw.wording_key(q) for q in questions} & {rw.wording_key(q)
                                                         for q in train_questions}
    # a yes/no template holds the slot it asks about
    for r in a:
        assert r.form == "wh" or r.asks in r.slots, r


def test_every_question_fits_the_predictors_query_length(model, vocab):
    colors, shapes = vocab
    longest = [max(colors, key=len)], [max(shapes, key=len)]
    _, mask = model.tokenize_queries(sorted(rw.filled(rw.grammar(), *longest)))
    assert int(mask.sum(1).max()) < model.config.predictor.max_query_len  # nothing truncated


def test_meanings_of_training_questions(vocab):
    colors, shapes = vocab
    M = rw.Meaning
    assert rw.question_meaning("what color is the circle?", "red", colors, shapes) == \
        M("color", "red", False, True)
    assert rw.question_meaning("what is the blue shape?", "triangle", colors, shapes,
                               other="blue") == M("shape", "triangle", False, True, "blue")
    assert rw.question_meaning("is there not a red shape?", "yes", colors, shapes) == \
        M("color", "red", True, False)
    assert rw.question_meaning("is no circle present?", "no", colors, shapes) == \
        M("shape", "circle", True, True)
    assert rw.question_meaning("does the image contain a teal shape?", "no", colors, shapes) \
        == M("color", "teal", True, False)
    with pytest.raises(ValueError, match="names no colour or shape"):
        rw.question_meaning("is it there?", "yes", colors, shapes)


@pytest.mark.parametrize("template,asks,form,meaning,question,answer", [
    # an image with a red circle
    ("what colour is the {shape} here?", "color", "wh",
     ("color", "red", False, True, "circle"), "what colour is the circle here?", "red"),
    ("what shape is the {color} item in view?", "shape", "wh",
     ("shape", "circle", False, True, "red"), "what shape is the red item in view?", "circle"),
    ("is the {shape} here {color}?", "color", "yes/no",
     ("color", "red", True, True, "circle"), "is the circle here red?", "yes"),
    ("is the {shape} here {color}?", "color", "yes/no",
     ("color", "blue", True, False, "circle"), "is the circle here blue?", "no"),
    ("is the {shape} here not {color}?", "color", "negated",
     ("color", "red", True, True, "circle"), "is the circle here not red?", "no"),
    ("is the {shape} here not {color}?", "color", "negated",
     ("color", "blue", True, False, "circle"), "is the circle here not blue?", "yes"),
    ("is there no {shape} in view?", "shape", "negated",
     ("shape", "circle", True, True, None), "is there no circle in view?", "no"),
    ("is there no {shape} in view?", "shape", "negated",
     ("shape", "triangle", True, False, None), "is there no triangle in view?", "yes"),
    ("true or false: the {color} thing here is not a {shape}.", "shape", "negated",
     ("shape", "triangle", True, False, "red"),
     "true or false: the red thing here is not a triangle.", "yes"),
    ("is a {color} {shape} absent here?", "shape", "negated",
     ("shape", "circle", True, True, "red"), "is a red circle absent here?", "no"),
])
def test_hand_checked_answers(template, asks, form, meaning, question, answer):
    r = next(r for r in rw.grammar() if r.template == template)
    assert (r.asks, r.form) == (asks, form)
    assert (question, answer) in rw.rewordings_for(rw.Meaning(*meaning), [r])


def test_negated_rewordings_flip_the_answer(vocab):
    colors, shapes = vocab
    ts = rw.templates(colors, shapes, seed=0, per_form=20)
    for meaning in [rw.Meaning("color", "red", True, True, "circle"),
                    rw.Meaning("shape", "circle", True, False, "red")]:
        by_form = {"yes/no": set(), "negated": set()}
        for r in ts:
            if r.asks == meaning.asks and r.form != "wh":
                [(_, a)] = rw.rewordings_for(meaning, [r])
                by_form[r.form].add(a)
        plain = "yes" if meaning.holds else "no"
        assert by_form == {"yes/no": {plain}, "negated": {"no" if meaning.holds else "yes"}}
    # a wh question keeps its answer and is reworded only by wh templates
    pairs = rw.rewordings_for(rw.Meaning("color", "teal", False, True, None), ts)
    assert pairs and {a for _, a in pairs} == {"teal"}
    assert not any("{" in q for q, _ in pairs)  # no slot left open: no {shape} without a shape


def test_the_generator_never_reads_the_evaluation_file():
    source = open(rw.__file__, encoding="utf-8").read()
    assert "paraphrase" not in source.lower() and not re.search(r"\beval[./]", source)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.split(".")[0] in ("eval", "tests") for n in names), names
        assert not (isinstance(node, ast.Name) and node.id == "open"), "the generator opens files"


# ---- the training data path ----

def _truth_by_path(colors, shapes) -> dict[str, dict]:
    """Each easy-VQA training image's colour and shape as all its questions fix them."""
    import easy_vqa as ev
    qs, answers, ids = ev.get_train_questions()
    paths = ev.get_train_image_paths()
    asked: dict[str, list] = {}
    for q, a, i in zip(qs, answers, ids):
        asked.setdefault(paths[i], []).append((q, a, "yes/no" if a in ("yes", "no") else
                                               "shape" if a in shapes else "color"))
    return {p: true_values(v, colors, shapes) for p, v in asked.items()}


def test_training_batches_ask_rewordings_with_correct_answers(model, cache_dir, vocab):
    from vljepa.training.datamodules import VQADataModule
    from vljepa.training.features import RewordedVQAFeatures

    colors, shapes = vocab
    # 64 questions (val_fraction 0: the training rows in the split's order), ~70 images to encode
    dm = VQADataModule(model, max_train_samples=64, max_test_samples=8, val_fraction=0.0,
                       cache_dir=str(cache_dir), rewordings=1.0,
                       held_out_wordings="eval.paraphrase.wordings", seed=0)
    dm.prepare_data()
    dm.setup("fit")
    ds = dm.train_set
    assert isinstance(ds, RewordedVQAFeatures) and len(ds) == 64
    assert not isinstance(dm.test_set, RewordedVQAFeatures)
    # which template and values made each rewording, to answer it from the image itself
    made = {rw.fill(r, c, s): (r, c, s)
            for r in rw.templates(colors, shapes, seed=0) for c in colors for s in shapes}
    text = {tuple(ids[m].tolist()): q for q, ids, m in zip(ds.questions, ds.rw_ids, ds.rw_mask)}
    train, _, _ = dm.load_split("train")
    paths = [im["path"] for im in train["image"]]
    truth = _truth_by_path(colors, shapes)
    batch = ds.__getitems__(list(range(64)))
    checked = 0
    for i in range(64):
        q = text[tuple(batch["query_ids"][i][batch["query_mask"][i]].tolist())]
        r, c, s = made[q]
        fact = truth[paths[i]]
        value = {"color": c, "shape": s}
        other = "shape" if r.asks == "color" else "color"
        if other in r.slots:
            assert value[other] == fact[other], (q, fact)  # the image's own other value
        if r.form == "wh":
            gold = fact[r.asks]
        elif fact[r.asks] is None:
            continue  # this image's questions leave the asked value open
        else:
            gold = "yes" if (value[r.asks] == fact[r.asks]) != r.negated else "no"
        assert batch["answer"][i] == gold, (q, batch["answer"][i], fact)
        assert dm.candidates[int(batch["answer_ids"][i])] == gold
        checked += 1
    assert checked >= 40
    # the qtype of a reworded row is its original question's (wh stays wh, yes/no stays yes/no)
    assert torch.equal(batch["qtype_ids"], dm.train_set.qtype_ids[:64])
    # seeded: the draws go on (another rewording next time), and restart from a saved state
    state = ds.state_dict()
    again = ds.__getitems__(list(range(64)))
    ds.load_state_dict(state)
    assert torch.equal(ds.__getitems__(list(range(64)))["query_ids"], again["query_ids"])
    assert not torch.equal(batch["query_ids"][:, :8], again["query_ids"][:, :8])


def test_rewordings_are_off_by_default_and_checked_when_on(model, tmp_path):
    from vljepa.training.datamodules import VQADataModule

    assert VQADataModule(model, cache_dir=str(tmp_path)).rewordings == 0.0
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        VQADataModule(model, cache_dir=str(tmp_path), rewordings=1.5, held_out_wordings=[])
    with pytest.raises(ValueError, match="needs held_out_wordings"):
        VQADataModule(model, cache_dir=str(tmp_path), rewordings=0.5)
    with pytest.raises(ValueError, match="written for easy-VQA"):
        VQADataModule(model, source="parquet", cache_dir=str(tmp_path), rewordings=0.5,
                      held_out_wordings=[])
    dm = VQADataModule(model, cache_dir=str(tmp_path), rewordings=0.5,
                       held_out_wordings="eval.paraphrase.wordings")
    assert dm.held_out() == wordings()
    dm.held_out_wordings = "no_such_module.wordings"
    with pytest.raises(ValueError, match="does not import"):
        dm.held_out()
