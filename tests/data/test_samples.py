"""Committed sample slices: present, parseable, counted as their README says, reproducible."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from qbert.data.readers import (
    MNLI_LABELS,
    SST2_LABELS,
    read_conll,
    read_glue_tsv,
    read_squad,
)
from qbert_testing import REAL_DATA

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "qbert" / "data" / "sample"
REAL = REAL_DATA

READERS = {
    "sst2": lambda p: read_glue_tsv(p, ["sentence"], "label", SST2_LABELS),
    "mnli": lambda p: read_glue_tsv(p, ["premise", "hypothesis"], "label", MNLI_LABELS),
    "conll2003": read_conll,
    "squad": read_squad,
}
FILES = ["sst2/train.tsv.gz", "sst2/dev.tsv.gz", "mnli/dev_matched.tsv.gz",
         "mnli/dev_mismatched.tsv.gz", "conll2003/train.txt.gz", "conll2003/valid.txt.gz",
         "conll2003/test.txt.gz", "squad/train-v1.1.json.gz", "squad/dev-v1.1.json.gz"]


def readme_table() -> dict[str, tuple[int, int]]:
    """``file -> (count, bytes)`` from README table rows ``| `file` | 1,234 | unit | 5,678 |``."""
    rows = re.findall(r"^\| `([^`]+)` \| ([\d,]+) \| \w+ \| ([\d,]+) \|",
                      (SAMPLE / "README.md").read_text(encoding="utf-8"), flags=re.M)
    return {f: (int(c.replace(",", "")), int(b.replace(",", ""))) for f, c, b in rows}


def test_readme_lists_every_sample_file():
    assert sorted(readme_table()) == sorted(FILES)
    on_disk = sorted(str(p.relative_to(SAMPLE)) for p in SAMPLE.rglob("*.gz"))
    assert on_disk == sorted(FILES)


@pytest.mark.parametrize("rel", FILES)
def test_sample_parses_with_readme_count(rel):
    count, size = readme_table()[rel]
    path = SAMPLE / rel
    assert len(READERS[rel.split("/")[0]](path)) == count
    assert path.stat().st_size == size


def test_samples_are_small_and_gzip_reproducible():
    assert sum(readme_table()[f][1] for f in FILES) < 2_000_000
    for rel in FILES:
        header = (SAMPLE / rel).read_bytes()[:10]
        assert header[:2] == b"\x1f\x8b" and header[4:8] == b"\0\0\0\0", rel  # gzip, mtime=0


def test_samples_cover_every_label():
    assert {e.label for e in READERS["sst2"](SAMPLE / "sst2/train.tsv.gz")} == {0, 1}
    assert {e.label for e in READERS["mnli"](SAMPLE / "mnli/dev_mismatched.tsv.gz")} == {0, 1, 2}
    assert {t for e in read_conll(SAMPLE / "conll2003/test.txt.gz") for t in e.tags} \
        == set(range(9))


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real data not present at {REAL}")
def test_make_samples_reproduces_committed_bytes(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "experiments" / "make_samples.py"),
                    "--src", str(REAL), "--dst", str(tmp_path)],
                   check=True, capture_output=True, cwd=tmp_path)
    for rel in [*FILES, "README.md"]:
        assert (tmp_path / rel).read_bytes() == (SAMPLE / rel).read_bytes(), rel
