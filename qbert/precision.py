"""Which float precision training uses on this machine's CPU.

bf16 autocast halves the cost of a training step on a CPU with native bf16 arithmetic
(avx512_bf16 or AMX), and makes it many times slower on one without (PyTorch then emulates bf16
matmuls: 0.7 GFLOP/s against 64 in fp32 on an AVX2-only EPYC). ``cpu_precision()`` picks the
Lightning precision accordingly; ``conf/trainer/cpu.yaml`` reaches it through the
``${qbert_cpu_precision:}`` resolver, so the resolved config (and its hash) names the precision
that was really used.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def native_bf16_features() -> tuple[str, ...]:
    """The CPU features that give native bf16 arithmetic (empty: none)."""
    import torch

    found = []
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
    for feature, probe in probes.items():
        check = getattr(torch.cpu, probe, None)
        if check is not None:
            if check():
                found.append(feature)
        elif feature in cpu_flags():  # older torch: ask the kernel
            found.append(feature)
    return tuple(found)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel lists them (empty where /proc/cpuinfo is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_precision() -> str:
    """``bf16-mixed`` where the CPU computes bf16 natively, else ``32-true``."""
    return "bf16-mixed" if native_bf16_features() else "32-true"


def describe(precision: str, accelerator: str) -> str:
    """One line for the log: the precision and why."""
    if accelerator != "cpu":
        return f"precision {precision} ({accelerator})"
    features = native_bf16_features()
    reason = (f"this CPU has native bf16 ({', '.join(features)})" if features
              else "this CPU has no native bf16 (no avx512_bf16 or AMX): bf16 would be emulated")
    return f"precision {precision}: {reason}"
