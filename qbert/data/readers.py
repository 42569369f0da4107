"""Strict readers for the task files: GLUE TSV (SST-2, MNLI), CoNLL-2003, SQuAD v1.1 JSON.

Every reader either returns one example per data row/sentence/question or raises
:class:`DataFormatError` naming the file and where in it the problem is; nothing is dropped
silently, because a silently shortened eval set changes the reported numbers.
Plain and gzip-compressed (``.gz`` suffix) files are accepted alike.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

SST2_LABELS: tuple[str, ...] = ("0", "1")  # negative, positive (GLUE file labels)
MNLI_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")  # GLUE hub order
CONLL_TAGS: tuple[str, ...] = (  # HF conll2003 ClassLabel order
    "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC",
)


@dataclass(frozen=True)
class ClassificationExample:
    guid: str
    text_a: str
    text_b: str | None
    label: int  # index into the label tuple the reader was given


@dataclass(frozen=True)
class TokenExample:
    guid: str
    tokens: list[str]
    tags: list[int]  # indices into the tag tuple (CONLL_TAGS by default)


@dataclass(frozen=True)
class Answer:
    text: str
    answer_start: int  # character offset into the context

    @property
    def answer_end(self) -> int:
        """Exclusive end offset: ``context[answer_start:answer_end] == text`` for exact spans."""
        return self.answer_start + len(self.text)


@dataclass(frozen=True)
class QAExample:
    """One SQuAD question. ``answers`` is a tuple of frozen :class:`Answer` (not dicts) so the
    example is immutable and hashable; use ``a.text`` / ``a.answer_start``."""

    id: str
    title: str
    question: str
    context: str
    answers: tuple[Answer, ...]


class DataFormatError(ValueError):
    """A data file (or hub split) does not have the expected layout.

    ``location`` is a 1-based line number (int) or a description such as a JSON path
    (``data[3].paragraphs[1].qas[0]``) or ``row 17``; the message always carries both.
    """

    def __init__(self, path: str | os.PathLike[str], location: int | str, detail: str) -> None:
        self.path = os.fspath(path)
        self.location = location
        self.detail = detail
        where = f"line {location}" if isinstance(location, int) else location
        super().__init__(f"{self.path}, {where}: {detail}")


def _check_exists(path: str | os.PathLike[str]) -> str:
    """Raise FileNotFoundError with a listing of the parent folder, which usually shows the typo
    (e.g. ``dev.tsv`` asked for, ``dev.tsv.gz`` present)."""
    p = os.fspath(path)
    if os.path.isfile(p):
        return p
    if os.path.isdir(p):
        raise IsADirectoryError(errno.EISDIR, f"expected a data file, got a directory "
                                f"containing {sorted(os.listdir(p))}", p)
    parent = os.path.dirname(os.path.abspath(p))
    hint = (f"; {parent} contains {sorted(os.listdir(parent))}" if os.path.isdir(parent)
            else f"; directory {parent} does not exist")
    raise FileNotFoundError(errno.ENOENT, f"data file not found{hint}", p)


def open_text(path: str | os.PathLike[str]) -> IO[str]:
    """Open a plain or ``.gz`` file as UTF-8 text (a leading BOM is dropped).

    ``newline="\\n"`` so that only LF ends a line: a stray CR or U+2028 inside a field stays in
    the field and line numbers agree with ``sed -n``.
    """
    p = _check_exists(path)
    if p.endswith(".gz"):
        return gzip.open(p, "rt", encoding="utf-8-sig", newline="\n")
    return open(p, encoding="utf-8-sig", newline="\n")


# What a truncated or corrupt .gz raises while it is read (none of them names the file).
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _gzip_detail(error: BaseException) -> str:
    return (f"truncated or corrupt gzip file ({type(error).__name__}: {error or 'ends early'}); "
            "re-copy or re-download it")


def _lines_naming_gzip_damage(f, p: str) -> Iterator[bytes]:
    lineno = 0
    try:
        for lineno, raw in enumerate(f, start=1):
            yield raw
    except GZIP_ERRORS as e:
        raise DataFormatError(p, lineno + 1, _gzip_detail(e)) from None


def _numbered_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without its LF/CRLF ending).

    Decodes line by line from bytes so that invalid UTF-8 is reported on the right line, and a
    damaged .gz names the file and the line where the damage starts.
    """
    p = _check_exists(path)
    opener = gzip.open if p.endswith(".gz") else open
    with opener(p, "rb") as f:
        for lineno, raw in enumerate(_lines_naming_gzip_damage(f, p), start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(p, lineno, f"not valid UTF-8 ({e.reason} at byte "
                                      f"{e.start} of the line)") from None
            yield lineno, line.rstrip("\n").removesuffix("\r")


def _label_index(path: str, lineno: int | str, value: str, labels: Sequence[str]) -> int:
    try:
        return list(labels).index(value)
    except ValueError:
        raise DataFormatError(path, lineno, f"expected a label in {list(labels)}, "
                              f"found {value!r}") from None


def read_glue_tsv(path: str | os.PathLike[str], text_columns: Sequence[str],
                  label_column: str, labels: Sequence[str]) -> list[ClassificationExample]:
    """Read a GLUE-style TSV with a header row (SST-2: ``sentence``/``label``; MNLI:
    ``premise``/``hypothesis``/``label``).

    GLUE TSVs use no quoting: quote characters are literal text (csv-module quoting would
    alter MNLI rows that start with ``"``), so lines are split on tabs only. Field text is kept
    as is (SST-2 sentences end in a space); only the label is stripped before lookup.
    """
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"text_columns must name 1 or 2 columns, got {list(text_columns)}")
    p = os.fspath(path)
    name = os.path.basename(p)
    lines = _numbered_lines(p)
    header_line = next(lines, None)
    if header_line is None:
        raise DataFormatError(p, 1, "expected a header row, found an empty file")
    header = header_line[1].split("\t")
    if len(set(header)) != len(header):
        raise DataFormatError(p, 1, f"duplicate column names in header {header}")
    cols = []
    for col in [*text_columns, label_column]:
        if col not in header:
            raise DataFormatError(p, 1, f"missing column {col!r}; header has {header}")
        cols.append(header.index(col))

    examples = []
    for lineno, line in lines:
        fields = line.split("\t")
        if len(fields) != len(header):
            found = "a blank line" if line == "" else f"{len(fields)}"
            raise DataFormatError(p, lineno, f"expected {len(header)} tab-separated fields "
                                  f"({', '.join(header)}), found {found}")
        texts = [fields[i] for i in cols[:-1]]
        label = _label_index(p, lineno, fields[cols[-1]].strip(), labels)
        examples.append(ClassificationExample(
            guid=f"{name}:{lineno}", text_a=texts[0],
            text_b=texts[1] if len(texts) > 1 else None, label=label))
    return examples


_COLUMN_SPLIT = re.compile(r"[ \t]+")  # not str.split(): that would also split on U+00A0


def read_conll(path: str | os.PathLike[str],
               labels: Sequence[str] = CONLL_TAGS) -> list[TokenExample]:
    """Read CoNLL-2003-style columns: token first, NER tag last, blank line between sentences.

    ``-DOCSTART-`` lines are document separators and are skipped. All token lines must have the
    same number of columns as the first one (4 in the standard file), so a lost column is caught
    rather than shifting the tag. ``guid`` is ``file:line`` of the sentence's first token.
    """
    p = os.fspath(path)
    name = os.path.basename(p)
    examples: list[TokenExample] = []
    tokens: list[str] = []
    tags: list[int] = []
    start = 0
    width: tuple[int, int] | None = None  # (columns, line where first seen)

    def flush() -> None:
        if tokens:
            examples.append(TokenExample(f"{name}:{start}", list(tokens), list(tags)))
            tokens.clear()
            tags.clear()

    for lineno, line in _numbered_lines(p):
        stripped = line.strip(" \t")
        if not stripped:
            flush()
            continue
        cols = _COLUMN_SPLIT.split(stripped)
        if cols[0] == "-DOCSTART-":
            flush()  # a document boundary always ends the sentence
            continue
        if width is None:
            if len(cols) < 2:
                raise DataFormatError(p, lineno, "expected at least 2 space-separated columns "
                                      f"(token ... tag), found 1: {line!r}")
            width = (len(cols), lineno)
        elif len(cols) != width[0]:
            raise DataFormatError(p, lineno, f"expected {width[0]} space-separated columns "
                                  f"(as on line {width[1]}), found {len(cols)}: {line!r}")
        if not tokens:
            start = lineno
        tokens.append(cols[0])
        tags.append(_label_index(p, lineno, cols[-1], labels))
    flush()
    return examples


def check_answer_span(context: str, text: str, start: Any) -> str | None:
    """Return why an answer span is invalid for ``context``, or None if it is fine.

    The span must hold the answer text exactly (``context[start:end] == text``): training reads
    the span, so an offset that points elsewhere would train on the wrong tokens. Every answer
    of the real SQuAD v1.1 train (87,599) and dev (34,726) files passes.
    """
    if not isinstance(start, int) or isinstance(start, bool):
        return f"expected an integer answer_start, found {start!r}"
    if not text:
        return "expected a non-empty answer text, found ''"
    if start < 0 or start + len(text) > len(context):
        return (f"answer_start {start} + len(text) {len(text)} is outside the context "
                f"(length {len(context)})")
    if context[start:start + len(text)] != text:
        found = context.find(text)
        where = f"; the text occurs at {found}" if found >= 0 else "; the text does not occur in the context"
        return (f"answer_start {start} points at {context[start:start + len(text)]!r}, not at the answer "
                f"text {text!r}{where}")
    return None


def _get(obj: Any, key: str, kind: type, path: str, where: str) -> Any:
    """Fetch ``obj[key]`` and check its JSON type, or raise naming the JSON path."""
    if not isinstance(obj, dict):
        raise DataFormatError(path, where, f"expected an object, found {type(obj).__name__}")
    if key not in obj:
        raise DataFormatError(path, where, f"expected key {key!r}, found keys {sorted(obj)}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataFormatError(path, f"{where}.{key}", f"expected {kind.__name__}, "
                              f"found {type(value).__name__}")
    return value


def read_squad(path: str | os.PathLike[str]) -> list[QAExample]:
    """Read the SQuAD v1.1 JSON layout, one :class:`QAExample` per question.

    Validates the whole structure; errors name the JSON path (``data[3].paragraphs[1].qas[0]``).
    Question ids must be unique because predictions are keyed by id.
    """
    p = os.fspath(path)
    with open_text(p) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise DataFormatError(p, f"line {e.lineno} column {e.colno}",
                                  f"invalid JSON: {e.msg}") from None
        except UnicodeDecodeError as e:
            raise DataFormatError(p, f"byte {e.start}", f"not valid UTF-8 ({e.reason})") from None
        except GZIP_ERRORS as e:
            raise DataFormatError(p, "gzip stream", _gzip_detail(e)) from None
    examples: list[QAExample] = []
    seen: dict[str, str] = {}
    for i, article in enumerate(_get(doc, "data", list, p, "top level")):
        a_where = f"data[{i}]"
        title = _get(article, "title", str, p, a_where)
        for j, para in enumerate(_get(article, "paragraphs", list, p, a_where)):
            p_where = f"{a_where}.paragraphs[{j}]"
            context = _get(para, "context", str, p, p_where)
            for k, qa in enumerate(_get(para, "qas", list, p, p_where)):
                q_where = f"{p_where}.qas[{k}]"
                qid = _get(qa, "id", str, p, q_where)
                if qid in seen:
                    raise DataFormatError(p, q_where, f"duplicate question id {qid!r} "
                                          f"(first at {seen[qid]})")
                seen[qid] = q_where
                question = _get(qa, "question", str, p, q_where)
                raw_answers = _get(qa, "answers", list, p, q_where)
                if not raw_answers:
                    extra = " (SQuAD v2.0 unanswerable question?)" if "is_impossible" in qa else ""
                    raise DataFormatError(p, f"{q_where}.answers",
                                          f"expected at least one answer, found none{extra}")
                answers = []
                for m, ans in enumerate(raw_answers):
                    an_where = f"{q_where}.answers[{m}]"
                    text = _get(ans, "text", str, p, an_where)
                    start = _get(ans, "answer_start", int, p, an_where)
                    problem = check_answer_span(context, text, start)
                    if problem:
                        raise DataFormatError(p, an_where, problem)
                    answers.append(Answer(text, start))
                examples.append(QAExample(qid, title, question, context, tuple(answers)))
    return examples
