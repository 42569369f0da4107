"""Inference latency/throughput of packed quantized models on CPU, written as JSON.

For each model (``minilm``: the real Q8BERT-QAT MiniLM from a packed file; ``bert_base``:
bert-base dimensions, random weights, Q8BERT plan, calibrated on random ids) and each
batch x sequence point, in the same process and interleaved round by round:

* ``fp32_eager``: the float model (weights = dequantized ``Q(W)``), PyTorch eager;
* ``fp32_compiled``: the same, ``torch.compile`` (Inductor, freezing);
* ``int8_pt2e``: W8A8 via torchao PT2E ``X86InductorQuantizer`` (static, QAT ranges) + Inductor;
* ``int8_dynamic_torchao`` (``--alternatives``): torchao ``Int8DynamicActivationInt8WeightConfig``
  + ``torch.compile``, the runner-up backend, for the record;
* ``packed_eager``: the loader's inference model (integer codes dequantized at every forward,
  fake-quantized inputs), to show what the packed model costs without an integer backend;
* ``ort_qdq`` (``--onnx``): our QDQ ONNX export (``qbert-export --onnx``: the QAT ranges, the
  packed codes) in ONNX Runtime, as many intra-op threads as torch has;
* ``ort_static`` (``--onnx``): the peer: the fp32 graph quantized by ONNX Runtime's own
  ``quantize_static`` (QDQ, int8 per-channel weights, int8 activations calibrated on the
  benchmark batch itself: an upper bound on its speed, not a statement on its accuracy).

Ratios are ``fp32_eager`` latency / path latency from the same run. Pin to one core::

    OMP_NUM_THREADS=1 taskset -c 1 python experiments/bench_inference.py \
        --packed outputs/q8bert_sst2/packed.qbert.safetensors --alternatives \
        --out experiments/results/bench_inference_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from qbert.export import export_packed, load_packed
from qbert.export.int8_cpu import compile_int8, float_copy, quantize_int8


def example(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1000, vocab, (batch, seq), generator=g),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long),
            "token_type_ids": torch.zeros(batch, seq, dtype=torch.long)}


def bert_base_packed(folder: Path) -> Path:
    """A bert-base-sized Q8BERT model (random weights, ranges from random ids) as a packed file."""
    from transformers import BertConfig, BertForSequenceClassification

    from qbert.quant import calibration, q8bert_plan, quantize_

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()
    quantize_(model, q8bert_plan())
    with calibration(model), torch.no_grad():
        model(**example(8, 128, 30522))
    return export_packed(model, folder / "bert_base_q8bert.qbert.safetensors")


def timed(fn, inputs, warmup: int, iters: int, budget_s: float) -> list[float]:
    with torch.no_grad():
        for _ in range(warmup):
            fn(**inputs)
        times = []
        started = time.perf_counter()
        while len(times) < iters and (len(times) < 2 or time.perf_counter() - started < budget_s):
            t = time.perf_counter()
            fn(**inputs)
            times.append(time.perf_counter() - t)
    return times


def torchao_dynamic(model):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_ as ao_quantize_

    fmodel = float_copy(model)[0]
    ao_quantize_(fmodel, Int8DynamicActivationInt8WeightConfig(),
                 filter_fn=lambda m, n: isinstance(m, torch.nn.Linear) and ".encoder." in f".{n}.")
    return torch.compile(fmodel)


def ort_qdq(loaded, folder: Path):
    from qbert.export.onnx_export import export_onnx
    from qbert.export.onnx_runtime import OnnxModel

    path = folder / "qdq.onnx"
    if not path.exists():
        export_onnx(loaded, path)
    return OnnxModel(path, threads=torch.get_num_threads())


def ort_static(fp32, inputs: dict[str, torch.Tensor], folder: Path):
    """ONNX Runtime's own static int8 quantization of the fp32 graph (calibrated on ``inputs``)."""
    import warnings

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from qbert.export.onnx_runtime import OnnxModel

    float_path, quant_path = folder / "fp32.onnx", folder / f"ort_static_{len(inputs['input_ids'])}.onnx"
    if not float_path.exists():
        names = list(inputs)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(fp32, (), str(float_path), kwargs=inputs, input_names=names, output_names=["logits"],
                              dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names}, opset_version=17, dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{k: v.numpy() for k, v in inputs.items()}])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(float_path), str(quant_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True})
    return OnnxModel(quant_path, threads=torch.get_num_threads())


def bench_model(name: str, packed: Path, grid: list[tuple[int, int]], args) -> dict:
    loaded = load_packed(packed)
    fp32 = float_copy(loaded)[0]
    vocab = loaded.config.vocab_size
    out = {"packed_file": str(packed), "points": []}
    onnx_dir = Path(tempfile.mkdtemp(prefix=f"bench_onnx_{name}_"))
    for batch, seq in grid:
        inputs = example(batch, seq, vocab)
        paths, setup = {"fp32_eager": fp32}, {}
        t = time.perf_counter()
        paths["fp32_compiled"] = torch.compile(fp32)
        with torch.no_grad():
            paths["fp32_compiled"](**inputs)
        setup["fp32_compiled"] = time.perf_counter() - t
        t = time.perf_counter()
        converted, info = quantize_int8(loaded, inputs, [inputs])
        paths["int8_pt2e"] = compile_int8(converted)
        with torch.no_grad():
            paths["int8_pt2e"](**inputs)
        setup["int8_pt2e"] = time.perf_counter() - t
        if args.alternatives and (batch, seq) == (32, 128):
            t = time.perf_counter()
            paths["int8_dynamic_torchao"] = torchao_dynamic(loaded)
            with torch.no_grad():
                paths["int8_dynamic_torchao"](**inputs)
            setup["int8_dynamic_torchao"] = time.perf_counter() - t
        if args.packed_eager and (batch, seq) == (32, 128):
            paths["packed_eager"] = loaded
        if args.onnx:
            for key, make in (("ort_qdq", lambda: ort_qdq(loaded, onnx_dir)), ("ort_static", lambda: ort_static(fp32, inputs, onnx_dir))):
                t = time.perf_counter()
                paths[key] = make()
                setup[key] = time.perf_counter() - t
        times: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.rounds):  # interleaved, so drift hits every path alike
            for k, fn in paths.items():
                times[k] += timed(fn, inputs, args.warmup, args.iters, args.budget)
        lat = {k: statistics.median(v) for k, v in times.items()}
        point = {"batch": batch, "seq": seq, "int8_info": info, "setup_seconds": setup,
                 "latency_ms": {k: round(1e3 * v, 3) for k, v in lat.items()},
                 "throughput_seq_per_s": {k: round(batch / v, 2) for k, v in lat.items()},
                 "speedup_vs_fp32_eager": {k: round(lat["fp32_eager"] / v, 3) for k, v in lat.items()},
                 "iterations": {k: len(v) for k, v in times.items()}}
        print(f"{name} {batch}x{seq}: " + ", ".join(f"{k} {point['latency_ms'][k]:.1f} ms ({point['speedup_vs_fp32_eager'][k]:.2f}x)" for k in lat), flush=True)
        out["points"].append(point)
        torch._dynamo.reset()
    return out


def cuda_timed(fn, inputs, warmup: int, iters: int) -> list[float]:
    with torch.no_grad():
        for _ in range(warmup):
            fn(**inputs)
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(**inputs)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    return times


def lowbit_packed(folder: Path, bits: list[int], name: str) -> Path:
    """A bert-base-sized Q-BERT model (random weights, 128 row groups) with per-layer ``bits``."""
    from transformers import BertConfig, BertForSequenceClassification

    from qbert.quant import calibration, layerwise_plan, quantize_

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()
    quantize_(model, layerwise_plan(bits, 8, 8, groups=128))
    with calibration(model), torch.no_grad():
        model(**example(8, 128, 30522))
    return export_packed(model, folder / f"bert_base_{name}.qbert.safetensors")


def weight_bytes(model) -> int:
    """Bytes of the Linear weights as the model holds them (codes, packed tiles or floats)."""
    from qbert.export.kernels import Int4WeightLinear, Int8Linear

    total = 0
    for m in model.modules():
        if isinstance(m, Int4WeightLinear):
            total += m.packed.numel() * m.packed.element_size() + m.scales_and_zeros.numel() * m.scales_and_zeros.element_size()
        elif isinstance(m, (Int8Linear, torch.nn.Linear)):
            total += m.weight.numel() * m.weight.element_size()
    return total


def bench_cuda(name: str, packed: Path, grid: list[tuple[int, int]], args, mode: str) -> dict:
    """bf16 eager / compiled vs the integer modules of ``qbert.export.kernels`` on CUDA."""
    from qbert.export.kernels import convert_, to_device_

    dev, dt = torch.device("cuda"), torch.bfloat16
    loaded = load_packed(packed)
    base = float_copy(loaded)[0].to(dev, dt)
    intm = load_packed(packed)
    swapped = convert_(intm, mode, dev)
    to_device_(intm, dev, dt)
    label = "int8_intmm_w8a8" if mode == "int8" else "int4_tinygemm_weight_only"
    out = {"packed_file": str(packed), "mode": mode, "swapped_linears": len(swapped),
           "weight_bytes": {"bf16": weight_bytes(base), label: weight_bytes(intm)}, "points": []}
    compiled_base, compiled_int = torch.compile(base), torch.compile(intm)
    for batch, seq in grid:
        inputs = {k: v.to(dev) for k, v in example(batch, seq, loaded.config.vocab_size).items()}
        paths = {"bf16_eager": base, "bf16_compiled": compiled_base, f"{label}_eager": intm, label: compiled_int}
        times: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.rounds):
            for k, fn in paths.items():
                times[k] += cuda_timed(fn, inputs, args.warmup, args.iters)
        lat = {k: statistics.median(v) for k, v in times.items()}
        point = {"batch": batch, "seq": seq, "latency_ms": {k: round(1e3 * v, 4) for k, v in lat.items()},
                 "throughput_seq_per_s": {k: round(batch / v, 1) for k, v in lat.items()},
                 "speedup_vs_bf16_eager": {k: round(lat["bf16_eager"] / v, 3) for k, v in lat.items()},
                 "speedup_vs_bf16_compiled": {k: round(lat["bf16_compiled"] / v, 3) for k, v in lat.items()}}
        print(f"{name}/{mode} {batch}x{seq}: " + ", ".join(f"{k} {point['latency_ms'][k]:.2f} ms ({point['speedup_vs_bf16_compiled'][k]:.2f}x cmp)" for k in lat), flush=True)
        out["points"].append(point)
    return out


def bench_lowbit_cpu(name: str, packed: Path, grid: list[tuple[int, int]], args) -> dict:
    """CPU weight-only path of a <=4-bit model: fp32 eager vs the tinygemm int4 CPU kernel."""
    from qbert.export.kernels import convert_, to_device_

    loaded = load_packed(packed)
    fp32 = float_copy(loaded)[0]
    intm = load_packed(packed)
    swapped = convert_(intm, "int4")
    to_device_(intm, "cpu", torch.float32)
    out = {"packed_file": str(packed), "swapped_linears": len(swapped),
           "weight_bytes": {"fp32": weight_bytes(fp32), "int4_tinygemm_cpu": weight_bytes(intm)}, "points": []}
    for batch, seq in grid:
        inputs = example(batch, seq, loaded.config.vocab_size)
        paths = {"fp32_eager": fp32, "int4_tinygemm_cpu": intm}
        times: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.rounds):
            for k, fn in paths.items():
                times[k] += timed(fn, inputs, args.warmup, args.iters, args.budget)
        lat = {k: statistics.median(v) for k, v in times.items()}
        point = {"batch": batch, "seq": seq, "latency_ms": {k: round(1e3 * v, 3) for k, v in lat.items()},
                 "speedup_vs_fp32_eager": {k: round(lat["fp32_eager"] / v, 3) for k, v in lat.items()}}
        print(f"{name} low-bit {batch}x{seq}: " + ", ".join(f"{k} {point['latency_ms'][k]:.1f} ms ({point['speedup_vs_fp32_eager'][k]:.2f}x)" for k in lat), flush=True)
        out["points"].append(point)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packed", type=Path, required=True, help="packed Q8BERT MiniLM (qbert-export)")
    parser.add_argument("--models", default="minilm,bert_base")
    parser.add_argument("--grid", default="1x128,8x128,32x128,32x384")
    parser.add_argument("--bert-base-grid", help="grid for bert_base (default: --grid)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=float, default=8.0, help="seconds per path per round, at least 2 iterations")
    parser.add_argument("--alternatives", action="store_true", help="also torchao int8 dynamic at 32x128")
    parser.add_argument("--packed-eager", action="store_true", help="also the loader model at 32x128")
    parser.add_argument("--onnx", action="store_true", help="also ONNX Runtime: our QDQ export and quantize_static")
    parser.add_argument("--packed-lowbit", type=Path, help="a <=4-bit packed MiniLM: weight-only path")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # every compiled path: weights constant-folded and prepacked
    grid = [tuple(int(v) for v in p.split("x")) for p in args.grid.split(",")]
    result = {"command": "python experiments/bench_inference.py " + " ".join(__import__("sys").argv[1:]),
              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "processor": platform.processor(), "cpu_flags": _cpu_flags(), "models": {}}
    try:
        import torchao
        result["torchao"] = torchao.__version__
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for name in args.models.split(","):
            if args.device == "cuda":
                jobs.append((f"{name}_w8a8", lambda n=name: bench_cuda(n, args.packed if n == "minilm" else bert_base_packed(Path(tmp)), grid, args, "int8")))
                if name == "minilm" and args.packed_lowbit:
                    jobs.append(("minilm_lowbit", lambda: bench_cuda("minilm", args.packed_lowbit, grid, args, "int4")))
                if name == "bert_base":
                    for tag, bits in (("w4", [4] * 12), ("mp23", [3] * 6 + [2] * 6)):
                        jobs.append((f"bert_base_{tag}", lambda t=tag, b=bits: bench_cuda("bert_base", lowbit_packed(Path(tmp), b, t), grid, args, "int4")))
            else:
                g = grid if name == "minilm" or not args.bert_base_grid else [tuple(int(v) for v in p.split("x")) for p in args.bert_base_grid.split(",")]
                jobs.append((name, lambda n=name, g=g: bench_model(n, args.packed if n == "minilm" else bert_base_packed(Path(tmp)), g, args)))
                if name == "minilm" and args.packed_lowbit:
                    jobs.append(("minilm_lowbit", lambda: bench_lowbit_cpu("minilm", args.packed_lowbit, grid[:3], args)))
        for key, job in jobs:
            result["models"][key] = job()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")


def _cpu_flags() -> list[str]:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx512_vnni", "amx", "avx512f", "avx512_bf16")))


if __name__ == "__main__":
    main()
