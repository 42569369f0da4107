"""Readers: parse plain and .gz files, and fail loudly (file + line / JSON path) on bad input."""

from __future__ import annotations

import copy
import gzip
import json
import time
from pathlib import Path

import pytest

from qbert.data.readers import (
    CONLL_TAGS,
    MNLI_LABELS,
    SST2_LABELS,
    Answer,
    DataFormatError,
    open_text,
    read_conll,
    read_glue_tsv,
    read_squad,
)
from qbert_testing import REAL_DATA

REAL = REAL_DATA


def write(path: Path, text: str) -> Path:
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def sst2(path: Path):
    return read_glue_tsv(path, ["sentence"], "label", SST2_LABELS)


def mnli(path: Path):
    return read_glue_tsv(path, ["premise", "hypothesis"], "label", MNLI_LABELS)


# --- GLUE TSV ---------------------------------------------------------------------------------

SST2_TEXT = 'sentence\tlabel\nit \'s a charming journey . \t1\n"Hello," she said .\t0\n'


@pytest.mark.parametrize("name", ["train.tsv", "train.tsv.gz"])
def test_sst2_plain_and_gz(tmp_path, name):
    ex = sst2(write(tmp_path / name, SST2_TEXT))
    assert [e.label for e in ex] == [1, 0]
    assert ex[0].text_a == "it 's a charming journey . "  # inner field whitespace kept
    assert ex[1].text_a == '"Hello," she said .'  # no quoting: quotes are literal text
    assert ex[0].text_b is None
    assert [e.guid for e in ex] == [f"{name}:2", f"{name}:3"]


def test_mnli_columns_by_header_name_and_crlf(tmp_path):
    text = ("label\tpairID\thypothesis\tpremise\r\n"
            "neutral\t1n\tH one\tP one\r\ncontradiction\t2c\t\"H two\tP two\r\n")
    ex = mnli(write(tmp_path / "dev_matched.tsv", text))
    assert [(e.text_a, e.text_b, e.label) for e in ex] == [
        ("P one", "H one", 1), ("P two", '"H two', 2)]


def test_wrong_field_count_names_file_and_line(tmp_path):
    path = write(tmp_path / "dev.tsv.gz", "sentence\tlabel\ngood\t1\nbad\textra\t0\n")
    with pytest.raises(DataFormatError) as err:
        sst2(path)
    msg = str(err.value)
    assert "dev.tsv.gz" in msg and "line 3" in msg and "expected 2" in msg and "found 3" in msg
    assert err.value.location == 3


def test_blank_line_is_an_error_not_skipped(tmp_path):
    path = write(tmp_path / "dev.tsv", "sentence\tlabel\ngood\t1\n\nfine\t0\n")
    with pytest.raises(DataFormatError, match=r"dev\.tsv, line 3: .*blank line"):
        sst2(path)


def test_unknown_label(tmp_path):
    path = write(tmp_path / "dev_mismatched.tsv", "pairID\tpremise\thypothesis\tlabel\n"
                 "1\tp\th\tentailment\n2\tp\th\t-\n")
    with pytest.raises(DataFormatError, match=r"dev_mismatched\.tsv, line 3: .*found '-'"):
        mnli(path)


def test_missing_header_column(tmp_path):
    path = write(tmp_path / "train.tsv", "text\tlabel\nx\t1\n")
    with pytest.raises(DataFormatError) as err:
        sst2(path)
    assert "line 1" in str(err.value) and "'sentence'" in str(err.value)
    assert "['text', 'label']" in str(err.value)


def test_empty_file(tmp_path):
    with pytest.raises(DataFormatError, match="line 1: expected a header row"):
        sst2(write(tmp_path / "train.tsv", ""))


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"sentence\tlabel\nok\t1\nbad \xff byte\t0\n")
    with pytest.raises(DataFormatError, match=r"train\.tsv, line 3: not valid UTF-8"):
        sst2(path)


def test_missing_file_lists_directory(tmp_path):
    write(tmp_path / "dev.tsv.gz", SST2_TEXT)
    with pytest.raises(FileNotFoundError) as err:
        sst2(tmp_path / "dev.tsv")
    assert str(tmp_path / "dev.tsv") in str(err.value) and "dev.tsv.gz" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_conll(tmp_path / "nowhere" / "train.txt")


def test_open_text_plain_and_gz(tmp_path):
    for name in ["a.txt", "a.txt.gz"]:
        with open_text(write(tmp_path / name, "\ufeffhé\nllo\n")) as f:
            assert f.read() == "hé\nllo\n"  # BOM dropped, UTF-8 decoded


# --- CoNLL ------------------------------------------------------------------------------------

CONLL_TEXT = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC"""  # no final newline, DOCSTART right after a sentence


@pytest.mark.parametrize("name", ["train.txt", "train.txt.gz"])
def test_conll_parse(tmp_path, name):
    ex = read_conll(write(tmp_path / name, CONLL_TEXT))
    assert [e.tokens for e in ex] == [["EU", "rejects", "German"], ["Peter", "Blackburn"],
                                      ["BRUSSELS"]]
    assert [[CONLL_TAGS[t] for t in e.tags] for e in ex] == [
        ["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert [e.guid for e in ex] == [f"{name}:3", f"{name}:8", f"{name}:12"]


def test_conll_too_few_columns(tmp_path):
    path = write(tmp_path / "valid.txt", "EU NNP B-NP B-ORG\nrejects VBZ O\n")
    with pytest.raises(DataFormatError, match=r"valid\.txt, line 2: expected 4 .*found 3"):
        read_conll(path)
    with pytest.raises(DataFormatError, match=r"line 1: expected at least 2"):
        read_conll(write(tmp_path / "one.txt", "EU\n"))


def test_conll_unknown_tag(tmp_path):
    path = write(tmp_path / "test.txt.gz", "EU NNP B-NP B-ORG\n\nParis NNP B-NP B-CITY\n")
    with pytest.raises(DataFormatError, match=r"test\.txt\.gz, line 3: .*'B-CITY'"):
        read_conll(path)


# --- SQuAD ------------------------------------------------------------------------------------

SQUAD = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
    {"context": "The cat sat.", "qas": [
        {"id": "q1", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0},
                                                         {"text": "cat", "answer_start": 4}]}]},
    {"context": "It rained.", "qas": [
        {"id": "q2", "question": "What happened?",
         "answers": [{"text": "rained", "answer_start": 3}]}]}]}]}


def write_squad(tmp_path: Path, doc, name: str = "dev-v1.1.json.gz") -> Path:
    return write(tmp_path / name, json.dumps(doc))


@pytest.mark.parametrize("name", ["dev-v1.1.json", "dev-v1.1.json.gz"])
def test_squad_parse(tmp_path, name):
    ex = read_squad(write_squad(tmp_path, SQUAD, name))
    assert [e.id for e in ex] == ["q1", "q2"]
    assert ex[0].answers == (Answer("The cat", 0), Answer("cat", 4))
    assert ex[0].context[ex[0].answers[1].answer_start:ex[0].answers[1].answer_end] == "cat"
    assert ex[1].title == "T" and ex[1].question == "What happened?"


def broken(edit) -> dict:
    doc = copy.deepcopy(SQUAD)
    edit(doc)
    return doc


@pytest.mark.parametrize("edit, where, what", [
    (lambda d: d["data"][0]["paragraphs"][1]["qas"][0].pop("question"),
     "data[0].paragraphs[1].qas[0]", "expected key 'question'"),
    (lambda d: d["data"][0]["paragraphs"][1]["qas"][0]["answers"][0].update(answer_start=8),
     "data[0].paragraphs[1].qas[0].answers[0]", "outside the context"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][1].update(answer_start=5),
     "data[0].paragraphs[0].qas[0].answers[1]", "points at 'at ', not at the answer text 'cat'; the text occurs at 4"),
    (lambda d: d["data"][0]["paragraphs"][0].update(context=7),
     "data[0].paragraphs[0].context", "expected str, found int"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start="0"),
     "data[0].paragraphs[0].qas[0].answers[0].answer_start", "expected int"),
    (lambda d: d["data"][0]["paragraphs"][1]["qas"][0].update(id="q1"),
     "data[0].paragraphs[1].qas[0]", "duplicate question id 'q1'"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(answers=[], is_impossible=True),
     "data[0].paragraphs[0].qas[0].answers", "v2.0"),
    (lambda d: d.pop("data"), "top level", "expected key 'data'"),
])
def test_squad_errors_name_json_path(tmp_path, edit, where, what):
    with pytest.raises(DataFormatError) as err:
        read_squad(write_squad(tmp_path, broken(edit)))
    assert "dev-v1.1.json.gz" in str(err.value)
    assert f", {where}:" in str(err.value) and what in str(err.value)


def test_squad_invalid_json(tmp_path):
    path = write(tmp_path / "train-v1.1.json", '{"data": [\n  {"title": "x",}\n]}')
    with pytest.raises(DataFormatError, match=r"train-v1\.1\.json, line 2 column"):
        read_squad(path)


# --- the real data, with the counts its README states ------------------------------------------

REAL_COUNTS = [
    ("sst2/train.tsv.gz", sst2, 67_349), ("sst2/dev.tsv.gz", sst2, 872),
    ("mnli/dev_matched.tsv.gz", mnli, 9_815), ("mnli/dev_mismatched.tsv.gz", mnli, 9_832),
    ("conll2003/train.txt.gz", read_conll, 14_041), ("conll2003/valid.txt.gz", read_conll, 3_250),
    ("conll2003/test.txt.gz", read_conll, 3_453),
    ("squad/train-v1.1.json.gz", read_squad, 87_599),
    ("squad/dev-v1.1.json.gz", read_squad, 10_570),
]


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real data not present at {REAL}")
def test_real_data_counts():
    start = time.perf_counter()
    for rel, reader, expected in REAL_COUNTS:
        assert len(reader(REAL / rel)) == expected, rel
    mnli_matched = [e.label for e in mnli(REAL / "mnli/dev_matched.tsv.gz")]
    assert [mnli_matched.count(i) for i in range(3)] == [3_479, 3_123, 3_213]  # README
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_gzip_names_its_file_and_line(tmp_path, damage):
    text = SST2_TEXT + "".join(f"sentence number {i} .\t{i % 2}\n" for i in range(20000))
    data = gzip.compress(text.encode(), mtime=0)
    path = tmp_path / "train.tsv.gz"
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data[:200] + bytes(b ^ 0x5A for b in data[200:400]) + data[400:])
    with pytest.raises(DataFormatError) as err:
        sst2(path)
    assert str(path) in str(err.value) and "gzip" in str(err.value) and "line " in str(err.value)


def test_a_damaged_squad_gzip_or_bad_utf8_names_its_file(tmp_path):
    doc = json.dumps({"version": "1.1", "data": []}).encode()
    gz = tmp_path / "dev-v1.1.json.gz"
    gz.write_bytes(gzip.compress(doc * 50, mtime=0)[:-12])
    with pytest.raises(DataFormatError, match="gzip"):
        read_squad(gz)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"version": "1.1", "data": [{"title": "\xff"}]}')
    with pytest.raises(DataFormatError, match="UTF-8") as err:
        read_squad(bad)
    assert str(bad) in str(err.value)
