"""The papers' published numbers, kept as data (``qbert/report/paper_numbers.yaml``), for
side-by-side comparison. Looked up by paper family, task, method name and w-bits column."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.yaml"  # package data


@dataclass(frozen=True)
class PaperCell:
    value: float
    baseline: Optional[float]
    size_mb: Optional[float]
    source: str

    @property
    def delta(self) -> Optional[float]:
        return None if self.baseline is None else self.value - self.baseline


class PaperNumbers:
    def __init__(self, data: dict, path: Path | None = None):
        self.data = data
        self.path = path

    @classmethod
    def load(cls, path: Path | None = None) -> "PaperNumbers":
        path = Path(path or PAPER_NUMBERS)
        if not path.is_file():
            raise FileNotFoundError(f"paper numbers not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (UnicodeDecodeError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: not a readable YAML file ({' '.join(str(err).split())})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of paper -> its tables, found a {type(data).__name__}")
        for name, paper in data.items():
            if not isinstance(paper, dict) or not isinstance(paper.get("tasks") or {}, dict):
                raise ValueError(f"{path}: {name}: expected a mapping with a 'tasks' mapping")
            counts = paper.get("groups") or {}
            if not isinstance(counts, dict) or not all(isinstance(c, int) for c in counts.values()):
                raise ValueError(f"{path}: {name}.groups: expected a mapping of method -> group count, found {counts!r}")
            for task, table in (paper.get("tasks") or {}).items():
                if not isinstance(table, dict) or not isinstance(table.get("rows") or [], list):
                    raise ValueError(f"{path}: {name}.tasks.{task}: expected a mapping with a 'rows' list")
                for i, row in enumerate(table.get("rows") or []):
                    if not isinstance(row, dict):
                        raise ValueError(f"{path}: {name}.tasks.{task}.rows[{i}]: expected a mapping, found {row!r}")
                    missing = {"method", "w_bits", "value"} - set(row)
                    if missing:
                        raise ValueError(f"{path}: {name}.tasks.{task}.rows[{i}] lacks {sorted(missing)}")
        return cls(data, path)

    def cell(self, family: str, task: str, method: str, w_bits: str,
             groups: Optional[int] = None) -> Optional[PaperCell]:
        """The paper's number for our row. A paper that names the group count of a method
        (``groups: {method: count}``) matches only our rows with that count: a 12-group row of the
        group-count study is not the paper's 128-group Q-BERT row."""
        paper = self.data.get(family) or {}
        table = (paper.get("tasks") or {}).get(task)
        if not table:
            return None
        paper_groups = (paper.get("groups") or {}).get(method)
        if paper_groups is not None and groups is not None and int(groups) != int(paper_groups):
            return None
        rows = table.get("rows") or []
        baseline = next((r["value"] for r in rows if r["method"] == "Baseline"), None)
        for row in rows:
            if row["method"] == method and str(row["w_bits"]) == str(w_bits):
                return PaperCell(float(row["value"]), baseline, row.get("size_mb"), paper.get("source", family))
        return None

    def note(self, family: str, task: str) -> Optional[str]:
        paper = self.data.get(family) or {}
        tasks = paper.get("tasks") or {}
        return (tasks[task].get("note") if task in tasks else None) or (None if task in tasks else paper.get("note"))
