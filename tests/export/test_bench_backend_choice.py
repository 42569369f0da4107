"""The rule that picks ``qbert-export``'s default runtime from a benchmark run
(``experiments/bench_inference.py``: ``choose_backend``)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def choose(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    from bench_inference import choose_backend

    return choose_backend


def run(speedups: list[dict[str, float]], accuracy: dict[str, float] | None) -> dict:
    points = [{"speedup_vs_fp32_eager": {"fp32_eager": 1.0, **s}} for s in speedups]
    out = {"points": points}
    if accuracy is not None:
        out["accuracy"] = {"dev_sentences": 872, "threads": 2, **{k: {"accuracy": v} for k, v in accuracy.items()}}
    return out


def test_the_fastest_accurate_path_of_our_model_wins_by_geometric_mean(choose):
    # pt2e is fastest at one point, onnxruntime over the run: 1.8*1.4 > 0.9*1.5
    minilm = run([{"int8_pt2e": 0.9, "ort_qdq": 1.8, "ov_qdq": 0.6}, {"int8_pt2e": 1.5, "ort_qdq": 1.4, "ov_qdq": 0.6}],
                 {"loader": 86.9, "int8_pt2e": 86.9, "ort_qdq": 87.0, "ov_qdq": 86.9})
    choice = choose(minilm)
    assert choice["chosen"] == "onnxruntime" and choice["chosen_path"] == "ort_qdq"
    assert choice["speedup_over_points"]["ort_qdq"] == {"geomean": round((1.8 * 1.4) ** 0.5, 3), "min": 1.4, "max": 1.8}


def test_an_inaccurate_or_peer_path_is_never_chosen(choose):
    # the peer ov_fp32 and ort_static are faster; ort_qdq is fastest of ours but 0.4 points off
    minilm = run([{"ov_fp32": 3.0, "ort_static": 2.5, "ort_qdq": 2.0, "int8_pt2e": 1.2, "ov_qdq": 0.5}],
                 {"loader": 86.9, "ov_fp32": 86.6, "ort_static": 86.9, "ort_qdq": 87.3, "int8_pt2e": 86.7, "ov_qdq": 86.9})
    choice = choose(minilm)
    assert choice["chosen"] == "pt2e"
    assert set(choice["eligible"]) == {"int8_pt2e", "ov_qdq"}


def test_no_choice_without_accuracy_or_without_an_accurate_path(choose):
    speed = [{"ort_qdq": 2.0}]
    assert choose(run(speed, None))["chosen"] is None
    off = choose(run(speed, {"loader": 86.9, "ort_qdq": 80.0}))
    assert off["chosen"] is None and "0.3" in off["why_none"]


def test_a_path_missing_at_some_point_is_not_compared(choose):
    # ov_qdq failed at the second point: no geometric mean over a part of the run
    minilm = run([{"ort_qdq": 1.1, "ov_qdq": 5.0}, {"ort_qdq": 1.2}], {"loader": 86.9, "ort_qdq": 86.9, "ov_qdq": 86.9})
    choice = choose(minilm)
    assert "ov_qdq" not in choice["speedup_over_points"] and choice["chosen"] == "onnxruntime"


def test_a_bf16_variant_of_our_graph_is_chosen_as_its_runtime(choose):
    # on a CPU with bf16 units the int8 graph with bf16 float ops is one of ours; bf16 float is not
    minilm = run([{"bf16_compiled": 4.0, "int8_pt2e": 2.0, "int8_pt2e_bf16": 3.0, "ov_qdq_bf16": 2.5}],
                 {"loader": 86.9, "bf16_compiled": 86.9, "int8_pt2e": 86.9, "int8_pt2e_bf16": 86.8, "ov_qdq_bf16": 86.9})
    choice = choose(minilm)
    assert choice["chosen"] == "pt2e" and choice["chosen_path"] == "int8_pt2e_bf16"
    assert "bf16_compiled" not in choice["eligible"]
