"""Cut the small committed data slices in qbert/data/sample/ from the full real data.

    python experiments/make_samples.py --src ../shared/data --dst qbert/data/sample

Deterministic: fixed seeds, source bytes copied verbatim (no re-serialisation of TSV/CoNLL
lines), and gzip written with mtime=0 and no file name, so re-running gives identical bytes
(given the same zlib). Also regenerates the README.md that tests/data/test_samples.py checks.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from qbert.data.readers import (  # noqa: E402
    MNLI_LABELS,
    SST2_LABELS,
    read_conll,
    read_glue_tsv,
    read_squad,
)

SEED = 0
SST2_TRAIN_ROWS, MNLI_MATCHED_ROWS, MNLI_MISMATCHED_ROWS = 4000, 2000, 1000
CONLL_SENTENCES = {"train.txt.gz": 1000, "valid.txt.gz": 300, "test.txt.gz": 300}
SQUAD_QUESTIONS = {"train-v1.1.json.gz": 600, "dev-v1.1.json.gz": 300}


def read_gz_lines(path: Path) -> list[str]:
    """Lines without their LF, split on LF only (as the readers do; not str.splitlines, which
    would also split on U+2028 etc.). The source files all end in LF."""
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    if not text.endswith("\n"):
        raise ValueError(f"{path}: expected a final newline")
    return text.split("\n")[:-1]


def write_gz(path: Path, text: str) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(text.encode("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def cut_tsv(src: Path, dst: Path, n: int | None) -> str:
    """Header + first ``n`` data rows after random.Random(SEED).shuffle (all rows if None)."""
    header, *rows = read_gz_lines(src)
    if n is None:
        how = f"all {len(rows):,} data rows, original order"
    else:
        random.Random(SEED).shuffle(rows)
        rows = rows[:n]
        how = (f"header + first {n:,} data rows after `random.Random({SEED}).shuffle` "
               "of all data rows (shuffled order kept)")
    write_gz(dst, "".join(line + "\n" for line in [header, *rows]))
    return how


def cut_conll(src: Path, dst: Path, n: int) -> str:
    """Leading lines up to and including the blank line that ends sentence ``n``."""
    out, done, in_sentence = [], 0, False
    for line in read_gz_lines(src):
        out.append(line)
        if line.strip() and not line.startswith("-DOCSTART-"):
            in_sentence = True
        elif not line.strip() and in_sentence:
            in_sentence, done = False, done + 1
            if done == n:
                break
    write_gz(dst, "".join(line + "\n" for line in out))
    return f"first {n:,} sentences, `-DOCSTART-` lines and blank lines kept as in the source"


def cut_squad(src: Path, dst: Path, n: int) -> str:
    """Whole paragraphs, in order, from the first articles until at least ``n`` questions."""
    doc = json.loads(gzip.decompress(src.read_bytes()).decode("utf-8"))
    data, count = [], 0
    for article in doc["data"]:
        if count >= n:
            break
        paragraphs = []
        for para in article["paragraphs"]:
            if count >= n:
                break
            paragraphs.append(para)
            count += len(para["qas"])
        data.append({**article, "paragraphs": paragraphs})
    # json.dumps defaults reproduce the source files' own serialisation byte for byte.
    write_gz(dst, json.dumps({"version": doc["version"], "data": data}))
    return (f"whole paragraphs in source order from the first {len(data)} articles, stopping "
            f"once at least {n:,} questions are in (the last article is cut at a paragraph)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--dst", type=Path, default=Path("qbert/data/sample"))
    args = ap.parse_args(argv)
    src, dst = args.src, args.dst

    rows: list[tuple[str, int, str, str]] = []  # (file, count, unit, how)
    for name, n in [("train.tsv.gz", SST2_TRAIN_ROWS), ("dev.tsv.gz", None)]:
        how = cut_tsv(src / "sst2" / name, dst / "sst2" / name, n)
        count = len(read_glue_tsv(dst / "sst2" / name, ["sentence"], "label", SST2_LABELS))
        rows.append((f"sst2/{name}", count, "sentences", how))
    for name, n in [("dev_matched.tsv.gz", MNLI_MATCHED_ROWS),
                    ("dev_mismatched.tsv.gz", MNLI_MISMATCHED_ROWS)]:
        how = cut_tsv(src / "mnli" / name, dst / "mnli" / name, n)
        count = len(read_glue_tsv(dst / "mnli" / name, ["premise", "hypothesis"], "label",
                                  MNLI_LABELS))
        rows.append((f"mnli/{name}", count, "pairs", how))
    for name, n in CONLL_SENTENCES.items():
        how = cut_conll(src / "conll2003" / name, dst / "conll2003" / name, n)
        count = len(read_conll(dst / "conll2003" / name))
        rows.append((f"conll2003/{name}", count, "sentences", how))
    for name, n in SQUAD_QUESTIONS.items():
        how = cut_squad(src / "squad" / name, dst / "squad" / name, n)
        count = len(read_squad(dst / "squad" / name))
        rows.append((f"squad/{name}", count, "questions", how))

    sizes = {f: (dst / f).stat().st_size for f, *_ in rows}
    table = "\n".join(f"| `{f}` | {c:,} | {u} | {sizes[f]:,} | {h} |" for f, c, u, h in rows)
    readme = f"""# Sample data slices

Small slices of the real task data, committed so that tests and the embedded demo run without
the full data or hub access. Same layout, file names and formats as the full copies
(`../shared/data` beside the checkout, see its README.md): gzip-compressed GLUE TSVs with header, CoNLL-2003
4-column files, SQuAD v1.1 JSON. Lines (TSV, CoNLL) are copied byte for byte from the source;
SQuAD articles/paragraphs are copied unchanged.

Provenance: GLUE SST-2 train/dev and MNLI dev_matched/dev_mismatched (as distributed with
GLUE; MNLI rows labelled `-` were already removed upstream), CoNLL-2003 English NER
(Reuters RCV1, research use), SQuAD v1.1 (CC BY-SA 4.0; train ids are the synthetic
`train-AAA-PPP-QQ` ids of the source copy, dev ids are official).

Regenerate (deterministic; gzip with mtime=0 and no stored file name, level 9):

    python experiments/make_samples.py --src ../shared/data --dst qbert/data/sample

| file | count | unit | bytes | how it was cut |
|---|---|---|---|---|
{table}

Total: {sum(sizes.values()):,} bytes. Counts are what the `qbert.data.readers` readers return;
`tests/data/test_samples.py` checks them against this table.
"""
    (dst / "README.md").write_text(readme, encoding="utf-8")
    print(readme)


if __name__ == "__main__":
    main()
