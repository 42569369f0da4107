"""``qbert-export --backend auto``: the runtime that was fastest and accurate on a CPU like this one.

``experiments/bench_inference.py`` picks, by a rule fixed before each run (our int8 paths within
0.3 points of the loader's SST-2 dev accuracy, fastest by geometric mean over the grid), and the
answer depended on the CPU:

* a 2-core Xeon with AMX (``amx_int8``): OpenVINO on our QDQ graph with bf16 float ops, 5.55x fp32
  eager; ONNX Runtime 2.11x (``experiments/results/bench_inference_amx_cpu.json``);
* the same Xeon with oneDNN capped to AVX-512 VNNI + bf16 (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``:
  the avx512_vnni CPU without AMX, its kernels checked to be AMX-free): PyTorch's PT2E int8
  in-process was fastest (2.68x); of the runtimes qbert-export writes for, OpenVINO 2.38x against
  ONNX Runtime's 1.53x (``bench_inference_vnni_emulated_cpu_grid.json``); for a model whose attention
  operands were trained at 8 bits (``quant.attention_operands``) OpenVINO was the fastest of every
  path, PT2E and NNCF's PTQ included (3.35x; ``bench_inference_vnni_emulated_trained_attention_grid.json``);
* a 2-core AVX2-only EPYC: no path passed the accuracy rule; of ours ONNX Runtime was fastest
  (1.22x; OpenVINO 0.73x, half of fp32's speed on one thread: ``bench_inference_full_cpu.json``).

So OpenVINO where the CPU has AVX-512 VNNI (with or without AMX), ONNX Runtime elsewhere.
OpenVINO cannot read 2-bit weights, so such a model gets ONNX Runtime on any CPU. The flags are
the ones oneDNN will use: a cap in ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) removes what
it excludes, as it does for the kernels.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable, Mapping

MEASURED_FASTEST_WITH_VNNI = "openvino"
FALLBACK = "onnxruntime"
# oneDNN's ISA names in increasing order, and the flags each first level adds (its dispatcher docs)
ONEDNN_ISA_ORDER = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                    "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
                    "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "ALL")
FIRST_LEVEL = {"avx512_vnni": "AVX512_CORE_VNNI", "avx512_bf16": "AVX512_CORE_BF16",
               "amx_tile": "AVX10_1_512_AMX", "amx_int8": "AVX10_1_512_AMX", "amx_bf16": "AVX10_1_512_AMX"}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN reads the first one set


def isa_cap(environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """(variable, value) of oneDNN's instruction-set cap in the environment, or None."""
    return next(((v, environ[v]) for v in ISA_CAP_VARIABLES if environ.get(v)), None)


def effective_flags(cpu_flags: set[str], environ: Mapping[str, str] = os.environ) -> set[str]:
    """``cpu_flags`` less what a oneDNN ISA cap in the environment excludes (unknown caps: none,
    as oneDNN ignores them)."""
    cap = (isa_cap(environ) or ("", ""))[1].upper()
    if cap not in ONEDNN_ISA_ORDER:
        return set(cpu_flags)
    level = ONEDNN_ISA_ORDER.index(cap)
    return {f for f in cpu_flags if f not in FIRST_LEVEL or ONEDNN_ISA_ORDER.index(FIRST_LEVEL[f]) <= level}


def choose_backend(cpu_flags: set[str], has_int2: bool,
                   is_installed: Callable[[str], bool] = installed) -> tuple[str, str]:
    """(backend, why) for a model on a CPU with ``cpu_flags``; ``has_int2``: 2-bit weights."""
    if "avx512_vnni" not in cpu_flags:
        return FALLBACK, ("this CPU has no AVX-512 VNNI: ONNX Runtime, our fastest int8 runtime on the AVX2 CPU "
                          "measured (1.22x fp32, OpenVINO 0.73x)")
    amx = "amx_int8" in cpu_flags
    measured = ("OpenVINO on our QDQ graph (bf16 float ops) was the fastest accurate int8 runtime measured on "
                + ("one (5.55x fp32, ONNX Runtime 2.11x)" if amx else
                   "one, emulated by capping oneDNN on an AMX CPU (2.38x fp32, ONNX Runtime 1.53x; 3.35x with "
                   "attention operands trained at 8 bits)"))
    has = "AMX" if amx else "AVX-512 VNNI without AMX"
    if has_int2:
        return FALLBACK, f"this CPU has {has}, where {measured}, but the model has 2-bit weights, which OpenVINO cannot read: ONNX Runtime"
    if not is_installed("openvino"):
        return FALLBACK, (f"this CPU has {has}, where {measured}, but openvino is not installed "
                          "(pip install 'qbert[openvino]'): ONNX Runtime")
    return MEASURED_FASTEST_WITH_VNNI, f"this CPU has {has}: {measured}"
