"""Data: easy-VQA and any datasets.load_dataset source go through the same path."""
import datasets
import pytest

from vljepa.data.vqa import easy_vqa, load_vqa
from vljepa.training.datamodules import VQADataModule


def test_easy_vqa_has_the_published_sizes():
    train, test = easy_vqa("train"), easy_vqa("test")
    assert (len(train), len(test)) == (38575, 9673)
    assert set(train.column_names) == {"image", "question", "answer", "question_type"}
    assert len(set(train["answer"]) | set(test["answer"])) == 13
    assert set(test["question_type"]) == {"shape", "color", "yes/no"}


def _parquet(tmp_path, n=12):
    """A local parquet VQA set with its own column names, images stored as bytes."""
    import easy_vqa as ev

    qs, ans, ids = ev.get_test_questions()
    paths = ev.get_test_image_paths()
    rows = {"img": [{"bytes": open(paths[i], "rb").read(), "path": None} for i in ids[:n]],
            "q": qs[:n], "a": ans[:n]}
    features = datasets.Features({"img": datasets.Image(), "q": datasets.Value("string"),
                                  "a": datasets.Value("string")})
    path = tmp_path / "vqa.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return str(path)


def test_a_local_parquet_source_with_other_column_names(tmp_path, model, cache_dir):
    path = _parquet(tmp_path)
    ds = load_vqa("parquet", "train", data_files={"train": path}, image_column="img",
                  question_column="q", answer_column="a")
    assert set(ds.column_names) == {"image", "question", "answer", "question_type"}
    dm = VQADataModule(model, source="parquet", data_files={"train": path, "test": path},
                       image_column="img", question_column="q", answer_column="a",
                       val_fraction=0.0, cache_dir=str(cache_dir))
    dm.prepare_data()
    dm.setup("fit")
    batch = dm.test_set.__getitems__(list(range(4)))
    assert batch["visual"].shape[0] == 4 and batch["answer"] == ds["answer"][:4]
    with pytest.raises(ValueError, match=r"no column\(s\) \['question', 'answer'\]"):
        load_vqa("parquet", "train", data_files={"train": path}, image_column="img")


def test_an_empty_question_in_a_dataset_is_named(tmp_path, model, cache_dir):
    import easy_vqa as ev

    img = ev.get_test_image_paths()[0]
    rows = {"image": [img, img], "question": ["what color?", ""], "answer": ["red", "blue"]}
    path = tmp_path / "bad.json"
    datasets.Dataset.from_dict(rows).to_json(str(path))
    dm = VQADataModule(model, source="json", data_files={"train": str(path), "test": str(path)},
                       val_fraction=0.0, cache_dir=str(cache_dir))
    dm.prepare_data()
    with pytest.raises(ValueError, match=r"questions\[1\] is empty"):
        dm.setup("fit")
