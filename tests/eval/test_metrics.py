"""Metrics agree with the reference scorers: official SQuAD v1.1 script, conlleval semantics."""

from __future__ import annotations

import random
import re
import string
import sys
from collections import Counter
from pathlib import Path

import pytest

from qbert.data.readers import Answer, QAExample, read_squad
from qbert.eval.metrics import accuracy, ner_scores, squad_scores

SAMPLE_DEV = Path(__file__).resolve().parents[2] / "qbert/data/sample/squad/dev-v1.1.json.gz"


def test_accuracy():
    assert accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == 50.0
    assert accuracy((i % 3 for i in range(3)), [0, 1, 2]) == 100.0
    with pytest.raises(ValueError):
        accuracy([1], [1, 0])
    with pytest.raises(ValueError):
        accuracy([], [])


# --- NER: hand-computed conlleval cases ------------------------------------------------------

# (1) I- starts an entity: pred I-PER I-PER after O is one PER chunk [1,2] == gold. 1/1 correct.
CASE_I_START = (["O", "B-PER", "I-PER", "O"], ["O", "I-PER", "I-PER", "O"])
# (2) type mismatch: gold ORG[0,1] LOC[3]; pred ORG[0] LOC[1] LOC[3] (I-LOC after B-ORG opens a
#     new LOC chunk). correct = {LOC[3]}: P = 1/3, R = 1/2, F1 = 2PR/(P+R) = 0.4.
CASE_TYPE = (["B-ORG", "I-ORG", "O", "B-LOC"], ["B-ORG", "I-LOC", "O", "B-LOC"])
# (3) boundaries: gold MISC[0,2] PER[4]; pred MISC[0,1] PER[4,5]. Nothing correct: 0/0/0.
CASE_BOUND = (["B-MISC", "I-MISC", "I-MISC", "O", "B-PER", "O"],
              ["B-MISC", "I-MISC", "O", "O", "B-PER", "I-PER"])


@pytest.mark.parametrize("case, p, r, f", [
    (CASE_I_START, 100.0, 100.0, 100.0),
    (CASE_TYPE, 100 / 3, 50.0, 40.0),
    (CASE_BOUND, 0.0, 0.0, 0.0),
])
def test_ner_single_cases(case, p, r, f):
    gold, pred = case
    s = ner_scores([pred], [gold])
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((p, r, f))


def test_ner_corpus_micro_and_per_type():
    gold, pred = zip(CASE_I_START, CASE_TYPE, CASE_BOUND)
    s = ner_scores(list(pred), list(gold))
    # gold chunks 1+2+2 = 5, predicted 1+3+2 = 6, correct 1+1+0 = 2:
    # P = 2/6, R = 2/5, F1 = 2*(1/3)*(2/5) / (1/3 + 2/5) = 4/11.
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((100 / 3, 40.0, 400 / 11))
    # PER: gold 2, pred 2, correct 1 -> 50/50/50. LOC: gold 1, pred 2, correct 1 -> 50/100/66.7.
    # ORG and MISC: gold 1, pred 1, correct 0 -> 0.
    expected = {"PER": (50.0, 50.0, 50.0, 2), "LOC": (50.0, 100.0, 200 / 3, 1),
                "ORG": (0.0, 0.0, 0.0, 1), "MISC": (0.0, 0.0, 0.0, 1)}
    assert sorted(s["per_type"]) == sorted(expected)
    for t, v in s["per_type"].items():
        assert (v["precision"], v["recall"], v["f1"], v["support"]) == pytest.approx(expected[t])


def test_ner_b_after_i_splits_and_no_entities():
    s = ner_scores([["B-PER", "B-PER"]], [["B-PER", "I-PER"]])  # pred: two 1-token chunks
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)
    assert ner_scores([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                            "per_type": {}}
    with pytest.raises(ValueError, match="sentence 1"):
        ner_scores([["O"], ["O"]], [["O"], ["O", "O"]])


def conlleval_chunks(sentences: list[list[str]]) -> Counter:
    """Reference: conlleval's startOfChunk/endOfChunk rules (IOB subset), per sentence."""
    chunks: Counter = Counter()
    for s_idx, sent in enumerate(sentences):
        start, prev_tag, prev_type = None, "O", ""
        for i, label in enumerate([*sent, "O"]):  # trailing O closes the last chunk
            tag, _, typ = label.partition("-")
            end = prev_tag != "O" and (tag in "BO" or prev_type != typ)
            begin = tag == "B" or (tag == "I" and (prev_tag == "O" or prev_type != typ))
            if end:
                chunks[(s_idx, start, i, prev_type)] += 1
            if begin:
                start = i
            prev_tag, prev_type = tag, typ
    return chunks


def test_ner_agrees_with_conlleval_rules_on_random_tags():
    rng = random.Random(0)
    tags = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    for _ in range(200):
        n = rng.randint(1, 4)
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 8))] for _ in range(n)]
        pred = [[rng.choice(tags) for _ in g] for g in gold]
        g, p = conlleval_chunks(gold), conlleval_chunks(pred)
        correct = sum((g & p).values())
        ref_p = 100 * correct / sum(p.values()) if p else 0.0
        ref_r = 100 * correct / sum(g.values()) if g else 0.0
        ref_f = 2 * ref_p * ref_r / (ref_p + ref_r) if correct else 0.0
        s = ner_scores(pred, gold)
        assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((ref_p, ref_r, ref_f))


# --- SQuAD: official evaluate-v1.1.py functions, verbatim, as the reference --------------------

def ref_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def ref_f1_score(prediction, ground_truth):
    prediction_tokens = ref_normalize_answer(prediction).split()
    ground_truth_tokens = ref_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def ref_exact_match_score(prediction, ground_truth):
    return (ref_normalize_answer(prediction) == ref_normalize_answer(ground_truth))


def ref_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def ref_evaluate(examples, predictions):
    """The official evaluate() loop, over QAExamples instead of the raw JSON."""
    f1 = exact_match = total = 0
    for qa in examples:
        total += 1
        if qa.id not in predictions:
            print('Unanswered question ' + qa.id + ' will receive score 0.', file=sys.stderr)
            continue
        ground_truths = [a.text for a in qa.answers]
        prediction = predictions[qa.id]
        exact_match += ref_metric_max_over_ground_truths(
            ref_exact_match_score, prediction, ground_truths)
        f1 += ref_metric_max_over_ground_truths(ref_f1_score, prediction, ground_truths)
    return {'exact_match': 100.0 * exact_match / total, 'f1': 100.0 * f1 / total}


TRICKY = [  # (golds, prediction)
    (["the Eiffel Tower"], "Eiffel tower"),            # article + case
    (["an apple"], "A apple."),                        # articles and punctuation
    (["U.S."], "US"),                                  # punctuation inside a token
    (["Theory of the atom"], "theory atom"),           # 'the' inside 'Theory' is kept
    (["1,000 people", "1000"], "about 1,000"),         # multiple golds, partial overlap
    (["Denver Broncos", "Broncos", "the Broncos"], "The  Denver\tBroncos "),  # whitespace
    (["cat"], "the big cat"),                          # F1 = 2/3
    (["cat cat dog"], "cat dog dog"),                  # token multiset overlap
    (["Paris"], ""),                                   # empty prediction
    (["a"], "the"),                                    # both normalise to empty
    (["naïve café — x"], "naive cafe x"),              # non-ASCII punctuation is not removed
]


def test_squad_scores_match_official_on_tricky_cases():
    examples = [QAExample(f"q{i}", "T", "?", "ctx", tuple(Answer(g, 0) for g in golds))
                for i, (golds, _) in enumerate(TRICKY)]
    for i, ex in enumerate(examples):  # per question, then all together
        preds = {ex.id: TRICKY[i][1]}
        assert squad_scores(preds, [ex]) == pytest.approx(ref_evaluate([ex], preds)), TRICKY[i]
    preds = {f"q{i}": p for i, (_, p) in enumerate(TRICKY)}
    assert squad_scores(preds, examples) == pytest.approx(ref_evaluate(examples, preds))
    one = squad_scores({"q6": "the big cat"}, [examples[6]])
    assert one == pytest.approx({"exact_match": 0.0, "f1": 200 / 3})


def test_squad_scores_on_sample_dev_and_missing_predictions():
    examples = read_squad(SAMPLE_DEV)
    gold = {ex.id: ex.answers[0].text for ex in examples}
    assert squad_scores(gold, examples) == {"exact_match": 100.0, "f1": 100.0}
    rng = random.Random(0)  # noisy spans: widen each first answer by a few context characters
    preds = {}
    for ex in examples[::2]:
        a = ex.answers[0]
        lo, hi = max(0, a.answer_start - rng.randint(0, 12)), a.answer_end + rng.randint(0, 12)
        preds[ex.id] = ex.context[lo:hi]
    preds["not-a-question"] = "ignored"
    with pytest.warns(UserWarning, match=f"{len(examples) // 2} of {len(examples)} questions"):
        ours = squad_scores(preds, examples)
    assert ours == pytest.approx(ref_evaluate(examples, preds))
    assert 0 < ours["exact_match"] < ours["f1"] < 50
