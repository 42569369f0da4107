"""Task metrics, all in percent (0-100) to match how the papers report them.

- :func:`accuracy` for SST-2 / MNLI.
- :func:`ner_scores`: entity-level micro P/R/F1 via seqeval's default (conlleval-compatible)
  mode, so an ``I-`` tag after ``O`` or after another type starts a new entity, as in conlleval.
- :func:`squad_scores`: the official SQuAD v1.1 ``evaluate-v1.1.py`` EM/F1.
"""

from __future__ import annotations

import collections
import re
import string
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

from qbert.data.readers import QAExample


def accuracy(preds: Sequence[Any], labels: Sequence[Any]) -> float:
    """Percentage of positions where ``preds[i] == labels[i]``."""
    preds, labels = list(preds), list(labels)
    if len(preds) != len(labels):
        raise ValueError(f"got {len(preds)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of an empty set is undefined")
    return 100.0 * sum(int(p == y) for p, y in zip(preds, labels)) / len(labels)


def ner_scores(pred_tags: list[list[str]], gold_tags: list[list[str]]) -> dict[str, Any]:
    """Entity-level micro precision/recall/F1 (percent) plus per-type scores.

    Returns ``{"precision", "recall", "f1", "per_type": {TYPE: {"precision", "recall", "f1",
    "support"}}}``; ``support`` is the number of gold entities of that type. With no predicted
    (or no gold) entities the undefined ratios are 0, as conlleval prints them.
    """
    if len(pred_tags) != len(gold_tags):
        raise ValueError(f"got {len(pred_tags)} predicted sentences for {len(gold_tags)} gold")
    for i, (p, g) in enumerate(zip(pred_tags, gold_tags)):
        # seqeval only compares flattened lengths; a per-sentence mismatch means misalignment.
        if len(p) != len(g):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags for {len(g)} gold tags")
    kw: dict[str, Any] = {"zero_division": 0}  # default mode=None: conlleval semantics
    scores: dict[str, Any] = {
        "precision": 100.0 * float(precision_score(gold_tags, pred_tags, **kw)),
        "recall": 100.0 * float(recall_score(gold_tags, pred_tags, **kw)),
        "f1": 100.0 * float(f1_score(gold_tags, pred_tags, **kw)),
        "per_type": {},
    }
    has_entities = any(t != "O" for sent in [*pred_tags, *gold_tags] for t in sent)
    if has_entities:  # classification_report warns (mean of empty slice) when there are none
        report = classification_report(gold_tags, pred_tags, output_dict=True, **kw)
        scores["per_type"] = {
            name: {"precision": 100.0 * float(r["precision"]),
                   "recall": 100.0 * float(r["recall"]),
                   "f1": 100.0 * float(r["f1-score"]), "support": int(r["support"])}
            for name, r in report.items() if not name.endswith(" avg")}
    return scores


# --- official SQuAD v1.1 evaluation (evaluate-v1.1.py), kept textually close to the original ---

def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def f1_score_squad(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn: Any, prediction: str,
                                  ground_truths: Sequence[str]) -> float:
    return max(metric_fn(prediction, gt) for gt in ground_truths)


def squad_scores(predictions: Mapping[str, str],
                 examples: Sequence[QAExample]) -> dict[str, float]:
    """Official SQuAD v1.1 ``{"exact_match", "f1"}`` in percent over ``examples``.

    As in the official script, a question without a prediction scores 0 (with a warning here)
    and predictions for ids not in ``examples`` are ignored.
    """
    if not examples:
        raise ValueError("no examples to score")
    exact_match = f1 = 0.0
    missing = []
    for ex in examples:
        if ex.id not in predictions:
            missing.append(ex.id)
            continue
        ground_truths = [a.text for a in ex.answers]
        prediction = predictions[ex.id]
        exact_match += metric_max_over_ground_truths(exact_match_score, prediction, ground_truths)
        f1 += metric_max_over_ground_truths(f1_score_squad, prediction, ground_truths)
    if missing:
        warnings.warn(f"{len(missing)} of {len(examples)} questions have no prediction and score "
                      f"0 (first: {missing[:3]})", stacklevel=2)
    return {"exact_match": 100.0 * exact_match / len(examples), "f1": 100.0 * f1 / len(examples)}
