"""A head whose width is not the data's label count is refused before anything trains."""

from __future__ import annotations

import pytest

from qbert.config import DataConfig, SplitsConfig, TaskConfig
from qbert.data.sources import check_num_labels, load_split


@pytest.mark.parametrize(("name", "kind", "right"), [("sst2", "classification", 2), ("mnli", "classification", 3),
                                                     ("conll03", "token_classification", 9),
                                                     ("squad", "question_answering", 2)])
def test_num_labels_must_match_the_task(name, kind, right):
    extra = {"doc_stride": 64} if kind == "question_answering" else {}
    check_num_labels(TaskConfig(name=name, kind=kind, num_labels=right, metric="m", **extra))
    with pytest.raises(ValueError, match=rf"task.num_labels.*{right + 3} does not match the {right} labels of {name}"):
        check_num_labels(TaskConfig(name=name, kind=kind, num_labels=right + 3, metric="m", **extra))


def test_loading_a_split_checks_it():
    task = TaskConfig(name="sst2", kind="classification", num_labels=5, metric="accuracy")
    with pytest.raises(ValueError, match="task.num_labels"):
        load_split(task, DataConfig(source="sample"), "train")


@pytest.mark.parametrize("content", ["sentence\tlabel\n", ""])
def test_an_empty_split_is_refused_naming_its_file(tmp_path, content):
    (tmp_path / "sst2").mkdir()
    for split in ("train", "dev"):
        (tmp_path / "sst2" / f"{split}.tsv").write_text(content if split == "dev" else "sentence\tlabel\nok .\t1\n")
    task = TaskConfig(name="sst2", kind="classification", num_labels=2, metric="accuracy",
                      local_splits=SplitsConfig(train="train", val="dev", test=["dev"]))
    data = DataConfig(source="local", root=str(tmp_path))
    assert len(load_split(task, data, "train")) == 1
    with pytest.raises(ValueError, match=r"dev\.tsv") as err:
        load_split(task, data, "dev")
    assert "no examples" in str(err.value) or "empty file" in str(err.value)
