"""Damaged results/job/error files under a sweep's resume root: skipped, never a crash."""

from __future__ import annotations

import json

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
