"""Examples -> model inputs, per task kind.

Each function returns a ``Features`` object: the per-window model inputs plus what evaluation needs
to map predictions back to words (NER) or to answer text (QA).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tqdm.auto import tqdm
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerBase

if TYPE_CHECKING:  # a type only: the Hessian analysis imports this module and stays free of Hydra
    from qbert.config import TaskConfig

IGNORE_INDEX = -100  # positions that carry no label (special tokens, later sub-tokens)
NON_MODEL_KEYS = ("feature_index",)  # bookkeeping each window carries for decoding predictions
CHUNK = 1000  # examples tokenized per call: bounded memory, a moving progress bar


@dataclass
class Features:
    inputs: list[dict] = field(default_factory=list)  # one dict per model window
    # token classification: per window, the word index of each token (None for special tokens)
    word_ids: list[list[int | None]] = field(default_factory=list)
    # question answering: per window, its example and the character span of each context token
    example_index: list[int] = field(default_factory=list)
    offsets: list[list[tuple[int, int] | None]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)


def model_inputs(batch: dict) -> dict:
    """A collated batch without the bookkeeping keys the model does not take."""
    return {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}


def _chunks(items: list, desc: str):
    bar = tqdm(total=len(items), desc=desc, unit="ex", leave=False, disable=len(items) < 5 * CHUNK)
    for start in range(0, len(items), CHUNK):
        yield start, items[start:start + CHUNK]
        bar.update(min(CHUNK, len(items) - start))
    bar.close()


def _window(encoding, i: int) -> dict:
    window = {"input_ids": encoding["input_ids"][i], "attention_mask": encoding["attention_mask"][i]}
    if "token_type_ids" in encoding:
        window["token_type_ids"] = encoding["token_type_ids"][i]
    return window


def classification_features(examples: list, tokenizer: PreTrainedTokenizerBase, task: TaskConfig) -> Features:
    features = Features()
    for _, chunk in _chunks(examples, f"tokenizing {task.name}"):
        pairs = chunk[0].text_b is not None if chunk else False
        encoding = tokenizer([ex.text_a for ex in chunk], [ex.text_b for ex in chunk] if pairs else None,
                             truncation=True, max_length=task.max_length)
        for i, ex in enumerate(chunk):
            window = _window(encoding, i)
            window["labels"] = ex.label
            window["feature_index"] = len(features.inputs)
            features.inputs.append(window)
    return features


def token_features(examples: list, tokenizer: PreTrainedTokenizerBase, task: TaskConfig) -> Features:
    """Each word's tag goes on its first sub-token; later sub-tokens are ignored by the loss."""
    features = Features()
    for _, chunk in _chunks(examples, f"tokenizing {task.name}"):
        encoding = tokenizer([list(ex.tokens) for ex in chunk], is_split_into_words=True,
                             truncation=True, max_length=task.max_length)
        for i, ex in enumerate(chunk):
            word_ids = encoding.word_ids(i)
            labels, previous = [], None
            for word in word_ids:
                labels.append(ex.tags[word] if word is not None and word != previous else IGNORE_INDEX)
                previous = word
            window = _window(encoding, i)
            window["labels"] = labels
            window["feature_index"] = len(features.inputs)
            features.inputs.append(window)
            features.word_ids.append(word_ids)
    return features


def qa_features(examples: list, tokenizer: PreTrainedTokenizerBase, task: TaskConfig, train: bool) -> Features:
    """Sliding windows over the context (doc_stride overlap); the question is never truncated.

    For training, a window that does not contain the whole first answer points at [CLS].
    """
    features = Features()
    for start, chunk in _chunks(examples, f"tokenizing {task.name}"):
        encoding = tokenizer(
            [ex.question.lstrip() for ex in chunk], [ex.context for ex in chunk],
            truncation="only_second", max_length=task.max_length, stride=task.doc_stride,
            return_overflowing_tokens=True, return_offsets_mapping=True,
        )
        for i, local_example in enumerate(encoding["overflow_to_sample_mapping"]):
            example = chunk[local_example]
            sequence_ids = encoding.sequence_ids(i)
            offsets = [span if seq == 1 else None
                       for span, seq in zip(encoding["offset_mapping"][i], sequence_ids)]
            window = _window(encoding, i)
            window["feature_index"] = len(features.inputs)
            if train:
                window["start_positions"], window["end_positions"] = _answer_positions(example, offsets)
            features.inputs.append(window)
            features.example_index.append(start + local_example)
            features.offsets.append(offsets)
    return features


def _answer_positions(example, offsets: list[tuple[int, int] | None]) -> tuple[int, int]:
    answer = example.answers[0]
    first_char, last_char = answer.answer_start, answer.answer_end
    context = [i for i, span in enumerate(offsets) if span is not None]
    if not context or offsets[context[0]][0] > first_char or offsets[context[-1]][1] < last_char:
        return 0, 0  # the answer is not (wholly) in this window: predict [CLS]
    start = next(i for i in context if offsets[i][1] > first_char)
    end = next(i for i in reversed(context) if offsets[i][0] < last_char)
    return start, end


def build_features(kind: str, examples: list, tokenizer: PreTrainedTokenizerBase, task: TaskConfig,
                   train: bool) -> Features:
    if kind == "classification":
        return classification_features(examples, tokenizer, task)
    if kind == "token_classification":
        return token_features(examples, tokenizer, task)
    if kind == "question_answering":
        return qa_features(examples, tokenizer, task, train=train)
    raise ValueError(f"config key 'task.kind': unknown kind {kind!r}")
