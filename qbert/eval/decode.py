"""Turn collected window predictions into task metrics.

Every decoder works on whatever windows were predicted (a debug run may see only a few batches):
it scores the examples those windows cover, and nothing else.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from qbert.config import TaskConfig
from qbert.data.module import EvalSet
from qbert.eval.metrics import accuracy, ner_scores, squad_scores


def decode_classification(eval_set: EvalSet, predictions: dict[int, int]) -> dict[str, float]:
    indices = sorted(predictions)
    gold = [eval_set.examples[i].label for i in indices]
    return {"accuracy": accuracy([predictions[i] for i in indices], gold)}


def decode_tokens(eval_set: EvalSet, predictions: dict[int, list[int]], tags: tuple[str, ...]) -> dict[str, float]:
    """A word's tag is the prediction on its first sub-token; words cut off by max_length get O."""
    gold_tags, pred_tags = [], []
    for i in sorted(predictions):
        example = eval_set.examples[i]
        words = ["O"] * len(example.tokens)
        previous = None
        for token, word in enumerate(eval_set.features.word_ids[i]):
            if word is not None and word != previous:
                words[word] = tags[predictions[i][token]]
            previous = word
        pred_tags.append(words)
        gold_tags.append([tags[t] for t in example.tags])
    scores = ner_scores(pred_tags, gold_tags)
    flat = {key: scores[key] for key in ("precision", "recall", "f1")}
    flat.update({f"f1_{kind}": per["f1"] for kind, per in scores["per_type"].items()})
    return flat


def best_answer(context: str, windows: list[tuple[np.ndarray, np.ndarray, list]], n_best: int,
                max_answer_length: int) -> str:
    """The highest-scoring span (start + end logit) over all windows of one example."""
    best_score, best_text = -np.inf, ""
    for start_logits, end_logits, offsets in windows:
        starts = np.argsort(start_logits)[::-1][:n_best]
        ends = np.argsort(end_logits)[::-1][:n_best]
        for s in starts:
            if s >= len(offsets) or offsets[s] is None:
                continue
            for e in ends:
                if e >= len(offsets) or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = start_logits[s] + end_logits[e]
                if score > best_score:
                    best_score, best_text = score, context[offsets[s][0]:offsets[e][1]]
    return best_text


def decode_qa(eval_set: EvalSet, predictions: dict[int, tuple[np.ndarray, np.ndarray]],
              task: TaskConfig) -> dict[str, float]:
    windows_of = defaultdict(list)
    for feature, (start_logits, end_logits) in predictions.items():
        example = eval_set.features.example_index[feature]
        windows_of[example].append((start_logits, end_logits, eval_set.features.offsets[feature]))
    answers = {}
    for example_index, windows in windows_of.items():
        example = eval_set.examples[example_index]
        answers[example.id] = best_answer(example.context, windows, task.n_best, task.max_answer_length)
    covered = [eval_set.examples[i] for i in sorted(windows_of)]
    return squad_scores(answers, covered)


def decode(task: TaskConfig, eval_set: EvalSet, predictions: dict, label_names: tuple[str, ...]) -> dict[str, float]:
    if not predictions:
        return {}
    if task.kind == "classification":
        return decode_classification(eval_set, predictions)
    if task.kind == "token_classification":
        return decode_tokens(eval_set, predictions, label_names)
    return decode_qa(eval_set, predictions, task)
