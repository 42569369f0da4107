"""Issue #16 ("Nothing silent, nothing lost"): a re-runnable catalogue of bad inputs and faults.

Every case runs the real command line (``python -m qbert.cli``, ``python -m qbert.report.cli``,
``python -m qbert.export.cli``; the packed-file loader, a Python API, through a three-line driver)
as a subprocess, in a fresh folder of its own, on the tiny model and the committed sample data
(a few batches: each case takes seconds), and classifies what the user gets:

  refused  non-zero exit, and the output names what the case damaged (each case declares the
           substrings a clear message must contain: the key, file, line or field)
  unclear  non-zero exit without naming it
  silent   exit 0 although the input was bad (for a case a correct run refuses), or a recovery
           that never says what it skipped or recomputed
  crash    a Python traceback reaches the user, or work is lost (a finished job recomputed, a
           checkpoint ignored, training thrown away for a fault that was knowable before it)
  ok       a fault-recovery case ended as it should (exit 0, the damage named, nothing lost):
           a killed sweep resumed, a damaged cache recomputed, a damaged results file skipped

Cases that ``expect`` recovery (``recover``) are ``ok`` or ``silent``/``crash``; cases that expect a
refusal (``refuse``) are ``refused`` or ``unclear``/``silent``/``crash``; ``either`` accepts a
named refusal or a named recovery. Shared inputs (a finished tiny sweep, a killed one, a
Q-BERT MP run with its Hessian cache and packed file) are built once per invocation and copied
into each case's folder.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 19 python experiments/fault_cases.py
    python experiments/fault_cases.py --list
    python experiments/fault_cases.py --only data,p_truncated --keep   # classes or case ids (globs)

Writes ``experiments/results/fault_cases.json`` (per case: id, class, what, command, exit code,
classification, the first lines of the message, wall and CPU seconds; the counts) when the whole
catalogue ran, ``--out`` otherwise, and prints a summary table.
"""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "qbert" / "data" / "sample"
RESULTS = REPO / "experiments" / "results" / "fault_cases.json"
PY = sys.executable

# The smallest real run (tests/qbert_testing.py's FAST): a random 2-layer BERT of width 32, a few
# batches of the committed sample.
FAST = ["model=tiny", "trainer=debug", "data.source=sample", "data.max_train_samples=64",
        "data.max_eval_samples=48", "optim.batch_size=8", "optim.eval_batch_size=16"]
HESSIAN = ["hessian.fraction=0.5", "hessian.runs=2", "hessian.batch_size=8", "hessian.max_iters=10",
           "hessian.plots=false"]
MP = ["quant=qbert_mp", "quant.groups=32", *HESSIAN]
TRACEBACK = "Traceback (most recent call last)"
CLASSES = ("config", "data", "sweep-resume", "report", "hessian", "packed", "weights", "kill")


# --------------------------------------------------------------------------------------------
# running commands


@dataclass
class Run:
    cmd: list[str]
    rc: int
    out: str
    wall: float
    cpu: float


@dataclass
class Outcome:
    """What a case observed: the run that decides it (the last one) and what the case checked."""

    run: Run
    lost: list[str] = field(default_factory=list)  # work lost: makes it a crash
    wrong: list[str] = field(default_factory=list)  # a bad input taken as good: makes it silent
    steps: list[Run] = field(default_factory=list)  # earlier commands of the case (setup faults)


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline", "MPLBACKEND": "Agg",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], cwd: Path, timeout: float = 600) -> Run:
    started, cpu = time.perf_counter(), _cpu()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout,
                           errors="replace")
        rc, out = p.returncode, p.stdout + ("\n" if p.stdout and p.stderr else "") + p.stderr
    except subprocess.TimeoutExpired as err:
        rc = -9
        out = f"{err.stdout or ''}{err.stderr or ''}\n[fault_cases] timed out after {timeout:.0f} s"
    return Run(cmd, rc, out, time.perf_counter() - started, _cpu() - cpu)


def run_until(cmd: list[str], cwd: Path, ready: Callable[[], bool], timeout: float = 600) -> Run:
    """Start ``cmd`` and SIGKILL its whole process group as soon as ``ready()`` holds: a job
    killed mid-run, as by the OOM killer or a lost machine (no handler runs)."""
    started, cpu = time.perf_counter(), _cpu()
    log = cwd / "killed_run.log"
    with log.open("w") as sink:
        p = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=sink, stderr=subprocess.STDOUT,
                             start_new_session=True)
        killed = False
        while p.poll() is None and time.perf_counter() - started < timeout:
            if ready():
                os.killpg(p.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.02)
        if p.poll() is None and not killed:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    out = log.read_text(errors="replace")
    if not killed:
        out += "\n[fault_cases] the kill point was never reached (the run ended or timed out first)"
    return Run(cmd, p.returncode if not killed else -9, out, time.perf_counter() - started, _cpu() - cpu)


def qbert(cwd: Path, *overrides: str, multirun: bool = False, fast: bool = True, timeout: float = 600) -> Run:
    """One ``qbert`` command in ``cwd``: outputs, finetuned starts and caches all inside it."""
    where = ([f"hydra.sweep.dir={cwd / 'sweep'}", f"sweep.resume_root={cwd}"] if multirun
             else [f"hydra.run.dir={cwd / 'run'}"])
    cmd = [PY, "-m", "qbert.cli", *(["-m"] if multirun else []), *(FAST if fast else []),
           "trainer.enable_progress_bar=false", f"finetuned_dir={cwd / 'ft'}", f"hessian.cache_dir={cwd / 'hessian'}",
           "data.cache_dir=null", *where, *overrides]
    return run(cmd, cwd, timeout)


def report(cwd: Path, *args: str) -> Run:
    return run([PY, "-m", "qbert.report.cli", *args], cwd)


def export(cwd: Path, *args: str) -> Run:
    return run([PY, "-m", "qbert.export.cli", *args], cwd)


# The loader is an API: its refusal is a PackedFileError (a ValueError) naming the file; anything
# else escaping it is a crash. The driver prints the refusal without a traceback, as a caller would.
LOAD_PACKED = ("import sys\nfrom qbert.export import load_packed\nfrom qbert.export.packed_file import PackedFileError\n"
               "try:\n    load_packed(sys.argv[1])\nexcept PackedFileError as err:\n"
               "    print(f'PackedFileError: {err}', file=sys.stderr); sys.exit(2)\nprint('loaded')\n")


def load_packed(cwd: Path, path: Path) -> Run:
    return run([PY, "-c", LOAD_PACKED, str(path)], cwd)


# --------------------------------------------------------------------------------------------
# shared inputs, built once per invocation


class Fixtures:
    def __init__(self, root: Path):
        self.root = root
        self.built: dict[str, Path] = {}
        self.log: list[dict] = []
        self.spent = 0.0  # wall seconds spent building (left out of the case that first needed them)
        self.spent_cpu = 0.0

    def _build(self, name: str, make: Callable[[Path], list[Run]], check: Callable[[Path], bool]) -> Path:
        if name in self.built:
            return self.built[name]
        folder = self.root / name
        folder.mkdir(parents=True)
        print(f"[fault_cases] building shared input {name!r} ...", flush=True)
        started, cpu = time.perf_counter(), _cpu()
        runs = make(folder)
        self.spent += time.perf_counter() - started
        self.spent_cpu += _cpu() - cpu
        self.log += [{"fixture": name, "command": shlex.join(["python" if a == PY else a for a in r.cmd]).replace(
                          str(self.root), "<shared>"), "exit_code": r.rc, "wall_s": round(r.wall, 1),
                      "cpu_s": round(r.cpu, 1)} for r in runs]
        if not check(folder):
            tail = "\n".join(runs[-1].out.splitlines()[-30:]) if runs else ""
            raise RuntimeError(f"shared input {name!r} could not be built:\n{tail}")
        self.built[name] = folder
        return folder

    def sweep(self) -> Path:
        """A finished tiny sweep (seeds 1 and 2, full precision, checkpoints kept): sweep/<jobs>."""
        return self._build(
            "sweep", lambda d: [qbert(d, "seed=1,2", "trainer.save_checkpoints=true", "sweep.report=false",
                                      multirun=True)],
            lambda d: len(list((d / "sweep").glob("*/results.json"))) == 2)

    def killed(self) -> Path:
        """A tiny 3-job sweep killed (SIGKILL) while job 1 trains, after its first epoch's
        checkpoint: job 0 finished, job 1 killed with checkpoints/last.ckpt, job 2 never started."""
        def make(d: Path) -> list[Run]:
            cmd = qbert_cmd(d, *KILLED_SWEEP)
            return [run_until(cmd, d, lambda: bool(list((d / "sweep").glob("0_*/results.json")))
                              and bool(list((d / "sweep").glob("1_*/checkpoints/last.ckpt"))))]
        return self._build("killed", make, lambda d: bool(list((d / "sweep").glob("1_*/checkpoints/last.ckpt")))
                           and not list((d / "sweep").glob("1_*/results.json")) and not list((d / "sweep").glob("2_*")))

    def mp(self) -> Path:
        """A Q-BERT MP run (run/), its full-precision start (ft/), its Hessian cache (hessian/) and
        its packed file (packed.qbert.safetensors)."""
        def make(d: Path) -> list[Run]:
            first = qbert(d, *MP)
            return [first, export(d, str(d / "run"), "-o", str(d / "packed.qbert.safetensors"))]
        return self._build("mp", make, lambda d: (d / "packed.qbert.safetensors").is_file()
                           and bool(list((d / "hessian").glob("*.json"))))


def qbert_cmd(cwd: Path, *overrides: str) -> list[str]:
    return [PY, "-m", "qbert.cli", "-m", *FAST, "trainer.enable_progress_bar=false", f"finetuned_dir={cwd / 'ft'}",
            f"hessian.cache_dir={cwd / 'hessian'}", "data.cache_dir=null", f"hydra.sweep.dir={cwd / 'sweep'}",
            f"sweep.resume_root={cwd}", *overrides]


# 3 jobs of 12 epochs x 2 batches with a checkpoint after every epoch: long enough to be killed mid-run.
KILLED_SWEEP = ["seed=1,2,3", "trainer.max_steps=-1", "trainer.limit_train_batches=2", "optim.epochs=12",
                "trainer.save_checkpoints=true"]


# --------------------------------------------------------------------------------------------
# the catalogue


@dataclass
class Case:
    id: str
    cls: str
    what: str
    expect: str  # refuse | recover | either
    needles: tuple[str, ...]  # a clear message contains every one (may name paths inside the case folder)
    body: Callable[["Ctx"], Outcome | Run]


@dataclass
class Ctx:
    dir: Path  # the case's own fresh folder
    fx: Fixtures
    needles: list[str] = field(default_factory=list)  # added by the body (paths it chose)

    def copy(self, folder: Path, name: str | None = None) -> Path:
        target = self.dir / (name or folder.name)
        shutil.copytree(folder, target, symlinks=True)
        return target


CASES: list[Case] = []


def case(id: str, cls: str, what: str, expect: str = "refuse", needles: tuple[str, ...] = ()):
    assert cls in CLASSES, cls

    def register(body):
        assert all(c.id != id for c in CASES), id
        CASES.append(Case(id, cls, what, expect, tuple(needles), body))
        return body
    return register


# ---- config: typos, types, ranges, combinations ------------------------------------------------

CONFIG_CASES = [
    # id, what, overrides, needles
    ("c_plus_typo", "a typo added with + (+optim.lrr)", ["+optim.lrr=3e-5"], ["optim.lrr", "optim.lr'"]),
    ("c_plus_unknown_section", "a whole unknown section added with +", ["+optimizer.lr=3e-5"], ["optimizer"]),
    ("c_typo", "a typo without + (optim.lrr)", ["optim.lrr=3e-5"], ["lrr"]),
    ("c_type_lr", "a word where a number belongs (optim.lr=fast)", ["optim.lr=fast"], ["optim.lr"]),
    ("c_type_bool", "a non-boolean for a boolean (data.group_by_length=maybe)", ["data.group_by_length=maybe"],
     ["data.group_by_length"]),
    ("c_range_lr", "a learning rate out of range (optim.lr=5)", ["optim.lr=5"], ["optim.lr"]),
    ("c_batch_zero", "batch size 0", ["optim.batch_size=0"], ["optim.batch_size"]),
    ("c_epochs_zero", "0 epochs", ["optim.epochs=0"], ["optim.epochs"]),
    ("c_warmup", "warmup ratio 1.5", ["optim.warmup_ratio=1.5"], ["optim.warmup_ratio"]),
    ("c_negative_seed", "a negative seed", ["seed=-1"], ["seed"]),
    ("c_max_length", "task.max_length=8", ["task.max_length=8"], ["task.max_length"]),
    ("c_heads", "hidden size not divisible by the heads", ["model.num_heads=3"], ["model.hidden_size", "num_heads"]),
    ("c_groups_zero", "quant.groups=0", ["quant=qbert", "quant.groups=0"], ["quant.groups"]),
    ("c_groups_negative", "quant.groups=-4", ["quant=qbert", "quant.groups=-4"], ["quant.groups"]),
    ("c_w_bits", "a width that does not exist (quant.w_bits=1)", ["quant=qbert", "quant.w_bits=1"], ["quant.w_bits"]),
    ("c_unknown_method", "quant.method=qbrt", ["quant.method=qbrt"], ["quant.method", "qbrt"]),
    ("c_unknown_group_option", "task=sts2 (no such task)", ["task=sts2"], ["sts2"]),
    ("c_unread_setting", "a setting the method ignores (quant=q8bert quant.groups=16)",
     ["quant=q8bert", "quant.groups=16"], ["quant.groups"]),
    ("c_percentile_without_range", "quant.w_percentile without w_range=percentile",
     ["quant=qbert", "quant.w_percentile=99.0"], ["quant.w_percentile"]),
    ("c_mp_high_bits", "MP high width below the low width", ["quant=qbert_mp", "quant.w_bits=3", "quant.high_bits=2"],
     ["quant.high_bits"]),
    ("c_eval_best_no_checkpoints", "eval_checkpoint=best with checkpoints off",
     ["trainer.eval_checkpoint=best", "trainer.save_checkpoints=false"], ["trainer.eval_checkpoint", "save_checkpoints"]),
    ("c_precision", "trainer.precision=fp8", ["trainer.precision=fp8"], ["trainer.precision"]),
    ("c_local_no_root", "data.source=local without data.root", ["data.source=local"], ["data.root"]),
    ("c_ptq_without_eval_only", "q8bert_ptq with eval_only=false", ["quant=q8bert_ptq", "eval_only=false"],
     ["eval_only"]),
    ("c_eval_only_nothing", "eval_only on a random model", ["eval_only=true"], ["eval_only"]),
    ("c_num_labels", "task.num_labels=5 for SST-2", ["task.num_labels=5"], ["task.num_labels"]),
    ("c_root_missing", "data.root that does not exist", ["data.source=local", "data.root=/nonexistent/qbert-data"],
     ["/nonexistent/qbert-data"]),
    ("c_init_from_missing", "init_from that does not exist", ["init_from=/nonexistent/qbert-run"],
     ["init_from", "/nonexistent/qbert-run"]),
    ("c_groups_not_dividing", "3 groups: divides no row count of the tiny model",
     ["quant=qbert", "quant.groups=3"], ["groups", "3"]),
    ("c_layer_bits_count", "manual widths for 3 layers, the model has 2",
     ["quant=qbert_mp", "quant.allocation=manual", "quant.layer_bits=[2,3,4]"], ["layer_bits"]),
]


def _config_case(cid: str, what: str, overrides: list[str], needles: list[str]) -> None:
    case(cid, "config", what, "refuse", needles)(lambda ctx: qbert(ctx.dir, *overrides))


for _c in CONFIG_CASES:
    _config_case(*_c)


@case("c_sweep_bad_value", "config", "one bad value in a sweep list (optim.lr=3e-5,7)", "refuse", ["optim.lr"])
def _(ctx: Ctx) -> Outcome:
    r = qbert(ctx.dir, "optim.lr=3e-5,7", multirun=True)
    good = list((ctx.dir / "sweep").glob("0_*/results.json"))
    return Outcome(r, lost=[] if good else ["the good job of the sweep did not finish"])


@case("c_sweep_bad_value_no_report", "config", "a failing sweep job with sweep.report=false", "refuse", ["optim.lr"])
def _(ctx: Ctx) -> Run:
    return qbert(ctx.dir, "optim.lr=3e-5,7", "sweep.report=false", multirun=True)


# ---- data files --------------------------------------------------------------------------------

TASK_FOLDER = {"sst2": "sst2", "mnli": "mnli", "conll03": "conll2003", "squad": "squad"}


def data_run(ctx: Ctx, task: str, damage: Callable[[Path], str | None], *extra: str) -> Run:
    """Copy the task's sample into the case folder, damage one file, run one job on it."""
    folder = ctx.dir / "data" / TASK_FOLDER[task]
    shutil.copytree(SAMPLE / TASK_FOLDER[task], folder)
    named = damage(folder)
    if isinstance(named, str):
        ctx.needles.append(named)
    return qbert(ctx.dir, f"task={task}", "data.source=local", f"data.root={ctx.dir / 'data'}", *extra)


def unzip(path: Path) -> Path:
    """Replace ``x.gz`` by plain ``x``; returns the plain file."""
    plain = path.with_suffix("")
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    path.unlink()
    return plain


def edit_lines(path: Path, edit: Callable[[list[str]], list[str]]) -> Path:
    """Edit a (possibly gzipped) text file's lines; written back plain (suffix .gz dropped)."""
    plain = unzip(path) if path.suffix == ".gz" else path
    lines = plain.read_text(encoding="utf-8").split("\n")
    plain.write_text("\n".join(edit(lines)), encoding="utf-8")
    return plain


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _set(lines: list[str], i: int, value: str) -> list[str]:
    lines[i] = value
    return lines


DATA_CASES = [
    # id, task, what, damage(folder) -> name the message must contain (or None), needles, extra overrides
    ("d_sst2_header_only", "sst2", "SST-2 dev: a header and no rows",
     lambda f: edit_lines(f / "dev.tsv.gz", lambda ls: ls[:1]).name, ["no examples"], []),
    ("d_sst2_empty", "sst2", "SST-2 train: an empty file",
     lambda f: (unzip(f / "train.tsv.gz").write_text(""), "train.tsv")[1], ["empty"], []),
    ("d_sst2_truncated_gz", "sst2", "SST-2 train.tsv.gz cut in half",
     lambda f: (truncate(f / "train.tsv.gz"), "train.tsv.gz")[1], ["truncated"], []),
    ("d_sst2_corrupt_gz", "sst2", "SST-2 dev.tsv.gz with 16 bytes flipped in the middle",
     lambda f: (flip_middle(f / "dev.tsv.gz"), "dev.tsv.gz")[1], [], []),
    ("d_sst2_not_gzip", "sst2", "SST-2 dev.tsv.gz that is plain text",
     lambda f: ((f / "dev.tsv.gz").write_bytes(gzip.decompress((f / "dev.tsv.gz").read_bytes())), "dev.tsv.gz")[1],
     ["gzip"], []),
    ("d_sst2_bad_utf8", "sst2", "SST-2 train: invalid UTF-8 on line 5",
     lambda f: (_bad_utf8(f / "train.tsv.gz", 4), "train.tsv")[1], ["line 5", "UTF-8"], []),
    ("d_sst2_three_columns", "sst2", "SST-2 train: a row with 3 tab-separated fields (line 7)",
     lambda f: edit_lines(f / "train.tsv.gz", lambda ls: _set(ls, 6, ls[6] + "\textra")).name, ["line 7"], []),
    ("d_sst2_unknown_label", "sst2", "SST-2 dev: label 'positive' instead of 1 (line 3)",
     lambda f: edit_lines(f / "dev.tsv.gz", lambda ls: _set(ls, 2, ls[2].rsplit("\t", 1)[0] + "\tpositive")).name,
     ["line 3", "positive"], []),
    ("d_sst2_blank_line", "sst2", "SST-2 train: a blank line in the middle (line 10)",
     lambda f: edit_lines(f / "train.tsv.gz", lambda ls: _set(ls, 9, "")).name, ["line 10"], []),
    ("d_sst2_wrong_header", "sst2", "SST-2 train: header 'text<TAB>label'",
     lambda f: edit_lines(f / "train.tsv.gz", lambda ls: _set(ls, 0, "text\tlabel")).name, ["sentence"], []),
    ("d_sst2_missing_file", "sst2", "SST-2 dev file missing",
     lambda f: ((f / "dev.tsv.gz").unlink(), "dev.tsv")[1], [], []),
    ("d_mnli_two_columns", "mnli", "MNLI dev_mismatched: a row missing its hypothesis (line 4)",
     lambda f: edit_lines(f / "dev_mismatched.tsv.gz", lambda ls: _set(ls, 3, _drop_field(ls[0], ls[3], "hypothesis"))).name,
     ["line 4"], []),
    ("d_conll_truncated_gz", "conll03", "CoNLL train.txt.gz cut in half",
     lambda f: (truncate(f / "train.txt.gz"), "train.txt.gz")[1], ["truncated"], []),
    ("d_conll_unknown_tag", "conll03", "CoNLL valid: tag B-FOO",
     lambda f: edit_lines(f / "valid.txt.gz", lambda ls: _retag(ls, "B-FOO")).name, ["B-FOO"], []),
    ("d_conll_lost_column", "conll03", "CoNLL train: a token line with a column missing",
     lambda f: edit_lines(f / "train.txt.gz", _drop_column).name, ["columns"], []),
    ("d_conll_test_corrupt", "conll03", "CoNLL test.txt.gz corrupt (the last split read)",
     lambda f: (flip_middle(f / "test.txt.gz"), "test.txt.gz")[1], [], ["trainer.save_checkpoints=true"]),
    ("d_squad_empty_data", "squad", "SQuAD dev: {\"data\": []}",
     lambda f: ((f / "dev-v1.1.json.gz").unlink(), (f / "dev-v1.1.json").write_text('{"data": [], "version": "1.1"}'),
                "dev-v1.1.json")[2], ["no examples"], []),
    ("d_squad_truncated_gz", "squad", "SQuAD train-v1.1.json.gz cut in half",
     lambda f: (truncate(f / "train-v1.1.json.gz"), "train-v1.1.json.gz")[1], ["truncated"], []),
    ("d_squad_answer_start", "squad", "SQuAD train: answer_start 5 characters off",
     lambda f: _squad_edit(f / "train-v1.1.json.gz", _shift_answer), ["data[0].paragraphs[0].qas[0].answers[0]",
                                                                      "answer_start"], []),
    ("d_squad_bad_utf8", "squad", "SQuAD dev: invalid UTF-8",
     lambda f: (_bad_utf8(f / "dev-v1.1.json.gz", 0, at=200), "dev-v1.1.json")[1], ["UTF-8"], []),
    ("d_squad_invalid_json", "squad", "SQuAD dev: a missing comma (invalid JSON)",
     lambda f: (_break_json(f / "dev-v1.1.json.gz"), "dev-v1.1.json")[1], ["invalid JSON", "line"], []),
    ("d_squad_duplicate_id", "squad", "SQuAD train: two questions with one id",
     lambda f: _squad_edit(f / "train-v1.1.json.gz", _duplicate_id), ["duplicate question id"], []),
    ("d_squad_list_top", "squad", "SQuAD dev: a JSON list at the top level",
     lambda f: ((f / "dev-v1.1.json.gz").unlink(), (f / "dev-v1.1.json").write_text("[]"), "dev-v1.1.json")[2],
     ["top level"], []),
]


def _bad_utf8(path: Path, line: int, at: int = 3) -> None:
    plain = unzip(path)
    lines = plain.read_bytes().split(b"\n")
    lines[line] = lines[line][:at] + b"\xff\xfe" + lines[line][at:]
    plain.write_bytes(b"\n".join(lines))


def _drop_field(header: str, line: str, name: str) -> str:
    cols = header.split("\t")
    fields = line.split("\t")
    del fields[cols.index(name)]
    return "\t".join(fields)


def _retag(lines: list[str], tag: str) -> list[str]:
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith("-DOCSTART-"):
            cols = line.split(" ")
            lines[i] = " ".join([*cols[:-1], tag])
            return lines
    return lines


def _drop_column(lines: list[str]) -> list[str]:
    seen = 0
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith("-DOCSTART-"):
            seen += 1
            if seen == 5:
                lines[i] = " ".join(line.split(" ")[:-2] + line.split(" ")[-1:])
                return lines
    return lines


def _squad_edit(path: Path, edit: Callable[[dict], None]) -> str:
    doc = json.loads(gzip.decompress(path.read_bytes()))
    edit(doc)
    path.unlink()
    plain = path.with_suffix("")
    plain.write_text(json.dumps(doc))
    return plain.name


def _shift_answer(doc: dict) -> None:
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 5


def _duplicate_id(doc: dict) -> None:
    qas = doc["data"][0]["paragraphs"][0]["qas"]
    qas.append(dict(qas[0]))


def _break_json(path: Path) -> None:
    plain = unzip(path)
    text = plain.read_text(encoding="utf-8")
    plain.write_text(text.replace(", ", " ", 1), encoding="utf-8")


def _data_case(cid, task, what, damage, needles, extra) -> None:
    def body(ctx: Ctx) -> Outcome:
        r = data_run(ctx, task, damage, *extra)
        trained = list((ctx.dir / "run" / "checkpoints").glob("*.ckpt"))
        return Outcome(r, lost=["it trained before reading the damaged file, then failed without results"] if trained
                       and r.rc else [])
    case(cid, "data", what, "refuse", needles)(body)


for _c in DATA_CASES:
    _data_case(*_c)


# ---- damaged files under a sweep's resume root: a re-run of the same sweep --------------------------


def _results_edit(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        results = json.loads(path.read_text())
        new = edit(results)
        path.write_text(json.dumps(results if new is None else new))
    return damage


DAMAGES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "list": ("results.json holding a JSON list", lambda p: p.write_text("[1, 2, 3]")),
    "number": ("results.json holding a number", lambda p: p.write_text("42")),
    "truncated": ("results.json cut in half", lambda p: truncate(p)),
    "metric_string": ("results.json with primary_metric as a string",
                      _results_edit(lambda r: r.update(primary_metric=str(r["primary_metric"])))),
    "no_config": ("results.json without its config", _results_edit(lambda r: (r.pop("config"), None)[1])),
    "bad_utf8": ("results.json with invalid UTF-8", lambda p: p.write_bytes(p.read_bytes()[:40] + b"\xff\xfe" + p.read_bytes()[40:])),
}


def _jobs(sweep: Path) -> dict[int, Path]:
    return {int(p.name.split("_")[0]): p for p in sweep.iterdir() if (p / ".hydra").is_dir()}


def rerun_after(ctx: Ctx, damage: Callable[[dict[int, Path]], None], *extra: str) -> tuple[Run, dict[int, Path], dict[int, Path]]:
    """Copy the finished 2-job sweep to <case>/old, damage it, re-run the same sweep into <case>/sweep."""
    old = ctx.copy(ctx.fx.sweep() / "sweep", "old")
    jobs = _jobs(old)
    damage(jobs)
    r = qbert(ctx.dir, "seed=1,2", "trainer.save_checkpoints=true", "sweep.report=false", *extra, multirun=True)
    new = _jobs(ctx.dir / "sweep") if (ctx.dir / "sweep").is_dir() else {}
    return r, jobs, new


def _status(job: Path | None) -> str | None:
    try:
        return json.loads((job / "job.json").read_text()).get("status")
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _damaged_results_rerun(kind: str) -> None:
    what, damage = DAMAGES[kind]

    def body(ctx: Ctx) -> Outcome:
        def hurt(jobs):
            damage(jobs[0] / "results.json")
            ctx.needles.append(str(jobs[0] / "results.json"))
        r, old, new = rerun_after(ctx, hurt)
        lost, wrong = [], []
        if _status(new.get(1)) != "reused":
            lost.append("the intact finished job (seed 2) was recomputed")
        if _status(new.get(0)) == "reused":
            wrong.append("the job with the damaged results was reused")
        elif not (new.get(0) and (new[0] / "results.json").is_file()):
            lost.append("the job with the damaged results was not recomputed")
        return Outcome(r, lost, wrong)
    case(f"s_results_{kind}", "sweep-resume", f"re-run sweep; {what} in the resume root", "recover")(body)


for _k in ("list", "truncated", "metric_string", "no_config"):  # "number" and "bad_utf8": the list's path
    _damaged_results_rerun(_k)


@case("s_job_json_damaged", "sweep-resume", "re-run sweep; an unfinished job (checkpoint kept) whose job.json is cut in half",
      "recover")
def _(ctx: Ctx) -> Outcome:
    def hurt(jobs):
        (jobs[0] / "results.json").unlink()
        truncate(jobs[0] / "job.json")
        ctx.needles.append(str(jobs[0] / "job.json"))
    r, old, new = rerun_after(ctx, hurt)
    return Outcome(r, lost=[] if new.get(0) and (new[0] / "results.json").is_file() else ["job 0 did not finish"])


@case("s_last_ckpt_corrupt", "sweep-resume", "re-run sweep; an unfinished job whose last.ckpt is garbage", "either")
def _(ctx: Ctx) -> Outcome:
    def hurt(jobs):
        (jobs[0] / "results.json").unlink()
        job = json.loads((jobs[0] / "job.json").read_text())
        (jobs[0] / "job.json").write_text(json.dumps({**job, "status": "running"}))
        (jobs[0] / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint")
        ctx.needles.append("last.ckpt")
    r, old, new = rerun_after(ctx, hurt)
    return Outcome(r, lost=[] if _status(new.get(1)) == "reused" else ["the intact finished job was recomputed"])


# ---- damaged files under a sweep folder: qbert-report ------------------------------------------


def report_after(ctx: Ctx, damage: Callable[[dict[int, Path]], None], *args: str) -> tuple[Run, Path]:
    sweep = ctx.copy(ctx.fx.sweep() / "sweep", "sweep")
    damage(_jobs(sweep))
    out = ctx.dir / "report"
    return report(ctx.dir, str(sweep), "--out", str(out), *args), out


def _rows(out: Path) -> list[dict]:
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return []
    return [r for t in summary["tables"] for r in t["rows"]]


def _damaged_results_report(kind: str) -> None:
    what, damage = DAMAGES[kind]

    def body(ctx: Ctx) -> Outcome:
        def hurt(jobs):
            damage(jobs[0] / "results.json")
            ctx.needles.append(str(jobs[0] / "results.json"))
        r, out = report_after(ctx, hurt)
        seeds = {s for row in _rows(out) for s in row.get("seeds", [])}
        return Outcome(r, lost=[] if 2 in seeds or r.rc else ["the intact job (seed 2) is missing from the table"],
                       wrong=["the damaged job (seed 1) made a row"] if 1 in seeds else [])
    case(f"r_results_{kind}", "report", f"qbert-report; {what}", "recover")(body)


for _k in DAMAGES:
    _damaged_results_report(_k)


@case("r_job_json_damaged", "report", "qbert-report; a killed job whose job.json is cut in half", "recover")
def _(ctx: Ctx) -> Run:
    def hurt(jobs):
        (jobs[1] / "results.json").unlink()
        truncate(jobs[1] / "job.json")
        ctx.needles.append(str(jobs[1] / "job.json"))
    return report_after(ctx, hurt)[0]


@case("r_error_json_damaged", "report", "qbert-report; a failed job whose error.json is a JSON list", "recover")
def _(ctx: Ctx) -> Run:
    def hurt(jobs):
        (jobs[1] / "results.json").unlink()
        job = json.loads((jobs[1] / "job.json").read_text())
        (jobs[1] / "job.json").write_text(json.dumps({**job, "status": "failed"}))
        (jobs[1] / "error.json").write_text('["ValueError"]')
        ctx.needles.append(str(jobs[1] / "error.json"))
    return report_after(ctx, hurt)[0]


@case("r_multirun_yaml_damaged", "report", "qbert-report; the sweep's multirun.yaml is not YAML", "recover")
def _(ctx: Ctx) -> Run:
    def hurt(jobs):
        path = jobs[0].parent / "multirun.yaml"
        path.write_text("hydra: [unclosed\n  - {")
        ctx.needles.append(str(path))
    return report_after(ctx, hurt)[0]


@case("r_overrides_damaged", "report", "qbert-report; a job's .hydra/overrides.yaml is a mapping", "recover")
def _(ctx: Ctx) -> Run:
    def hurt(jobs):
        path = jobs[1] / ".hydra" / "overrides.yaml"
        path.write_text("seed: 2\n")
        ctx.needles.append(str(path))
    return report_after(ctx, hurt)[0]


@case("r_all_damaged", "report", "qbert-report; every results.json damaged", "refuse", ["no readable results.json"])
def _(ctx: Ctx) -> Run:
    def hurt(jobs):
        for job in jobs.values():
            (job / "results.json").write_text("{")
        ctx.needles.append(str(jobs[0] / "results.json"))
    return report_after(ctx, hurt)[0]


@case("r_no_folder", "report", "qbert-report on a folder that does not exist", "refuse", ["no such folder"])
def _(ctx: Ctx) -> Run:
    ctx.needles.append(str(ctx.dir / "nowhere"))
    return report(ctx.dir, str(ctx.dir / "nowhere"))


@case("r_empty_folder", "report", "qbert-report on an empty folder", "refuse", ["no readable results.json"])
def _(ctx: Ctx) -> Run:
    (ctx.dir / "empty").mkdir()
    return report(ctx.dir, str(ctx.dir / "empty"))


@case("r_paper_not_yaml", "report", "qbert-report --paper with a file that is not YAML", "refuse")
def _(ctx: Ctx) -> Run:
    bad = ctx.dir / "paper.yaml"
    bad.write_text("qbert: {tasks: [unclosed\n")
    ctx.needles.append(str(bad))
    return report_after(ctx, lambda jobs: None, "--paper", str(bad))[0]


@case("r_paper_list", "report", "qbert-report --paper with a YAML list", "refuse")
def _(ctx: Ctx) -> Run:
    bad = ctx.dir / "paper.yaml"
    bad.write_text("- qbert\n- q8bert\n")
    ctx.needles.append(str(bad))
    return report_after(ctx, lambda jobs: None, "--paper", str(bad))[0]


@case("r_out_is_a_file", "report", "qbert-report --out naming an existing file", "refuse")
def _(ctx: Ctx) -> Run:
    sweep = ctx.copy(ctx.fx.sweep() / "sweep", "sweep")
    out = ctx.dir / "report.txt"
    out.write_text("not a folder\n")
    ctx.needles.append(str(out))
    return report(ctx.dir, str(sweep), "--out", str(out))


# ---- the Hessian cache ---------------------------------------------------------------------------


def _hessian_case(cid: str, what: str, expect: str, damage: Callable[[Path], None], needles: tuple[str, ...]) -> None:
    def body(ctx: Ctx) -> Outcome:
        mp = ctx.fx.mp()
        ctx.copy(mp / "ft", "ft")
        cache = ctx.copy(mp / "hessian", "hessian")
        path = next(cache.glob("*.json"))
        damage(path)
        ctx.needles.append(path.name)
        r = qbert(ctx.dir, *MP)
        done = (ctx.dir / "run" / "results.json").is_file()
        return Outcome(r, lost=[] if done or r.rc else ["no results although it exited 0"])
    case(cid, "hessian", what, expect, needles)(body)


_hessian_case("h_cache_truncated", "Q-BERT MP; its Hessian cache file cut in half", "recover", truncate, ("recomputing",))
_hessian_case("h_cache_list", "Q-BERT MP; its Hessian cache file a JSON list", "recover",
              lambda p: p.write_text("[]"), ("recomputing",))
_hessian_case("h_cache_foreign_key", "Q-BERT MP; its Hessian cache file holds another key's analysis", "refuse",
              _results_edit(lambda r: r["settings"].update(cache_key="0123456789abcdef")), ("0123456789abcdef",))


# ---- packed files ----------------------------------------------------------------------------


def _header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write_header(path: Path, header: dict, body: bytes) -> None:
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + body)


def edit_metadata(path: Path, key: str, edit: Callable[[object], object]) -> None:
    """Edit one metadata field as a hand edit would: the JSON value changed, nothing else."""
    header, body = _header(path)
    meta = header["__metadata__"]
    value = json.loads(meta[key]) if key in ("config", "plan", "modules", "sha256", "metadata_sha256") else meta[key]
    new = edit(value)
    value = value if new is None else new
    meta[key] = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    _write_header(path, header, body)


def _first_linear(modules: dict) -> str:
    return next(n for n, m in modules.items() if m["kind"] == "linear")


def flip_tensor_byte(path: Path) -> str:
    header, body = _header(path)
    name = next(k for k in sorted(header) if k.endswith("weight.packed"))
    start, end = header[name]["data_offsets"]
    data = bytearray(path.read_bytes())
    offset = 8 + struct.unpack("<Q", data[:8])[0] + (start + end) // 2
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return name


def _packed_case(cid: str, what: str, damage: Callable[[Path], str | None], needles: tuple[str, ...]) -> None:
    def body(ctx: Ctx) -> Run:
        path = ctx.dir / "model.qbert.safetensors"
        shutil.copy(ctx.fx.mp() / "packed.qbert.safetensors", path)
        named = damage(path)
        ctx.needles += [str(path), *([named] if isinstance(named, str) else [])]
        return load_packed(ctx.dir, path)
    case(cid, "packed", what, "refuse", needles)(body)


def _meta(key: str, edit: Callable[[object], object]) -> Callable[[Path], None]:
    return lambda p: edit_metadata(p, key, edit)


_packed_case("p_truncated", "packed file cut by 1000 bytes", lambda p: p.write_bytes(p.read_bytes()[:-1000]), ("truncated",))
_packed_case("p_header_length", "packed file whose header length is garbage",
             lambda p: p.write_bytes(b"\xff" * 8 + p.read_bytes()[8:]), ("truncated",))
_packed_case("p_flipped_byte", "packed file with one bit of a weight's codes flipped", flip_tensor_byte,
             ("sha256 mismatch",))
_packed_case("p_hidden_act", "packed metadata: config.hidden_act gelu -> relu",
             _meta("config", lambda c: c.update(hidden_act="relu")), ("config.hidden_act",))
_packed_case("p_layer_norm_eps", "packed metadata: config.layer_norm_eps 1e-12 -> 1e-5",
             _meta("config", lambda c: c.update(layer_norm_eps=1e-5)), ("config.layer_norm_eps",))
_packed_case("p_id2label", "packed metadata: id2label 0 and 1 swapped",
             _meta("config", lambda c: c.update(id2label={"0": c["id2label"]["1"], "1": c["id2label"]["0"]})),
             ("config.id2label",))
_packed_case("p_a_bits", "packed metadata: a module's a_bits 8 -> 4",
             _meta("modules", lambda m: m[_first_linear(m)].update(a_bits=4)), ("a_bits",))
_packed_case("p_format_v1", "packed metadata: format qbert.packed/1", _meta("format", lambda v: "qbert.packed/1"),
             ("qbert.packed/1",))
_packed_case("p_not_safetensors", "a text file named .qbert.safetensors", lambda p: p.write_text("hello\n"), ())


def _export_case(cid: str, what: str, damage: Callable[[Path], str | None], needles: tuple[str, ...], source: str = "mp") -> None:
    def body(ctx: Ctx) -> Run:
        if source == "mp":
            folder = ctx.copy(ctx.fx.mp() / "run", "run")
        else:  # a full-precision run of the finished sweep
            folder = ctx.copy(_jobs(ctx.fx.sweep() / "sweep")[0], "run")
        named = damage(folder / "model")
        if isinstance(named, str):
            ctx.needles.append(named)
        return export(ctx.dir, str(folder), "-o", str(ctx.dir / "out.qbert.safetensors"))
    case(cid, "packed", what, "refuse", needles)(body)


_export_case("e_not_quantized", "qbert-export on a full-precision run", lambda m: None, ("quantization_map.json",), "fp")
_export_case("e_weights_truncated", "qbert-export; the run's model.safetensors cut in half",
             lambda m: (truncate(m / "model.safetensors"), "model.safetensors")[1], ())
_export_case("e_qmap_not_json", "qbert-export; the run's quantization_map.json is not JSON",
             lambda m: ((m / "quantization_map.json").write_text("{"), "quantization_map.json")[1], ())


# ---- weights a run starts from -----------------------------------------------------------------


@case("w_init_from_truncated", "weights", "init_from a run whose model.safetensors is cut in half", "refuse",
      ["model.safetensors"])
def _(ctx: Ctx) -> Run:
    start = ctx.copy(_jobs(ctx.fx.sweep() / "sweep")[0], "start")
    truncate(start / "model" / "model.safetensors")
    return qbert(ctx.dir, f"init_from={start}")


@case("w_init_from_other_task", "weights", "init_from an SST-2 run for MNLI (another head)", "refuse", ["init_from"])
def _(ctx: Ctx) -> Run:
    start = ctx.copy(_jobs(ctx.fx.sweep() / "sweep")[0], "start")
    ctx.needles.append(str(start))
    return qbert(ctx.dir, "task=mnli", f"init_from={start}")


@case("w_fp_start_truncated", "weights", "a quantized run whose full-precision start has a truncated model.safetensors",
      "refuse", ["model.safetensors"])
def _(ctx: Ctx) -> Run:
    ft = ctx.copy(ctx.fx.mp() / "ft", "ft")
    truncate(next(ft.glob("*/model/model.safetensors")))
    return qbert(ctx.dir, "quant=qbert", "quant.groups=32")


@case("w_teacher_results_damaged", "weights", "distillation from a teacher run whose results.json is cut in half",
      "refuse", ["results.json"])
def _(ctx: Ctx) -> Run:
    ft = ctx.copy(ctx.fx.mp() / "ft", "ft")
    teacher = ctx.copy(next(p for p in ft.iterdir() if p.is_dir()), "teacher")
    truncate(teacher / "results.json")
    ctx.needles.append(str(teacher))
    return qbert(ctx.dir, "quant=mkq", f"distill.teacher={teacher}")


@case("w_init_from_qmap_damaged", "weights", "init_from a quantized run whose quantization_map.json is not JSON",
      "refuse", ["quantization_map.json"])
def _(ctx: Ctx) -> Run:
    start = ctx.copy(ctx.fx.mp() / "run", "start")
    (start / "model" / "quantization_map.json").write_text("{")
    return qbert(ctx.dir, f"init_from={start}", "eval_only=true")


@case("w_fp_start_ckpt_corrupt", "weights", "a quantized run whose interrupted full-precision start left a garbage last.ckpt",
      "recover")
def _(ctx: Ctx) -> Outcome:
    ft = ctx.copy(ctx.fx.mp() / "ft", "ft")
    start = next(p for p in ft.iterdir() if p.is_dir())
    for name in ("results.json", "model"):
        shutil.rmtree(start / name) if (start / name).is_dir() else (start / name).unlink()
    (start / "checkpoints").mkdir(exist_ok=True)
    (start / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 half a checkpoint")
    ctx.needles.append(str(start / "checkpoints" / "last.ckpt"))
    r = qbert(ctx.dir, "quant=qbert", "quant.groups=32")
    return Outcome(r, lost=[] if (ctx.dir / "run" / "results.json").is_file() or r.rc else ["no results"])


@case("w_teacher_missing", "weights", "distillation from a teacher folder that does not exist", "refuse",
      ["distill.teacher", "/nonexistent/teacher"])
def _(ctx: Ctx) -> Run:
    ctx.copy(ctx.fx.mp() / "ft", "ft")
    return qbert(ctx.dir, "quant=mkq", "distill.teacher=/nonexistent/teacher")


# ---- killed runs ------------------------------------------------------------------------------


@case("k_sweep_rerun", "kill", "a sweep killed mid-job, re-run: finished job reused, killed job resumed, rest run",
      "recover", ["skipped (finished in", "resuming from"])
def _(ctx: Ctx) -> Outcome:
    ctx.copy(ctx.fx.killed() / "sweep", "killed")
    r = run(qbert_cmd(ctx.dir, *KILLED_SWEEP), ctx.dir)
    new = _jobs(ctx.dir / "sweep") if (ctx.dir / "sweep").is_dir() else {}
    lost = []
    if _status(new.get(0)) != "reused":
        lost.append("the finished job 0 was recomputed")
    try:
        resumed = json.loads((new[1] / "results.json").read_text()).get("resumed_from")
    except (KeyError, OSError, ValueError):
        resumed = None
    if not (resumed and resumed.endswith("last.ckpt")):
        lost.append("the killed job 1 did not resume from its checkpoint")
    if not (new.get(2) and (new[2] / "results.json").is_file()):
        lost.append("job 2 (never started) did not run")
    return Outcome(r, lost)


@case("k_sweep_report", "kill", "qbert-report on a killed sweep: killed and never-started jobs listed", "recover",
      ["seed 2: Unfinished: killed", "seed 3: NotStarted", "never started"])
def _(ctx: Ctx) -> Outcome:
    sweep = ctx.copy(ctx.fx.killed() / "sweep", "sweep")
    out = ctx.dir / "report"
    r = report(ctx.dir, str(sweep), "--out", str(out))
    try:
        failures = json.loads((out / "summary.json").read_text())["failures"]
    except (OSError, ValueError, KeyError):
        failures = []
    wrong = [f"seed {seed} is not listed as {state}" for seed, state in ((2, "killed"), (3, "never started"))
             if not any(f"seed {seed}:" in f and state in f for f in failures)]
    return Outcome(r, wrong=wrong)


@case("k_fp_start_rerun", "kill", "a quantized run killed while training its full-precision start, re-run", "recover",
      ["was interrupted: resuming from"])
def _(ctx: Ctx) -> Outcome:
    overrides = ["quant=qbert", "quant.groups=32", "trainer.max_steps=-1", "trainer.limit_train_batches=2",
                 "optim.epochs=12", "quant.max_steps=2", "trainer.save_checkpoints=true"]
    first = [PY, "-m", "qbert.cli", *FAST, "trainer.enable_progress_bar=false", f"finetuned_dir={ctx.dir / 'ft'}",
             f"hessian.cache_dir={ctx.dir / 'hessian'}", "data.cache_dir=null", f"hydra.run.dir={ctx.dir / 'first'}",
             *overrides]
    killed = run_until(first, ctx.dir, lambda: bool(list((ctx.dir / "ft").glob("*/checkpoints/last.ckpt"))))
    r = qbert(ctx.dir, *overrides)
    start = next((ctx.dir / "ft").glob("*/results.json"), None)
    resumed = json.loads(start.read_text()).get("resumed_from") if start else None
    return Outcome(r, lost=[] if resumed else ["the start was trained again from step 0"], steps=[killed])


# --------------------------------------------------------------------------------------------
# classification and the report


def classify(c: Case, o: Outcome, needles: list[str]) -> tuple[str, list[str]]:
    r = o.run
    missing = [n for n in needles if n not in r.out]
    if TRACEBACK in r.out:
        return "crash", missing
    if o.lost:
        return "crash", missing
    if r.rc == 0:
        if c.expect == "refuse" or o.wrong or missing:
            return "silent", missing
        return "ok", missing
    return ("refused" if not missing else "unclear"), missing


def message_lines(o: Outcome, needles: list[str], n: int = 3) -> list[str]:
    """The lines that tell the user what happened: those naming the needles, else the last ones."""
    noise = ("Failed to load", "_pytree.py", "warnings.warn", "torchao", "Set the environment variable HYDRA_FULL_ERROR")
    lines = [ln.rstrip() for ln in o.run.out.splitlines() if ln.strip() and not any(x in ln for x in noise)]
    hits = [ln for ln in lines if any(nd in ln for nd in needles)]
    marked = [ln for ln in lines if any(m in ln for m in MARKERS)]
    if TRACEBACK in o.run.out:
        at = next((i for i, ln in enumerate(lines) if TRACEBACK in ln), 0)
        tail = [ln for ln in lines[at:] if not ln.startswith(" ")]
        return tail[-2:] + hits[:1]
    best = [ln for ln in hits if ln in marked] + hits + marked
    return list(dict.fromkeys(best))[:n] or lines[-n:]


# What marks a line that tells the user something went wrong or was skipped.
MARKERS = ("error", "Error", "ERROR", "WARNING", "FAILED", "skipping", "skipped", "resuming", "killed", "not started")


def run_case(c: Case, fx: Fixtures, root: Path) -> dict:
    folder = root / c.id
    folder.mkdir(parents=True)
    ctx = Ctx(folder, fx)
    started, cpu, building, building_cpu = time.perf_counter(), _cpu(), fx.spent, fx.spent_cpu
    try:
        result = c.body(ctx)
        o = result if isinstance(result, Outcome) else Outcome(result)
        needles = [str(n) for n in (*c.needles, *ctx.needles)]
        verdict, missing = classify(c, o, needles)
    except Exception as err:  # noqa: BLE001 - a case that cannot even be set up is reported, not fatal
        return {"id": c.id, "class": c.cls, "what": c.what, "expect": c.expect, "command": None, "exit_code": None,
                "classification": "error", "message": [f"{type(err).__name__}: {err}"[:400]],
                "wall_s": round(time.perf_counter() - started - (fx.spent - building), 1)}
    rel = lambda s: s.replace(str(folder), "<case>").replace(str(fx.root), "<shared>")  # noqa: E731
    return {
        "id": c.id, "class": c.cls, "what": c.what, "expect": c.expect,
        "command": rel(shlex.join(["python" if a == PY else a for a in o.run.cmd])),
        "exit_code": o.run.rc, "classification": verdict,
        "message": [rel(m)[:400] for m in message_lines(o, needles)],
        "needles": [rel(n) for n in needles], "needles_missing": [rel(n) for n in missing],
        "lost": o.lost, "wrong": o.wrong,
        **({"output_tail": [rel(ln) for ln in o.run.out.splitlines()[-40:]]}
           if verdict not in ("refused", "ok") else {}),
        "wall_s": round(time.perf_counter() - started - (fx.spent - building), 1),
        "cpu_s": round(_cpu() - cpu - (fx.spent_cpu - building_cpu), 1),
    }


def select(only: str | None) -> list[Case]:
    if not only:
        return list(CASES)
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    chosen = [c for c in CASES if any(fnmatch.fnmatch(c.id, p) or c.cls == p for p in patterns)]
    if not chosen:
        raise SystemExit(f"--only {only!r} matches no case (see --list)")
    return chosen


VERDICTS = ("refused", "ok", "unclear", "silent", "crash", "error")


def summary_table(rows: list[dict]) -> str:
    width = max(len(r["id"]) for r in rows)
    lines = [f"{'case':<{width}}  {'class':<12} {'rc':>4} {'verdict':<8} {'wall':>6} {'cpu':>5}  message"]
    for r in rows:
        msg = (r["message"] or [""])[0]
        lines.append(f"{r['id']:<{width}}  {r['class']:<12} {str(r['exit_code']):>4} {r['classification']:<8} "
                     f"{r['wall_s']:>5.0f}s {r.get('cpu_s', 0):>4.0f}s  {msg[:110]}")
    counts = {v: sum(r["classification"] == v for r in rows) for v in VERDICTS}
    lines.append("")
    lines.append("counts: " + ", ".join(f"{v} {n}" for v, n in counts.items() if n or v != "error"))
    by_class = {}
    for r in rows:
        by_class.setdefault(r["class"], {}).setdefault(r["classification"], 0)
        by_class[r["class"]][r["classification"]] += 1
    for cls, counts_ in by_class.items():
        lines.append(f"  {cls:<13} " + ", ".join(f"{v} {n}" for v, n in sorted(counts_.items())))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated case ids, classes or globs (e.g. data,p_*,k_sweep_rerun)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--out", type=Path, help=f"JSON to write (default {RESULTS.relative_to(REPO)} for the "
                                                 "whole catalogue, nothing for --only)")
    parser.add_argument("--workdir", type=Path, help="where the case folders go (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the case folders")
    args = parser.parse_args()

    if args.list:
        for c in CASES:
            print(f"{c.id:<32} {c.cls:<13} {c.expect:<8} {c.what}")
        print(f"\n{len(CASES)} cases: " + ", ".join(f"{k} {sum(c.cls == k for c in CASES)}" for k in CLASSES))
        return 0
    cases = select(args.only)
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="qbert-faults-", dir=args.workdir))
    fx = Fixtures(root / "_shared")
    started, cpu = time.perf_counter(), _cpu()
    rows = []
    try:
        for i, c in enumerate(cases, 1):
            row = run_case(c, fx, root)
            rows.append(row)
            print(f"[{i}/{len(cases)}] {row['id']}: {row['classification']} (exit {row['exit_code']}, "
                  f"{row['wall_s']:.0f} s) {(row['message'] or [''])[0][:140]}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"[fault_cases] case folders kept in {root}")
    wall, cpu = time.perf_counter() - started, _cpu() - cpu
    print()
    print(summary_table(rows))
    print(f"\n{len(rows)} cases in {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU (subprocesses; shared inputs "
          f"{fx.spent / 60:.1f} min wall, {fx.spent_cpu / 60:.1f} min CPU of it)")
    out = args.out or (RESULTS if not args.only else None)
    if out:
        counts = {v: sum(r["classification"] == v for r in rows) for v in VERDICTS}
        doc = {
            "command": "python experiments/fault_cases.py" + (f" --only {args.only}" if args.only else ""),
            "machine": f"{platform.machine()} {os.cpu_count()} cores, OMP_NUM_THREADS=1",
            "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                  text=True).stdout.strip(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "shared_inputs_wall_s": round(fx.spent, 1), "shared_inputs_cpu_s": round(fx.spent_cpu, 1),
            "counts": counts,
            "counts_by_class": {k: {v: sum(r["class"] == k and r["classification"] == v for r in rows)
                                    for v in VERDICTS if any(r["class"] == k and r["classification"] == v for r in rows)}
                                for k in CLASSES if any(r["class"] == k for r in rows)},
            "shared_inputs": fx.log,
            "cases": rows,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
