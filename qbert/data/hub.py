"""Convert Hugging Face ``datasets`` rows into the reader dataclasses of :mod:`.readers`.

Hub layouts handled:
  glue/sst2          {sentence, label, idx}
  glue/mnli          {premise, hypothesis, label, idx}
  eriktks/conll2003  {id, tokens, ner_tags, ...}
  rajpurkar/squad    {id, title, context, question, answers: {text: [...], answer_start: [...]}}

Converters accept any iterable of mappings (a ``datasets.Dataset`` or a list of dicts) and are
as strict as the file readers: a bad row raises :class:`DataFormatError` naming ``row N``.
When the rows carry ``ClassLabel`` features, their names are checked against the label order
this package assumes, so a re-ordered hub release cannot silently permute the labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .readers import (
    CONLL_TAGS,
    MNLI_LABELS,
    Answer,
    ClassificationExample,
    DataFormatError,
    QAExample,
    TokenExample,
    check_answer_span,
)

# Dataset ids as passed to datasets.load_dataset(*ids, split=...).
HUB_IDS: dict[str, tuple[str, ...]] = {
    "sst2": ("glue", "sst2"),
    "mnli": ("glue", "mnli"),
    "conll2003": ("eriktks/conll2003",),
    "squad": ("rajpurkar/squad",),
}
# Labelled splits only: GLUE test splits carry label -1, which the converters reject.
HUB_SPLITS: dict[str, tuple[str, ...]] = {
    "sst2": ("train", "validation"),
    "mnli": ("train", "validation_matched", "validation_mismatched"),
    "conll2003": ("train", "validation", "test"),
    "squad": ("train", "validation"),
}
# ClassLabel names on the hub, in the index order our label tuples use.
SST2_HUB_NAMES: tuple[str, ...] = ("negative", "positive")  # == SST2_LABELS "0", "1"
MNLI_HUB_NAMES: tuple[str, ...] = MNLI_LABELS


def _classlabel_names(rows: Any, column: str) -> list[str] | None:
    """Names of a ClassLabel column (or of a sequence of ClassLabel), if the rows carry them."""
    feature = (getattr(rows, "features", None) or {}).get(column)
    feature = getattr(feature, "feature", feature)  # Sequence/List(ClassLabel) -> ClassLabel
    names = getattr(feature, "names", None)
    return list(names) if names is not None else None


def _check_names(rows: Any, column: str, expected: Sequence[str], source: str) -> None:
    names = _classlabel_names(rows, column)
    if names is not None and names != list(expected):
        raise DataFormatError(source, f"features[{column!r}]", f"expected ClassLabel names "
                              f"{list(expected)}, found {names}")


def _field(row: Mapping[str, Any], key: str, kind: type, source: str, n: int) -> Any:
    if key not in row:
        raise DataFormatError(source, f"row {n}", f"expected column {key!r}, "
                              f"found columns {sorted(row)}")
    value = row[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataFormatError(source, f"row {n}", f"expected {key!r} to be {kind.__name__}, "
                              f"found {value!r}")
    return value


def _label(value: int, num_labels: int, source: str, n: int, column: str = "label") -> int:
    if not 0 <= value < num_labels:
        hint = " (-1 marks an unlabelled test split)" if value == -1 else ""
        raise DataFormatError(source, f"row {n}", f"expected {column} in 0..{num_labels - 1}, "
                              f"found {value}{hint}")
    return value


def glue_from_hub(rows: Iterable[Mapping[str, Any]], text_columns: Sequence[str],
                  label_names: Sequence[str], source: str) -> list[ClassificationExample]:
    """Generic GLUE converter; ``guid`` is ``f"{source}:{idx}"`` (row position if no ``idx``)."""
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"text_columns must name 1 or 2 columns, got {list(text_columns)}")
    _check_names(rows, "label", label_names, source)
    examples = []
    for n, row in enumerate(rows):
        texts = [_field(row, c, str, source, n) for c in text_columns]
        label = _label(_field(row, "label", int, source, n), len(label_names), source, n)
        idx = _field(row, "idx", int, source, n) if "idx" in row else n
        examples.append(ClassificationExample(
            guid=f"{source}:{idx}", text_a=texts[0],
            text_b=texts[1] if len(texts) > 1 else None, label=label))
    return examples


def sst2_from_hub(rows: Iterable[Mapping[str, Any]],
                  source: str = "glue/sst2") -> list[ClassificationExample]:
    return glue_from_hub(rows, ["sentence"], SST2_HUB_NAMES, source)


def mnli_from_hub(rows: Iterable[Mapping[str, Any]],
                  source: str = "glue/mnli") -> list[ClassificationExample]:
    return glue_from_hub(rows, ["premise", "hypothesis"], MNLI_HUB_NAMES, source)


def conll_from_hub(rows: Iterable[Mapping[str, Any]],
                   source: str = "eriktks/conll2003") -> list[TokenExample]:
    """Tags stay integer ids in :data:`CONLL_TAGS` order (checked against ClassLabel names)."""
    _check_names(rows, "ner_tags", CONLL_TAGS, source)
    examples = []
    for n, row in enumerate(rows):
        tokens = list(_field(row, "tokens", list, source, n))
        tags = list(_field(row, "ner_tags", list, source, n))
        if len(tokens) != len(tags):
            raise DataFormatError(source, f"row {n}", f"expected as many ner_tags as tokens "
                                  f"({len(tokens)}), found {len(tags)}")
        if not tokens:  # the readers never yield empty sentences; say so instead of skipping
            raise DataFormatError(source, f"row {n}", "expected a non-empty sentence")
        for t in tags:
            if not isinstance(t, int) or isinstance(t, bool):
                raise DataFormatError(source, f"row {n}", f"expected integer tags, found {t!r}")
            _label(t, len(CONLL_TAGS), source, n, column="ner_tags")
        row_id = row.get("id", n)
        examples.append(TokenExample(f"{source}:{row_id}", [str(t) for t in tokens], tags))
    return examples


def squad_from_hub(rows: Iterable[Mapping[str, Any]],
                   source: str = "rajpurkar/squad") -> list[QAExample]:
    """``answers`` columns ``{text: [...], answer_start: [...]}`` become a tuple of Answer."""
    examples = []
    for n, row in enumerate(rows):
        qid = _field(row, "id", str, source, n)
        context = _field(row, "context", str, source, n)
        answers = _field(row, "answers", Mapping, source, n)
        texts, starts = answers.get("text"), answers.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) \
                or len(texts) != len(starts) or not texts:
            raise DataFormatError(source, f"row {n} (id {qid})", "expected answers with equally "
                                  f"long, non-empty text/answer_start lists, found {answers!r}")
        for text, start in zip(texts, starts):
            problem = check_answer_span(context, text, start) if isinstance(text, str) \
                else f"expected answer text to be str, found {text!r}"
            if problem:
                raise DataFormatError(source, f"row {n} (id {qid})", problem)
        examples.append(QAExample(
            id=qid, title=_field(row, "title", str, source, n),
            question=_field(row, "question", str, source, n), context=context,
            answers=tuple(Answer(t, s) for t, s in zip(texts, starts))))
    return examples


_CONVERTERS = {"sst2": sst2_from_hub, "mnli": mnli_from_hub,
               "conll2003": conll_from_hub, "squad": squad_from_hub}
TASK_ALIASES: dict[str, str] = {"conll03": "conll2003"}  # the Hydra task name (conf/task)


def load_hub_split(task: str, split: str) -> list[Any]:
    """Download (or read from the HF cache) one split and convert it.

    ``task`` is a key of :data:`HUB_IDS` or :data:`TASK_ALIASES`; ``split`` uses hub names
    (``validation``, ``validation_matched`` ...). Needs network access or a populated HF cache.
    """
    task = TASK_ALIASES.get(task, task)
    if task not in HUB_IDS:
        raise ValueError(f"unknown task {task!r}; expected one of "
                         f"{sorted([*HUB_IDS, *TASK_ALIASES])}")
    if split not in HUB_SPLITS[task]:
        raise ValueError(f"unknown or unlabelled split {split!r} for {task}; "
                         f"expected one of {list(HUB_SPLITS[task])}")
    import datasets  # deferred: importing datasets is slow and the file readers never need it

    ids = HUB_IDS[task]
    rows = datasets.load_dataset(*ids, split=split)
    return _CONVERTERS[task](rows, source=f"{'/'.join(ids)}/{split}")
