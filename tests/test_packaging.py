"""The package as a wheel sees it, and the import graph's layering.

The wheel itself is built, installed into a fresh venv and run from an empty folder by
``.ci/wheel_check`` (minutes of pip); these tests catch the same mistakes from the checkout.
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _on_disk_packages() -> set[str]:
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "qbert").rglob("__init__.py")}
    if (ROOT / "conf" / "__init__.py").exists():
        found.add("qbert.conf")
    return found


def test_every_package_on_disk_is_listed_in_pyproject():
    listed = set(SETUPTOOLS["packages"])
    missing = sorted(_on_disk_packages() - listed)
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {missing}: a wheel would ship without them"
    stale = sorted(listed - _on_disk_packages())
    assert not stale, f"pyproject.toml lists packages that do not exist: {stale}"


def _shipped(package_dir: Path, patterns: list[str], path: Path) -> bool:
    rel = path.relative_to(package_dir).as_posix()
    return any(fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(rel, pattern.replace("**/", ""))
               for pattern in patterns)


def test_every_config_and_data_file_matches_the_package_data():
    data = SETUPTOOLS["package-data"]
    conf_dir = ROOT / SETUPTOOLS["package-dir"]["qbert.conf"]
    unshipped = [p for p in conf_dir.rglob("*.yaml") if not _shipped(conf_dir, data["qbert.conf"], p)]
    assert not unshipped, f"configs a wheel would not ship: {unshipped}"
    for needed in [ROOT / "qbert/report/paper_numbers.yaml", *sorted((ROOT / "qbert/data/sample").rglob("*.*"))[:3]]:
        assert _shipped(ROOT / "qbert", data["qbert"], needed), f"{needed} is not in qbert's package-data"


# module -> heavy modules it must not pull in (an upward arrow in the import graph)
LAYERING = {
    "qbert.report.cli": ["torch", "lightning", "transformers"],
    "qbert.quant": ["hydra", "omegaconf", "lightning", "qbert.config", "qbert.train"],
    "qbert.hessian.sensitivity": ["qbert.train", "lightning", "hydra"],
    "qbert.methods": ["hydra", "lightning", "qbert.train"],
    "qbert.export.loader": ["lightning", "hydra", "qbert.train"],
}


@pytest.mark.parametrize("module", sorted(LAYERING))
def test_no_upward_imports(module):
    forbidden = LAYERING[module]
    probe = (f"import sys, importlib; importlib.import_module({module!r}); "
             f"print(' '.join(m for m in {forbidden!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    pulled = out.stdout.split()
    assert not pulled, f"importing {module} imports {pulled}"
