"""One job (qbert/sweep/jobs.py) and the end of a sweep (callbacks.py): what is refused before
the training stack loads, and what a failure shows on the console."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from qbert.data.readers import DataFormatError
from qbert.data.sources import SAMPLE_ROOT
from qbert.sweep.callbacks import SweepReport
from qbert.sweep.jobs import preflight, run_job

PREFLIGHT = """
import sys
from hydra import compose, initialize_config_dir
from qbert.config import CONF_DIR, register_configs
from qbert.sweep.jobs import preflight
register_configs()
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    cfg = compose(config_name="train", overrides=sys.argv[1:] + ["output_dir=."])
try:
    preflight(cfg)
except (ValueError, OSError) as err:
    print("refused:", err)
print("loaded:", sorted(m for m in ("lightning", "transformers") if m in sys.modules))
"""


@pytest.mark.parametrize(("override", "said"), [
    ("optim.lr=7", "config key 'optim.lr': must be in (0, 1)"),
    ("init_from=/nonexistent/run", "config key 'init_from': /nonexistent/run does not exist"),
    ("task.num_labels=5", "config key 'task.num_labels': 5 does not match the 2 labels of sst2"),
])
def test_a_bad_config_is_refused_before_the_training_stack_loads(override, said):
    out = subprocess.run([sys.executable, "-c", PREFLIGHT, "model=tiny", override], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"refused: {said}" in out.stdout
    assert "loaded: []" in out.stdout  # seconds, not the half minute Lightning and transformers take


def _local(tmp_path, task_folder: str):
    shutil.copytree(SAMPLE_ROOT / task_folder, tmp_path / task_folder)
    return tmp_path


def test_a_damaged_test_split_is_refused_before_anything_trains(compose_cfg, tmp_path):
    root = _local(tmp_path, "conll2003")
    test = root / "conll2003" / "test.txt.gz"
    lines = gzip.decompress(test.read_bytes()).decode().split("\n")
    lines[3] = lines[3].rsplit(" ", 1)[0] + " B-FOO"
    test.unlink()
    (root / "conll2003" / "test.txt").write_text("\n".join(lines))
    cfg = compose_cfg(["task=conll03", "model=tiny", "data.source=local", f"data.root={root}"], output_dir=tmp_path)
    with pytest.raises(DataFormatError, match=r"test\.txt, line 4: .*'B-FOO'"):
        preflight(cfg)


def test_an_eval_only_run_needs_only_its_test_splits(compose_cfg, tmp_path):
    root = _local(tmp_path, "sst2")
    (root / "sst2" / "train.tsv.gz").unlink()
    local = ["model=tiny", "data.source=local", f"data.root={root}"]
    preflight(compose_cfg([*local, "eval_only=true", f"init_from={tmp_path}"], output_dir=tmp_path))
    with pytest.raises(FileNotFoundError, match=r"train\.tsv"):
        preflight(compose_cfg(local, output_dir=tmp_path))


def test_a_failed_job_shows_its_message_not_its_traceback(compose_cfg, tmp_path, caplog, capsys):
    cfg = compose_cfg(["model=tiny", "optim.lr=7", f"sweep.resume_root={tmp_path}"], output_dir=tmp_path / "job")
    with caplog.at_level(logging.INFO):
        assert run_job(cfg, multirun=True) is None
    assert "Traceback" not in caplog.text and "config key 'optim.lr'" in caplog.text
    assert "FAILED: sst2 / none seed 42: ValueError: config key 'optim.lr'" in capsys.readouterr().out
    error = json.loads((tmp_path / "job" / "error.json").read_text())
    assert "Traceback" in error["traceback"]  # kept, where the console line points
    assert json.loads((tmp_path / "job" / "job.json").read_text())["status"] == "failed"


def test_a_failed_job_fails_the_sweep_without_a_report(tmp_path, capsys):
    (tmp_path / "0_ok").mkdir()
    (tmp_path / "0_ok" / "results.json").write_text("{}")
    (tmp_path / "1_bad").mkdir()
    (tmp_path / "1_bad" / "error.json").write_text("{}")
    config = OmegaConf.create({"sweep": {"report": False}, "hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit) as exit_:
        SweepReport().on_multirun_end(config)
    assert exit_.value.code == 1 and str(tmp_path / "1_bad") in capsys.readouterr().err
    (tmp_path / "1_bad" / "error.json").unlink()
    SweepReport().on_multirun_end(config)  # nothing failed: no exit
