"""``qbert-export --backend auto``: the runtime that was fastest and accurate on a CPU like this one.

``experiments/bench_inference.py`` picks, by a rule fixed before each run (our int8 paths within
0.3 points of the loader's SST-2 dev accuracy, fastest by geometric mean over the grid), and the
answer depended on the CPU:

* a 2-core Xeon with AMX (``amx_int8``): OpenVINO on our QDQ graph with bf16 float ops, 5.55x fp32
  eager; ONNX Runtime 2.11x (``experiments/results/bench_inference_amx_cpu.json``);
* a 2-core AVX2-only EPYC: no path passed the accuracy rule; of ours ONNX Runtime was fastest
  (1.22x; OpenVINO 0.73x, half of fp32's speed on one thread: ``bench_inference_full_cpu.json``).

A CPU with VNNI or avx512_bf16 but no AMX was not measured: it gets ONNX Runtime, the choice that
was never slower than fp32 on either machine. OpenVINO cannot read 2-bit weights, so such a
model gets ONNX Runtime on any CPU.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

MEASURED_FASTEST_WITH_AMX = "openvino"
FALLBACK = "onnxruntime"


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def choose_backend(cpu_flags: set[str], has_int2: bool,
                   is_installed: Callable[[str], bool] = installed) -> tuple[str, str]:
    """(backend, why) for a model on a CPU with ``cpu_flags``; ``has_int2``: 2-bit weights."""
    if "amx_int8" not in cpu_flags:
        return FALLBACK, ("this CPU has no AMX (amx_int8): ONNX Runtime, our fastest int8 runtime on the AVX2 CPU "
                          "measured (1.22x fp32, OpenVINO 0.73x; CPUs with VNNI but no AMX are not measured)")
    if has_int2:
        return FALLBACK, ("this CPU has AMX, where OpenVINO was fastest, but the model has 2-bit weights, "
                          "which OpenVINO cannot read: ONNX Runtime")
    if not is_installed("openvino"):
        return FALLBACK, ("this CPU has AMX, where OpenVINO was fastest (5.55x fp32, ONNX Runtime 2.11x), but "
                          "openvino is not installed (pip install 'qbert[openvino]'): ONNX Runtime")
    return MEASURED_FASTEST_WITH_AMX, ("this CPU has AMX: OpenVINO on our QDQ graph (bf16 float ops) was the "
                                       "fastest accurate int8 path measured on one (5.55x fp32, ONNX Runtime 2.11x)")
