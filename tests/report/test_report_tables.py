"""qbert-report on hand-written results.json files: the paper-style table it must produce."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from qbert.report.cli import main as report_main
from qbert.report.cli import report
from qbert.report.collect import collect_rows
from qbert.report.figures import pareto_front
from qbert.report.paper import PaperNumbers
from qbert.report.reproducibility import find_sweeps
from qbert.report.tables import Table, TableRow, build_tables, markdown, to_csv


def qmap_for(method: str, w_bits: int, groups: int, layer_bits=None, layers: int = 4) -> dict:
    """The quantization map such a run records: two Linears per encoder layer, word embeddings."""
    if method == "none":
        return {}
    bits = list(layer_bits) if layer_bits else [w_bits] * layers
    qmap = {f"bert.encoder.layer.{i}.{m}": {"w_bits": b, "a_bits": 8, "groups": groups}
            for i, b in enumerate(bits) for m in ("attention.self.query", "output.dense")}
    qmap["bert.embeddings.word_embeddings"] = {"w_bits": 8, "a_bits": 32, "groups": 1}
    return qmap


def write_job(folder: Path, method: str, value: float, seed: int, *, w_bits: int = 8, groups: int = 128,
              task: str = "sst2", init_from: str | None = None, experiment: str = "exp", extra_quant=None,
              mixed_precision=None, reused_from=None, chash: str | None = None) -> Path:
    quant = {"method": method, "w_bits": w_bits, "e_bits": 8, "a_bits": 8, "groups": groups,
             "allocation": "rule", "high_bits": 3, **(extra_quant or {})}
    config = {"task": {"name": task, "metric": "accuracy"}, "quant": quant, "seed": seed,
              "experiment_name": experiment, "init_from": init_from, "hessian": {"sensitivity": "eigenvalue"},
              "distill": {"enabled": False}}
    results = {
        "task": task, "model": "minilm", "method": method, "experiment": experiment, "seed": seed,
        "config_hash": chash or f"{method}{w_bits}{groups}s{seed}{task}",
        "primary_metric_name": "dev/accuracy", "primary_metric": value,
        "metrics": {"dev": {"accuracy": value}}, "size": {"encoder": {"mib": 40.0 * w_bits / 32}},
        "weights": {"init_from": init_from}, "timing_seconds": {"wall": 10.0},
        "mixed_precision": mixed_precision, "config": config,
        "quantization_map": qmap_for(method, w_bits, groups, (mixed_precision or {}).get("bits")),
        "data": {"source": "sample", "root": "x", "train": "train", "val": "dev", "test": ["dev"], "protocol_note": ""},
        "git": {"sha": "abc", "dirty": False}, "versions": {"torch": "2.13.0"}, "device": {"accelerator": "cpu"},
    }
    if reused_from:
        results["reused_from"] = reused_from
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def sweep(tmp_path):
    """A two-task sweep: three seeds of Q-BERT 4-bit, DirectQ 4-bit, Q-BERT MP 2/3, a failed job,
    a reused copy, baselines only as the full-precision starts the jobs name."""
    root = tmp_path / "sweep"
    starts = {}
    for seed, base in ((1, 84.0), (2, 86.0), (3, 85.0)):
        starts[seed] = str(write_job(tmp_path / "finetuned" / f"s{seed}", "none", base, seed, w_bits=32))
    for seed, v in ((1, 80.0), (2, 82.0), (3, 84.0)):
        write_job(root / f"q{seed}", "qbert", v, seed, w_bits=4, init_from=starts[seed])
        write_job(root / f"d{seed}", "directq", v - 10, seed, w_bits=4, groups=1, init_from=starts[seed])
    mp = {"bits": [3, 3, 2, 2], "mean_bits": 2.5, "size_wo_e_mib": 3.2, "allocation": "rule",
          "table": [{"omega": 9.0}, {"omega": 5.0}, {"omega": 2.0}, {"omega": 1.0}]}
    write_job(root / "mp1", "qbert_mp", 81.0, 1, w_bits=2, init_from=starts[1], mixed_precision=mp)
    # the same job again, copied by a re-run sweep: counted once
    write_job(root / "rerun" / "q1", "qbert", 80.0, 1, w_bits=4, init_from=starts[1], reused_from=str(root / "q1"))
    failed = root / "fail1"
    failed.mkdir()
    (failed / "error.json").write_text(json.dumps({
        "status": "failed", "config_hash": "boom", "error_type": "ValueError", "message": "groups=3 does not divide",
        "task": "sst2", "model": "minilm", "method": "qbert", "experiment": "exp", "seed": 1,
        "config": {"quant": {"method": "qbert", "w_bits": 2, "e_bits": 8, "a_bits": 8, "groups": 3},
                   "task": {"name": "sst2", "metric": "accuracy"}, "seed": 1}}))
    write_job(root / "c1", "qbert", 70.0, 1, w_bits=4, task="conll03", init_from=None)
    return root


def test_table_rows_seeds_deltas_and_paper(sweep):
    tables = build_tables(collect_rows([sweep]), PaperNumbers.load())
    sst2 = next(t for t in tables if t.task == "sst2")
    by = {(r.method, r.w_bits): r for r in sst2.rows}
    assert [(r.method, r.w_bits) for r in sst2.rows][0] == ("Baseline", "32")
    base, qb, dq, mp = by["Baseline", "32"], by["Q-BERT", "4"], by["DirectQ", "4"], by["Q-BERT MP", "2/3 MP"]
    assert base.values == [84.0, 86.0, 85.0] and base.mean == pytest.approx(85.0)
    assert qb.seeds == [1, 2, 3] and qb.mean == pytest.approx(82.0) and qb.std == pytest.approx(2.0)
    assert qb.delta == pytest.approx(-3.0) and dq.delta == pytest.approx(-13.0) and dq.groups == 1
    assert qb.paper.value == 92.66 and qb.paper.delta == pytest.approx(92.66 - 93.00)
    assert dq.paper.value == 85.67 and mp.paper.value == 92.08 and mp.paper.size_mb == 25.4
    assert mp.layer_bits == [3, 3, 2, 2] and mp.mean_w_bits == 2.5
    failed = by["Q-BERT", "2"]
    assert failed.mean is None and "groups=3 does not divide" in failed.failed[0]
    assert sst2.omega == {"seed 1": [9.0, 5.0, 2.0, 1.0]}
    # conll03: no baseline anywhere (no init_from) -> no delta, but the row is there
    conll = next(t for t in tables if t.task == "conll03")
    assert [(r.method, r.mean, r.delta) for r in conll.rows] == [("Q-BERT", 70.0, None)]


def test_markdown_and_csv(sweep):
    tables = build_tables(collect_rows([sweep]), PaperNumbers.load())
    sst2 = next(t for t in tables if t.task == "sst2")
    md = markdown(sst2)
    assert "| Q-BERT | 4 | 8 | 8 | 128 | 82.00 ± 2.00 (n=3) | -3.00 | 92.66 | -0.34 | 5.00 | 40.6 | 1,2,3 |" in md
    assert "| Baseline | 32 | 32 | 32 |  | 85.00 ± 1.00 (n=3) |  | 93.00 |  |" in md
    assert "Failed: Q-BERT 2: seed 1: ValueError: groups=3 does not divide" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(sst2))))
    qb = next(r for r in rows if r["method"] == "Q-BERT" and r["w_bits"] == "4")
    assert float(qb["mean"]) == 82.0 and float(qb["std"]) == 2.0 and qb["n"] == "3" and qb["seeds"] == "1 2 3"


def test_report_writes_everything(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert report_main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "82.00 ± 2.00 (n=3)" in printed and "1 failed job(s)" in printed
    names = {p.name for p in out.iterdir()}
    assert {"exp_sst2_minilm.md", "exp_sst2_minilm.csv", "exp_sst2_minilm_metric_vs_bits.png",
            "exp_sst2_minilm_pareto.png", "exp_sst2_minilm_hessian_omega.png", "dashboard.html",
            "reproducibility.md", "reproducibility.html", "summary.json"} <= names
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "dashboard.html").read_text()
    assert "data:image/png;base64," in html and "Q-BERT MP" in html
    repro = (out / "reproducibility.md").read_text()
    for part in ("## Commands", "## Environment", "git `abc` (clean)", "## Data provenance", "## Seeds and variance",
                 "| sst2 | Q-BERT | 4 | 1,2,3 | 80.00, 82.00, 84.00 | 82.00 | 2.00 |", "## Failed jobs"):
        assert part in repro, part
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["failures"]) == 1 and {t["task"] for t in summary["tables"]} == {"sst2", "conll03"}


def test_sweeps_of_one_table_in_parts_merge(sweep, tmp_path):
    other = tmp_path / "part2"
    write_job(other / "q8", "qbert", 84.5, 1, w_bits=8, experiment="exp_part2", init_from=str(tmp_path / "finetuned" / "s1"))
    summary = report([sweep, other], tmp_path / "merged", as_experiment="merged")
    sst2 = next(t for t in summary["tables"] if t["task"] == "sst2")
    assert sst2["experiment"] == "merged" and len(summary["tables"]) == 2
    assert {(r["method"], r["w_bits"]) for r in sst2["rows"]} >= {("Q-BERT", "8"), ("Q-BERT", "4"), ("Baseline", "32")}


def test_report_refuses_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no readable results.json"):
        report([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(SystemExit):
        report_main([str(tmp_path / "missing")])


def test_paper_numbers_are_checked(tmp_path):
    bad = tmp_path / "paper.yaml"
    bad.write_text("qbert:\n  tasks:\n    sst2:\n      rows:\n        - {method: DirectQ, value: 1.0}\n")
    with pytest.raises(ValueError, match=r"qbert.tasks.sst2.rows\[0\] lacks \['w_bits'\]"):
        PaperNumbers.load(bad)


@pytest.mark.parametrize(("content", "said"), [
    ("qbert: {tasks: [unclosed\n", "not a readable YAML file"),
    ("- qbert\n- q8bert\n", "expected a mapping of paper -> its tables, found a list"),
    ("qbert:\n  tasks:\n    sst2: [1, 2]\n", "qbert.tasks.sst2: expected a mapping with a 'rows' list"),
    ("qbert:\n  tasks:\n    sst2:\n      rows: [DirectQ]\n", "qbert.tasks.sst2.rows[0]: expected a mapping"),
    ("qbert:\n  groups: [128]\n  tasks: {}\n", "qbert.groups: expected a mapping of method -> group count"),
])
def test_paper_numbers_that_are_not_a_table_are_refused_naming_the_file(tmp_path, capsys, content, said):
    bad = tmp_path / "paper.yaml"
    bad.write_bytes(content.encode())
    with pytest.raises(ValueError) as err:
        PaperNumbers.load(bad)
    assert str(bad) in str(err.value) and said in str(err.value)
    (tmp_path / "sweep").mkdir()
    with pytest.raises(SystemExit) as exit_:  # the command line says it in one line, no traceback
        report_main([str(tmp_path / "sweep"), "--paper", str(bad)])
    assert exit_.value.code == 2 and f"qbert-report: error: {bad}" in capsys.readouterr().err


def test_report_refuses_an_out_path_that_is_a_file(sweep, tmp_path, capsys):
    out = tmp_path / "report.txt"
    out.write_text("not a folder\n")
    with pytest.raises(SystemExit) as exit_:
        report_main([str(sweep), "--out", str(out)])
    assert exit_.value.code == 2 and f"--out {out}: a file, not a folder" in capsys.readouterr().err
    assert out.read_text() == "not a folder\n"


def test_pareto_front():
    points = [(10.0, 80.0), (5.0, 79.0), (5.0, 70.0), (2.5, 50.0), (3.0, 40.0), (20.0, 79.5)]
    assert pareto_front(points) == [(2.5, 50.0), (5.0, 79.0), (10.0, 80.0)]


def test_rows_come_in_the_papers_order(tmp_path):
    """Baseline, 8, 4, 3, MP 2/4, 2, MP 2/3 — DirectQ before Q-BERT at each width."""
    start = str(write_job(tmp_path / "start", "none", 90.0, 1, w_bits=32))
    rows = [("qbert_mp", 2, {"high_bits": 3}, [3, 3, 3, 2, 2, 2]), ("qbert", 2, {}, None), ("directq", 2, {}, None),
            ("qbert_mp", 2, {"high_bits": 4}, [4, 4, 4, 2, 2, 2]), ("qbert", 3, {}, None), ("directq", 3, {}, None),
            ("qbert", 4, {}, None), ("directq", 4, {}, None), ("qbert", 8, {}, None), ("directq", 8, {}, None)]
    for i, (method, w, extra, bits) in enumerate(rows):
        mp = {"bits": bits, "mean_bits": sum(bits) / 6, "size_wo_e_mib": 3.0, "allocation": "rule"} if bits else None
        write_job(tmp_path / "sweep" / f"j{i}", method, 80.0 - i, 1, w_bits=w, init_from=start, extra_quant=extra,
                  mixed_precision=mp, groups=1 if method == "directq" else 128, chash=f"job{i}")
    (table,) = build_tables(collect_rows([tmp_path / "sweep"]))
    assert [(r.method, r.w_bits) for r in table.rows] == [
        ("Baseline", "32"), ("DirectQ", "8"), ("Q-BERT", "8"), ("DirectQ", "4"), ("Q-BERT", "4"),
        ("DirectQ", "3"), ("Q-BERT", "3"), ("Q-BERT MP", "2/4 MP"), ("DirectQ", "2"), ("Q-BERT", "2"),
        ("Q-BERT MP", "2/3 MP")]


def test_reproducibility_html_renders_its_markdown(sweep, tmp_path):
    out = tmp_path / "out"
    assert report_main([str(sweep), "--out", str(out)]) == 0
    page = (out / "reproducibility.html").read_text()
    environment = page.split('id="environment-data-protocol"', 1)[1]
    assert "<li>" in environment and "<code>abc</code>" in environment
    assert "## " not in environment and "`abc`" not in environment and "- 1" not in environment
    assert "exp_sst2_minilm_delta_vs_paper.png" in page
    assert page.count("in MiB (2^20 bytes") >= 1


def test_markdown_in_a_dashboard_never_runs_html():
    from qbert.report.dashboard import render_markdown_html
    rendered = render_markdown_html("**x** <script>alert(1)</script>\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert "<strong>x</strong>" in rendered and "<script>" not in rendered and "<table>" in rendered


def test_one_colour_per_method_in_every_plot(sweep, tmp_path):
    import matplotlib.pyplot as plt

    from qbert.report import figures
    from qbert.report.figures import method_colour
    main = ["Baseline", "DirectQ", "Q-BERT", "Q-BERT MP", "Q8BERT", "Dynamic PTQ", "MKQ-BERT", "MKQ-BERT w/o KD"]
    assert len({method_colour(m) for m in main}) == len(main)
    assert method_colour("Q-BERT MP ILP") == method_colour("Q-BERT MP 2/3") == method_colour("Q-BERT MP")
    assert method_colour("something new") == method_colour("something new")
    sst2 = next(t for t in build_tables(collect_rows([sweep]), PaperNumbers.load()) if t.task == "sst2")
    seen: dict[str, set] = {}
    real_save = figures._save

    def record(fig, path):  # colours of every labelled artist, per method, across all plots
        for ax in fig.axes:
            for artist in [*ax.lines, *ax.collections, *ax.patches]:
                label = artist.get_label()
                if label in main:
                    colour = artist.get_color() if hasattr(artist, "get_color") else artist.get_facecolor()
                    colour = colour[0] if getattr(colour, "ndim", 1) == 2 else colour
                    seen.setdefault(label, set()).add(matplotlib_hex(colour))
        return real_save(fig, path)

    def matplotlib_hex(c):
        from matplotlib.colors import to_hex
        return to_hex(c)

    figures._save = record
    try:
        made = figures.table_figures(sst2, tmp_path / "figs")
    finally:
        figures._save = real_save
        plt.close("all")
    assert any(p.name.endswith("_delta_vs_paper.png") for p in made)
    assert {"DirectQ", "Q-BERT"} <= set(seen), seen
    assert all(colours == {method_colour(m)} for m, colours in seen.items()), seen


def test_a_killed_job_is_listed_not_dropped(sweep, tmp_path):
    import yaml
    killed = sweep / "killed_q2"
    (killed / ".hydra").mkdir(parents=True)
    (killed / "job.json").write_text(json.dumps({"config_hash": "k1", "status": "running", "started": 1.0}))
    (killed / ".hydra" / "config.yaml").write_text(yaml.safe_dump({
        "task": {"name": "sst2", "metric": "accuracy"}, "model": {"name": "minilm"}, "seed": 2,
        "experiment_name": "exp", "quant": {"method": "qbert", "w_bits": 3, "e_bits": 8, "a_bits": 8, "groups": 128}}))
    summary = report([sweep], tmp_path / "out")
    killed_rows = [f for f in summary["failures"] if "Unfinished: killed, or still running" in f]
    assert len(killed_rows) == 1 and "Q-BERT 3" in killed_rows[0] and "seed 2" in killed_rows[0]


def _planned_sweep(root: Path, started: dict[str, float]) -> Path:
    """A sweep folder as Hydra leaves it: multirun.yaml planning rows qbert_w4 and qbert_w3 of the
    SST-2 preset (seed 1); a job folder (overrides + results) for each row in ``started``."""
    import yaml
    from qbert.report.planned import job_config
    from qbert.report.record import config_hash

    root.mkdir(parents=True)
    task = ["experiment=qbert_sst2", "seed=1"]
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "max_batch_size": None, "params": {"row": "qbert_w4,qbert_w3", "seed": "1,2,3"}},
        "overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": task}}}))
    for num, (row, value) in enumerate(started.items()):
        overrides = [f"row={row}", *task]
        folder = write_job(root / f"{num}_job", "qbert", value, 1, w_bits=int(row[-1]), experiment="qbert_sst2",
                           chash=config_hash(job_config(overrides)))
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return root


def test_a_never_started_job_is_listed_with_its_row(tmp_path):
    sweep_dir = _planned_sweep(tmp_path / "sweep", {"qbert_w4": 80.0})  # killed before job 1 (qbert_w3)
    rows = collect_rows([sweep_dir])
    missing = [r for r in rows if r.status == "not started"]
    assert len(missing) == 1, [(r.method, r.w_bits, r.status) for r in rows]
    assert (missing[0].method, missing[0].w_bits, missing[0].seed) == ("Q-BERT", "3", 1)
    assert "job 1 (row=qbert_w3 seed=1) never started" in missing[0].error
    table = build_tables(rows)[0]
    assert [t.shown() for t in table.rows if t.w_bits == "3"] == ["not started"]
    summary = report([sweep_dir], tmp_path / "out")
    assert any("NotStarted" in f and "Q-BERT 3" in f for f in summary["failures"])
    assert "never started" in (tmp_path / "out" / "reproducibility.md").read_text()


def test_a_job_finished_by_a_later_sweep_is_not_listed_as_never_started(tmp_path):
    first = _planned_sweep(tmp_path / "first", {"qbert_w4": 80.0})
    later = _planned_sweep(tmp_path / "later", {"qbert_w4": 80.0, "qbert_w3": 79.0})
    rows = collect_rows([first, later])
    assert not [r for r in rows if r.status != "finished"], [(r.method, r.w_bits, r.status) for r in rows]


def test_jobs_of_an_earlier_command_into_the_same_sweep_folder_are_counted_apart(tmp_path):
    """Hydra overwrites multirun.yaml with the last command; a job the first command left there is not
    this command's job: the sweep says so, and its walls leave that job out."""
    import yaml
    sweep_dir = _planned_sweep(tmp_path / "sweep", {"qbert_w4": 80.0, "qbert_w3": 79.0})
    earlier = write_job(sweep_dir / "9_earlier", "directq", 70.0, 1, w_bits=2, groups=1, experiment="qbert_sst2")
    (earlier / ".hydra").mkdir()
    (earlier / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["row=directq_w2", "experiment=qbert_sst2", "seed=1"]))
    for num, job in enumerate(sorted(sweep_dir.glob("*_*"))):
        (job / "job.json").write_text(json.dumps({"started": 100.0 * num, "ended": 100.0 * num + 10}))
    (sweep,) = find_sweeps([sweep_dir])
    # 0_job, 1_job: this command's, started at 0 and 100; 9_earlier sorts last (started 200) and is apart
    assert (sweep.jobs, sweep.other_jobs) == (2, 1)
    assert sweep.wall_seconds == pytest.approx(110.0) and sweep.job_wall_seconds == pytest.approx(20.0)
    report([sweep_dir], tmp_path / "out")
    repro = (tmp_path / "out" / "reproducibility.md").read_text()
    assert "and 1 job(s) an earlier command left in the same folder" in repro
    assert "`qbert row=directq_w2 experiment=qbert_sst2 seed=1`" in repro  # its own command, in the job table


def test_an_installed_package_names_the_checkout_it_was_started_in(sweep, tmp_path):
    job = sweep / "q1" / "results.json"
    results = json.loads(job.read_text())
    results["git"] = {"sha": None, "dirty": None, "installed": True}
    results["cwd_git"] = {"sha": "7c07917", "dirty": False}
    job.write_text(json.dumps(results))
    report([sweep], tmp_path / "out")
    repro = (tmp_path / "out" / "reproducibility.md").read_text()
    assert "installed package (no checkout to read), started in checkout `7c07917` (clean)" in repro
    assert "git `abc` (clean)" in repro  # the other jobs still name their own checkout


def test_runs_of_one_method_and_width_that_differ_in_a_setting_are_named_by_it(tmp_path):
    """A recipe study: Q-BERT 8 at two learning rates must not print as two identical rows."""
    root = tmp_path / "recipes"
    start = str(write_job(tmp_path / "start", "none", 90.0, 1, w_bits=32))
    for name, lr, value in (("a", 3e-5, 88.0), ("b", 1e-5, 89.5)):
        write_job(root / name, "qbert", value, 1, w_bits=8, init_from=start, extra_quant={"lr": lr},
                  chash=f"lr{lr}")
    write_job(root / "w4", "qbert", 87.0, 1, w_bits=4, init_from=start, extra_quant={"lr": 3e-5})
    (table,) = build_tables(collect_rows([root]), PaperNumbers.load())
    shown = {t.method_shown: t for t in table.rows}
    assert {"Q-BERT (quant.lr=3e-05)", "Q-BERT (quant.lr=1e-05)", "Q-BERT", "Baseline"} == set(shown), set(shown)
    assert shown["Q-BERT (quant.lr=1e-05)"].mean == 89.5 and shown["Q-BERT (quant.lr=1e-05)"].paper.value == 92.88
    assert shown["Q-BERT"].w_bits == "4"  # alone at its width: no setting in its name
    assert "| Q-BERT (quant.lr=1e-05) | 8 |" in markdown(table)
    rows = {r["config_hashes"]: r for r in csv.DictReader(io.StringIO(to_csv(table)))}
    assert rows["lr1e-05"]["setting"] == "quant.lr=1e-05" and rows["lr3e-05"]["method"] == "Q-BERT"  # its own column
    report([root], tmp_path / "out")  # the plots take the two runs as two series


def test_a_damaged_sweep_plan_costs_only_the_never_started_rows(tmp_path, caplog):
    sweep_dir = _planned_sweep(tmp_path / "sweep", {"qbert_w4": 80.0})
    (sweep_dir / "multirun.yaml").write_bytes(b"\xff\xfe not yaml")
    rows = collect_rows([sweep_dir])
    assert [r.status for r in rows] == ["finished"]
    assert "multirun.yaml" in caplog.text


def test_a_row_without_results_prints_the_widths_a_finished_row_would():
    from qbert.report.rows import from_error

    def row(quant):
        return from_error({"status": "not_started", "config": {"quant": quant, "task": {"metric": "f1"}}})
    mp = row({"method": "qbert_mp", "w_bits": 2, "high_bits": 3, "allocation": "rule", "groups": 128})
    assert (mp.method, mp.w_bits, mp.groups, mp.status) == ("Q-BERT MP", "2/3 MP", 128, "not started")
    directq = row({"method": "directq", "w_bits": 4, "groups": 128})  # directq does not read groups
    assert (directq.w_bits, directq.groups) == ("4", 1)


def test_failure_line_names_a_mixed_row_once():
    """A failed MP row is named "Q-BERT MP 2/4", not "Q-BERT MP 2/4 MP" (its widths end in MP too)."""
    def row(method, w_bits):
        return TableRow(method=method, w_bits=w_bits, mean_w_bits=3.0, e_bits=8, a_bits=8, groups=128, values=[],
                        seeds=[], size_wo_e_mib=None, family="qbert", failed=["seed 1: NotStarted: never started"])
    table = Table(experiment="exp", task="mnli", model="minilm", metric="accuracy",
                  rows=[row("Q-BERT MP", "2/4 MP"), row("Q-BERT", "2")])
    assert table.failures == ["Q-BERT MP 2/4: seed 1: NotStarted: never started",
                              "Q-BERT 2: seed 1: NotStarted: never started"]


def test_a_row_with_another_group_count_gets_no_paper_number():
    paper = PaperNumbers.load()
    assert paper.cell("qbert", "sst2", "Q-BERT", "4", 128).value == 92.66
    assert paper.cell("qbert", "sst2", "Q-BERT", "4", None).value == 92.66  # count unknown: by name
    assert paper.cell("qbert", "sst2", "Q-BERT", "4", 12) is None  # the group-count study's row
    assert paper.cell("qbert", "sst2", "DirectQ", "4", 1).value == 85.67
    assert paper.cell("qbert", "sst2", "DirectQ", "4", 128) is None


def test_e_bits_name_the_quantized_embedding_of_a_module_study_row():
    from qbert.report.widths import widths_from_map
    spec = {"a_bits": 32, "groups": 1}
    assert widths_from_map({"bert.embeddings.position_embeddings": {"w_bits": 4, **spec}}).e_bits == 4
    both = {"bert.embeddings.position_embeddings": {"w_bits": 4, **spec},
            "bert.embeddings.word_embeddings": {"w_bits": 8, **spec}}
    assert widths_from_map(both).e_bits == 8  # the word embedding's, as the papers' tables print it
    encoder_only = {"bert.encoder.layer.0.output.dense": {"w_bits": 4, "a_bits": 8, "groups": 128}}
    assert widths_from_map(encoder_only).e_bits == 32


def test_a_table_scored_on_a_holdout_gets_no_paper_numbers(tmp_path):
    folder = write_job(tmp_path / "h", "qbert", 94.0, 1, w_bits=8)
    results = json.loads((folder / "results.json").read_text())
    results["primary_metric_name"] = "holdout/accuracy"
    (folder / "results.json").write_text(json.dumps(results))
    (table,) = build_tables(collect_rows([tmp_path]), PaperNumbers.load())
    assert all(t.paper is None for t in table.rows) and "held out" in table.note


def _tables_text(out: Path) -> str:
    return "\n".join((out / name).read_text() for name in sorted(p.name for p in out.glob("*.md"))
                     if name != "reproducibility.md")


def test_a_report_folder_rebuilds_its_tables_after_the_sweep_and_starts_are_gone(sweep, tmp_path):
    import shutil
    first = tmp_path / "first"
    report([sweep], first)
    assert (first / "jobs" / "sweep" / "q1" / "results.json").is_file()
    assert (first / "jobs" / "_starts" / "s1" / "results.json").is_file()  # the baseline's source
    shutil.rmtree(sweep)
    shutil.rmtree(tmp_path / "finetuned")
    again = tmp_path / "again"
    summary = report([first], again)
    assert _tables_text(again) == _tables_text(first)  # baselines, failures, seeds: all there
    assert len(summary["failures"]) == 1
    # rebuilt from the rebuilt report: the archive keeps its layout instead of nesting
    report([again], tmp_path / "third")
    assert (tmp_path / "third" / "jobs" / "sweep" / "q1" / "results.json").is_file()
    assert not list((tmp_path / "third" / "jobs").glob("*/jobs"))


def test_a_later_seed_joins_a_committed_report(tmp_path):
    """A table reported for seed 1 whose sweep folder is gone; seed 2 run later into a new folder:
    the report and the new folder together give the mean over both seeds, with both baselines."""
    import shutil
    seed1, seed2 = tmp_path / "seed1", tmp_path / "seed2"
    start1 = str(write_job(tmp_path / "finetuned" / "s1", "none", 84.0, 1, w_bits=32))
    start2 = str(write_job(tmp_path / "finetuned" / "s2", "none", 86.0, 2, w_bits=32))
    write_job(seed1 / "q", "qbert", 80.0, 1, w_bits=4, init_from=start1)
    write_job(seed2 / "q", "qbert", 84.0, 2, w_bits=4, init_from=start2)
    report([seed1], tmp_path / "committed")
    shutil.rmtree(seed1)
    shutil.rmtree(tmp_path / "finetuned" / "s1")
    table = build_tables(collect_rows([tmp_path / "committed", seed2]))[0]
    by = {r.method: r for r in table.rows}
    assert by["Q-BERT"].seeds == [1, 2] and by["Q-BERT"].mean == pytest.approx(82.0)
    assert by["Baseline"].values == [84.0, 86.0] and by["Q-BERT"].delta == pytest.approx(-3.0)


def test_a_report_inside_its_sweep_folder_counts_each_job_and_sweep_once(tmp_path):
    sweep_dir = _planned_sweep(tmp_path / "sweep", {"qbert_w4": 80.0, "qbert_w3": 79.0})
    for _ in range(2):  # the default --out, twice: the second run reads the first one's archive too
        summary = report_main([str(sweep_dir)])
        assert summary == 0
    sweeps = find_sweeps([sweep_dir])
    assert len(sweeps) == 1 and sweeps[0].jobs == 2
    rows = collect_rows([sweep_dir])
    assert sorted((r.w_bits, r.status) for r in rows) == [("3", "finished"), ("4", "finished")]
    assert not list((sweep_dir / "report" / "jobs").glob("**/report"))


def test_only_a_reports_archive_makes_a_start_a_baseline_instead_of_a_job(tmp_path):
    # a sweep a user happened to lay out as jobs/_starts/<run>: its results are a job, not skipped
    own = tmp_path / "mine" / "jobs" / "_starts" / "q"
    write_job(own, "qbert", 80.0, 1, w_bits=4)
    rows = collect_rows([tmp_path / "mine"])
    assert [(r.method, r.w_bits, r.status) for r in rows if r.status == "finished"] == [("Q-BERT", "4", "finished")]


def test_a_row_on_fewer_seeds_is_measured_against_its_own_seeds_starts(tmp_path):
    start1 = str(write_job(tmp_path / "finetuned" / "s1", "none", 84.0, 1, w_bits=32))
    start2 = str(write_job(tmp_path / "finetuned" / "s2", "none", 86.0, 2, w_bits=32))
    write_job(tmp_path / "sweep" / "a1", "qbert", 83.0, 1, w_bits=4, init_from=start1)
    write_job(tmp_path / "sweep" / "a2", "qbert", 83.0, 2, w_bits=4, init_from=start2)
    write_job(tmp_path / "sweep" / "b1", "qbert", 80.0, 1, w_bits=2, init_from=start1)  # seed 1 only
    table = build_tables(collect_rows([tmp_path / "sweep"]))[0]
    by = {r.w_bits: r for r in table.rows}
    assert by["4"].delta == pytest.approx(-2.0)  # 83 against the mean start 85
    assert by["2"].delta == pytest.approx(-4.0)  # 80 against seed 1's start 84, not the mean 85
