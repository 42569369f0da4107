"""Hub converters on in-memory datasets (no download) and load_hub_split's dataset ids."""

from __future__ import annotations

import datasets
import pytest

from qbert.data import hub
from qbert.data.readers import CONLL_TAGS, MNLI_LABELS, Answer, DataFormatError


def test_sst2_from_hub():
    ds = datasets.Dataset.from_dict(
        {"sentence": ["fine . ", "bad"], "label": [1, 0], "idx": [7, 8]},
        features=datasets.Features({"sentence": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=["negative", "positive"]),
                                    "idx": datasets.Value("int32")}))
    ex = hub.sst2_from_hub(ds, source="glue/sst2/validation")
    assert [(e.guid, e.text_a, e.text_b, e.label) for e in ex] == [
        ("glue/sst2/validation:7", "fine . ", None, 1), ("glue/sst2/validation:8", "bad", None, 0)]


def test_mnli_from_hub_plain_ints():
    ds = datasets.Dataset.from_dict({"premise": ["p0", "p1", "p2"],
                                     "hypothesis": ["h0", "h1", "h2"],
                                     "label": [0, 1, 2], "idx": [0, 1, 2]})
    ex = hub.mnli_from_hub(ds)
    assert [(e.text_a, e.text_b, MNLI_LABELS[e.label]) for e in ex] == [
        ("p0", "h0", "entailment"), ("p1", "h1", "neutral"), ("p2", "h2", "contradiction")]


def test_unlabelled_and_reordered_labels_rejected():
    ds = datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [1, -1], "idx": [0, 1]})
    with pytest.raises(DataFormatError, match=r"row 1: .*unlabelled test split"):
        hub.sst2_from_hub(ds)
    reordered = datasets.Dataset.from_dict(
        {"premise": ["p"], "hypothesis": ["h"], "label": [0], "idx": [0]},
        features=datasets.Features({
            "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["contradiction", "neutral", "entailment"]),
            "idx": datasets.Value("int32")}))
    with pytest.raises(DataFormatError, match="expected ClassLabel names"):
        hub.mnli_from_hub(reordered)


def test_conll_from_hub():
    ds = datasets.Dataset.from_dict(
        {"id": ["0", "1"], "tokens": [["EU", "rejects"], ["Peter", "Blackburn"]],
         "ner_tags": [[3, 0], [1, 2]]},
        features=datasets.Features({
            "id": datasets.Value("string"),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=list(CONLL_TAGS)))}))
    ex = hub.conll_from_hub(ds, source="eriktks/conll2003/train")
    assert [e.guid for e in ex] == ["eriktks/conll2003/train:0", "eriktks/conll2003/train:1"]
    assert [[CONLL_TAGS[t] for t in e.tags] for e in ex] == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    bad = datasets.Dataset.from_dict({"id": ["0"], "tokens": [["a", "b"]], "ner_tags": [[0]]})
    with pytest.raises(DataFormatError, match=r"row 0: expected as many ner_tags"):
        hub.conll_from_hub(bad)
    with pytest.raises(DataFormatError, match=r"ner_tags in 0\.\.8, found 9"):
        hub.conll_from_hub([{"id": "0", "tokens": ["a"], "ner_tags": [9]}])


def test_squad_from_hub():
    ds = datasets.Dataset.from_dict({
        "id": ["q1"], "title": ["T"], "context": ["The cat sat."], "question": ["Who sat?"],
        "answers": [{"text": ["The cat", "cat"], "answer_start": [0, 4]}]})
    (ex,) = hub.squad_from_hub(ds)
    assert (ex.id, ex.title, ex.question, ex.context) == ("q1", "T", "Who sat?", "The cat sat.")
    assert ex.answers == (Answer("The cat", 0), Answer("cat", 4))
    row = {"id": "q2", "title": "T", "context": "abc", "question": "?",
           "answers": {"text": ["abc"], "answer_start": [1]}}
    with pytest.raises(DataFormatError, match=r"row 0 \(id q2\): .*outside the context"):
        hub.squad_from_hub([row])
    with pytest.raises(DataFormatError, match="expected column 'question'"):
        hub.squad_from_hub([{k: v for k, v in row.items() if k not in ("question", "answers")}
                            | {"answers": {"text": ["bc"], "answer_start": [1]}}])


@pytest.mark.parametrize("task, split, ids", [
    ("sst2", "validation", ("glue", "sst2")),
    ("mnli", "validation_mismatched", ("glue", "mnli")),
    ("conll2003", "test", ("eriktks/conll2003",)),
    ("conll03", "validation", ("eriktks/conll2003",)),  # Hydra task name alias
    ("squad", "train", ("rajpurkar/squad",)),
])
def test_load_hub_split_ids(monkeypatch, task, split, ids):
    rows = {
        "conll03": [{"id": "0", "tokens": ["EU"], "ner_tags": [3]}],
        "sst2": [{"sentence": "s", "label": 1, "idx": 0}],
        "mnli": [{"premise": "p", "hypothesis": "h", "label": 2, "idx": 0}],
        "conll2003": [{"id": "0", "tokens": ["EU"], "ner_tags": [3]}],
        "squad": [{"id": "q", "title": "T", "context": "ab", "question": "?",
                   "answers": {"text": ["a"], "answer_start": [0]}}],
    }[task]
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ex = hub.load_hub_split(task, split)
    assert calls == [(ids, {"split": split})]
    assert len(ex) == 1


def test_load_hub_split_rejects_unknown(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("no download"))
    with pytest.raises(ValueError, match="unknown task"):
        hub.load_hub_split("qnli", "train")
    with pytest.raises(ValueError, match="expected one of"):
        hub.load_hub_split("sst2", "test")
