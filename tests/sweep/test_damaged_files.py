"""Damaged results/job/error files under a sweep's resume root: skipped, never a crash."""

from __future__ import annotations

import json
import logging

import pytest

from qbert.report.cli import main as report_main
from qbert.report.record import read_json
from qbert.sweep.jobs import find_finished, find_resumable


def _damaged(root):
    (root / "a").mkdir(parents=True)
    (root / "a" / "results.json").write_text("[1, 2, 3]")  # valid JSON, not an object
    (root / "b").mkdir()
    (root / "b" / "results.json").write_bytes(b'{"config_hash": "\xff\xfe"}')  # not UTF-8
    (root / "c").mkdir()
    (root / "c" / "results.json").write_text('{"config_hash": "abc", "primary')  # half written
    (root / "d").mkdir()
    (root / "d" / "job.json").write_text('"abc"')
    (root / "d" / "error.json").write_text("42")
    (root / "d" / "checkpoints").mkdir()
    (root / "d" / "checkpoints" / "last.ckpt").write_bytes(b"x")


def test_read_json_returns_objects_only(tmp_path):
    _damaged(tmp_path)
    assert [read_json(tmp_path / x / "results.json") for x in "abc"] == [None, None, None]
    (tmp_path / "ok.json").write_text(json.dumps({"config_hash": "abc"}))
    assert read_json(tmp_path / "ok.json") == {"config_hash": "abc"}


def test_a_damaged_file_under_the_resume_root_does_not_stop_a_rerun(tmp_path):
    _damaged(tmp_path)
    assert find_finished(tmp_path, "abc") is None
    assert find_resumable(tmp_path, "abc") is None


def test_report_skips_damaged_files_naming_them(tmp_path, caplog, capsys):
    _damaged(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        report_main([str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2  # nothing readable left: an error, not an empty report
    assert "no readable results.json or error.json" in capsys.readouterr().err
    skipped = {r.getMessage() for r in caplog.records}
    for name in ("a", "b", "c"):
        assert any(str(tmp_path / name / "results.json") in m for m in skipped), skipped


@pytest.mark.parametrize(("edit", "field"), [
    (lambda r: r.pop("config"), "config"),
    (lambda r: r.update(primary_metric="83.1"), "primary_metric"),
    (lambda r: r.update(primary_metric=None), "primary_metric"),
    (lambda r: r.update(config_hash=7), "config_hash"),
])
def test_report_skips_a_results_file_it_would_misread(tmp_path, caplog, edit, field):
    from qbert.report.collect import find_jobs
    results = {"task": "sst2", "config_hash": "abc", "primary_metric_name": "dev/accuracy",
               "primary_metric": 83.1, "config": {"quant": {"method": "qbert"}}}
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "results.json").write_text(json.dumps(results))
    edit(results)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text(json.dumps(results))
    finished, _ = find_jobs([tmp_path])
    assert [folder.name for folder, _ in finished] == ["good"]
    assert any(str(tmp_path / "bad" / "results.json") in r.getMessage() and f"'{field}'" in r.getMessage()
               for r in caplog.records)


def test_a_rerun_names_each_damaged_results_file_it_skips_once(tmp_path, caplog):
    from qbert.sweep import jobs
    _damaged(tmp_path)
    jobs._warned.clear()
    with caplog.at_level(logging.WARNING):
        assert find_finished(tmp_path, "abc") is None
        assert find_finished(tmp_path, "def") is None  # the next job of the sweep: not said again
    for name in ("a", "b", "c"):
        said = [r.getMessage() for r in caplog.records if str(tmp_path / name / "results.json") in r.getMessage()]
        assert len(said) == 1 and "runs again" in said[0], said


def test_a_damaged_job_file_beside_a_checkpoint_is_named(tmp_path, caplog):
    from qbert.sweep import jobs
    _damaged(tmp_path)
    jobs._warned.clear()
    with caplog.at_level(logging.WARNING):
        assert find_resumable(tmp_path, "abc") is None
    assert any(str(tmp_path / "d" / "job.json") in r.getMessage() and "not resumed" in r.getMessage()
               for r in caplog.records)


def test_an_unreadable_checkpoint_is_not_resumed_and_is_named(tmp_path, caplog):
    from qbert.sweep import jobs
    (tmp_path / "a" / "checkpoints").mkdir(parents=True)
    (tmp_path / "a" / "job.json").write_text(json.dumps({"config_hash": "abc", "status": "running"}))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 half a checkpoint")
    jobs._warned.clear()
    with caplog.at_level(logging.WARNING):
        assert find_resumable(tmp_path, "abc") is None  # resuming would fail the job on every re-run
    assert any(str(ckpt) in r.getMessage() and "starts over" in r.getMessage() for r in caplog.records)
    import torch
    torch.save({"state_dict": {}}, ckpt)  # a readable one is resumed
    assert find_resumable(tmp_path, "abc") == ckpt


def test_a_report_archive_under_the_resume_root_is_neither_reused_nor_resumed(tmp_path):
    """qbert-report copies each job's results and job.json into <report>/jobs/; those copies are
    not jobs: deleting a job's results.json to run it again must not find the copy instead."""
    import torch

    results = {"primary_metric_name": "dev/accuracy", "primary_metric": 80.0, "config": {}, "config_hash": "abc",
               "task": "sst2"}
    copy = tmp_path / "sweep" / "report" / "jobs" / "sweep" / "0_job"
    copy.mkdir(parents=True)
    (copy / "results.json").write_text(json.dumps(results))
    (tmp_path / "sweep" / "report" / "summary.json").write_text("{}")
    assert find_finished(tmp_path, "abc") is None
    job = tmp_path / "sweep" / "0_job"  # the original, killed after its last checkpoint
    (job / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 3}, job / "checkpoints" / "last.ckpt")
    (job / "job.json").write_text(json.dumps({"config_hash": "abc", "status": "running"}))
    (copy / "results.json").unlink()  # an archived copy of a killed job (job.json only)
    (copy / "job.json").write_text(json.dumps({"config_hash": "abc", "status": "running"}))
    (copy / "checkpoints").mkdir()
    torch.save({"global_step": 5}, copy / "checkpoints" / "last.ckpt")
    assert find_resumable(tmp_path, "abc") == job / "checkpoints" / "last.ckpt"
    (tmp_path / "sweep" / "report" / "summary.json").unlink()  # not a report: an ordinary folder of jobs
    assert find_resumable(tmp_path, "abc") == copy / "checkpoints" / "last.ckpt"  # the newer one
    (copy / "results.json").write_text(json.dumps(results))
    assert find_finished(tmp_path, "abc") == copy
