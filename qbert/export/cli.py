"""``qbert-export RUN_DIR [-o FILE] [--onnx [FILE]] [--backend {onnxruntime,openvino,auto}] [--attention-int8 [N]]``: pack a
quantized run's model, check it, report its size; optionally write it for an inference runtime.

Reads ``RUN_DIR/model/`` (written by every quantized run), writes the packed safetensors file
(default ``RUN_DIR/packed.qbert.safetensors``), loads it back with the inference loader,
compares its logits with the fake-quantized model's on a random batch, and prints (and with
``--report`` writes as JSON) the file size per section beside the storage accounting.

``--backend NAME`` (or ``--onnx``, which means ``DEFAULT_BACKEND``) also writes the packed model
for a runtime and checks that runtime's logits against the loader's on one example batch:

* ``onnxruntime``: a standard QDQ ONNX graph (default ``RUN_DIR/model.qbert.onnx``, see
  ``qbert.export.onnx_export``), run in ONNX Runtime (at most ``ONNX_TOLERANCE`` apart);
* ``openvino``: that ONNX graph (``--onnx FILE`` names it), converted to OpenVINO IR beside it
  (default ``RUN_DIR/model.qbert.xml`` + ``.bin``), run in OpenVINO (at most
  ``OPENVINO_TOLERANCE`` apart). OpenVINO cannot read 2-bit weights: such a model is refused
  (exit 2) after the packed file is written.

``--attention-int8 [N]`` also quantizes the attention matmuls' operands in that ONNX graph
(``qbert.export.attention_int8``), calibrated on the run's first N training examples
(``qbert.export.calibration``); the report records the calibration and every operand's range
under ``attention_int8``.

A missing runtime package stops the command before any work (exit 2, naming the extra). The
report records ``backend``, the files written for it (``backend_files``: path -> bytes) and
``backend_max_abs_logit_diff``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qbert.quiet import quiet

quiet()  # before torch and torchao print their import-time notes

import torch  # noqa: E402

# ONNX Runtime's matmuls and LayerNorms sum in another order than torch's; where a sum lands
# within a rounding error of a step boundary, an activation code moves by one step, and the
# layers after it carry that on. Traced on the benchmark's Q8BERT-plan PTQ MiniLM (64 SST-2 dev
# sentences): layer 0's input codes differ in 0-3e-5 of places, layer 5's in 10-19% (many by
# more than a step), max |logit diff| 0.23. Measured max |logit diff| over the 872 dev sentences:
# a 3/2-bit Q-BERT run 0.017; Q8BERT-plan PTQ models 0.26 and 0.72 (0.052 and 0.67 on this
# command's random batch); the Q8BERT QAT MiniLM 0.83 (0.076 on the batch). A coarse guard
# against a broken graph; exactness is tested on tiny models (every code, logits within 1e-3).
ONNX_TOLERANCE = 1.0
# OpenVINO runs the same QDQ graph (Q/DQ pairs as FakeQuantize) with its own kernels and summation
# order, so the same one-step code flips happen, and more often. On this command's batch: tiny test
# models <= 4e-6; the Q8BERT-plan PTQ MiniLM above 0.17 (ONNX Runtime 0.052); the benchmark's
# Q8BERT-plan PTQ MiniLM (experiments/q8bert_ptq_packed.py, logits up to 2.9) 0.59 (ONNX Runtime 0.67);
# that model over the 872 SST-2 dev sentences 0.71 (ONNX Runtime 0.72). A coarse guard against a
# broken conversion; exactness is tested on tiny models (1e-4).
OPENVINO_TOLERANCE = 1.0

# --attention-int8 quantizes what the loader computes in float (post-training), so the runtime
# departs from the loader by that too. The Q8BERT QAT MiniLM (SST-2, seed 2), calibrated on 128
# training sentences, max |logit diff| on the first calibration batch: ONNX Runtime 0.72,
# OpenVINO 0.75 (on the random batch 0.98 / 0.86: random ids fall outside the calibrated
# ranges). Again a guard against a broken graph; its accuracy is measured on the dev set
# (experiments/bench_inference.py --attention-int8).
ATTENTION_INT8_TOLERANCE = 2.0

BACKENDS = ("onnxruntime", "openvino")
CALIBRATION_EXAMPLES = 128  # --attention-int8's default: the benchmark's calibration size
AUTO = "auto"
# experiments/bench_inference.py's rule (our int8 paths within 0.3 points of the loader, fastest
# by geometric mean over the grid) depends on the CPU. On an AVX2-only EPYC it chose none: every
# path was 0.35-0.69 points off (results/bench_inference_full_cpu.json); onnxruntime was our fastest
# there (1.22x; PT2E 1.18x, OpenVINO 0.73x). On a Xeon with AMX it chose openvino with bf16 float
# ops (5.55x; onnxruntime 2.11x: results/bench_inference_amx_cpu.json), and on that Xeon with oneDNN
# capped below AMX openvino again among the exportable runtimes (2.38x; onnxruntime 1.53x). No one
# runtime is best on every CPU, and OpenVINO on our graph ran at 0.53-0.67x fp32 on one AVX2
# thread; onnxruntime stays the default: our fastest on the AVX2 CPU, within 0.3 points on the
# AMX one, installed by qbert[onnx].
# --backend auto (qbert.export.backend_choice) makes that choice by the CPU.
DEFAULT_BACKEND = "onnxruntime"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qbert-export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a quantized run folder (or its model/ folder)")
    parser.add_argument("-o", "--out", help="packed file to write (default RUN_DIR/packed.qbert.safetensors)")
    parser.add_argument("--report", help="also write the size report as JSON here")
    parser.add_argument("--no-verify", action="store_true", help="skip the logits check after writing")
    parser.add_argument("--onnx", nargs="?", const="", metavar="FILE",
                        help="also write a QDQ ONNX graph (default RUN_DIR/model.qbert.onnx) for the "
                             f"default backend ({DEFAULT_BACKEND}), or with --backend openvino the ONNX "
                             "file converted to OpenVINO IR")
    parser.add_argument("--backend", choices=(*BACKENDS, AUTO),
                        help="also write the model for this runtime and check its logits there: onnxruntime "
                             "(the QDQ ONNX graph), openvino (that graph as OpenVINO IR beside it, default "
                             "RUN_DIR/model.qbert.xml), auto (the one measured fastest on a CPU like this: "
                             f"openvino with AVX-512 VNNI, with or without AMX, else onnxruntime); --onnx alone means {DEFAULT_BACKEND}")
    parser.add_argument("--attention-int8", nargs="?", type=int, const=CALIBRATION_EXAMPLES, metavar="N",
                        help="also quantize the attention matmuls' operands (Q, K, V, softmax) to int8 in the "
                             "ONNX graph, ranges calibrated on the run's first N training examples (default "
                             f"{CALIBRATION_EXAMPLES}; read from the data its results.json names); a post-training "
                             "step, measured in experiments/bench_inference.py --attention-int8")
    parser.add_argument("--data-root", help="with --attention-int8: the data folder, when not the one the run recorded")
    args = parser.parse_args(argv)
    backend = args.backend or (DEFAULT_BACKEND if args.onnx is not None else None)
    option = f"--backend {backend}" if args.backend else "--onnx"
    if args.attention_int8 is not None and backend is None:
        parser.exit(2, "qbert-export: error: --attention-int8 changes the ONNX graph: it needs --onnx or --backend\n")
    if args.data_root is not None and args.attention_int8 is None:
        parser.exit(2, "qbert-export: error: --data-root is read only for --attention-int8's calibration\n")
    if args.attention_int8 is not None and args.attention_int8 < 1:
        parser.exit(2, f"qbert-export: error: --attention-int8 {args.attention_int8}: at least 1 example\n")
    choice = None
    if backend == AUTO:  # the CPU decides now; 2-bit weights, known once packed, may still send it to ONNX Runtime
        from qbert.export.backend_choice import choose_backend, effective_flags
        from qbert.precision import cpu_flags

        choice = choose_backend(effective_flags(cpu_flags()), has_int2=False)
        backend = choice[0]
    if backend == "openvino" and args.onnx and Path(args.onnx).suffix in (".xml", ".bin"):
        # the IR is written beside the ONNX file as .xml + .bin: it would overwrite it
        parser.exit(2, f"qbert-export: error: --onnx {args.onnx}: with --backend openvino the ONNX file is "
                       "converted to an .xml and .bin beside it; name it .onnx\n")
    if backend is not None:
        try:
            require_backend(backend)
        except ImportError as error:
            parser.exit(2, f"qbert-export: error: {option}: {error}\n")
    if args.attention_int8 is not None:
        try:  # the calibration runs the graph in ONNX Runtime, whichever backend it is for
            require_backend("onnxruntime")
        except ImportError as error:
            parser.exit(2, f"qbert-export: error: --attention-int8: {error}\n")

    from qbert.export.exporter import export_packed, load_run_model
    from qbert.export.loader import load_packed
    from qbert.export.report import format_report, size_report

    run_dir = Path(args.run_dir)
    folder = run_dir.parent if run_dir.name == "model" else run_dir
    out = Path(args.out) if args.out else folder / "packed.qbert.safetensors"
    try:
        model = load_run_model(run_dir)
        export_packed(model, out)
    except (ValueError, OSError) as error:  # a missing or damaged run folder, an unwritable output: named
        parser.exit(2, f"qbert-export: error: {error}\n")
    rep = size_report(out)
    loaded = load_packed(out)  # read once: the auto choice, the logits check and the writers share it
    if choice is not None:
        backend, why = _settle_auto(loaded, backend, choice)
        if backend is None:
            parser.exit(2, f"qbert-export: error: --backend auto: {why}; {out} is written\n")
        rep["backend_choice"] = {"backend": backend, "why": why}
        print(f"--backend auto: {backend} ({why})")
    if not args.no_verify:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (4, 32), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 20:] = 0
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask).logits
            got = loaded(input_ids=ids, attention_mask=mask).logits
        rep["verify_max_abs_logit_diff"] = float((got - ref).abs().max())
        if not torch.allclose(got, ref, atol=1e-4, rtol=1e-4):
            print(f"qbert-export: the loaded model's logits differ from the fake-quantized model's "
                  f"(max |diff| {rep['verify_max_abs_logit_diff']:.3g})", file=sys.stderr)
            return 1
    calibration = None
    if args.attention_int8 is not None:
        from qbert.export.calibration import run_calibration
        from qbert.quant.attention import quantized_attentions

        if quantized_attentions(loaded):
            parser.exit(2, "qbert-export: error: --attention-int8: the model's attention matmul operands were trained "
                           f"quantized (quant.attention_operands) and are exported at their trained steps; {out} is written\n")

        try:
            calibration, described = run_calibration(folder, args.attention_int8, args.data_root)
        except (ValueError, OSError) as error:  # no results.json, data not where the run left it: named
            parser.exit(2, f"qbert-export: error: --attention-int8: {error}; {out} is written\n")
        rep["attention_int8"] = {"calibration": described}
    if backend is not None:
        onnx_path = Path(args.onnx) if args.onnx else folder / "model.qbert.onnx"
        write = write_onnx if backend == "onnxruntime" else write_openvino
        code = write(out, loaded, onnx_path, rep, verify=not args.no_verify, calibration=calibration)
        if code:
            return code
    print(f"wrote {out}")
    print(format_report(rep))
    if "verify_max_abs_logit_diff" in rep:
        print(f"loader vs fake-quant logits: max |diff| = {rep['verify_max_abs_logit_diff']:.3g}")
    if backend is not None:
        print(f"backend {backend}: wrote {', '.join(rep['backend_files'])}")
    if "backend_max_abs_logit_diff" in rep:
        print(f"{RUNTIME_NAMES[backend]} vs loader logits: max |diff| = {rep['backend_max_abs_logit_diff']:.3g}")
    if args.report:
        Path(args.report).write_text(json.dumps(rep, indent=2) + "\n")
    return 0


RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def _settle_auto(loaded: torch.nn.Module, backend: str, choice: tuple[str, str]) -> tuple[str | None, str]:
    """The auto choice once the packed model's widths are known: OpenVINO cannot read 2-bit weights.
    (None, why) when the runtime it falls back to is not installed."""
    from qbert.export.backend_choice import FALLBACK, choose_backend, effective_flags
    from qbert.export.openvino_runtime import int2_modules
    from qbert.precision import cpu_flags

    if backend == FALLBACK or not int2_modules(loaded):
        return choice
    backend, why = choose_backend(effective_flags(cpu_flags()), has_int2=True)
    try:
        require_backend(backend)
    except ImportError as error:
        return None, f"{why}, and {error}"
    return backend, why


def require_backend(backend: str) -> None:
    """ImportError naming the extra when a package ``backend`` needs is not installed."""
    if backend == "onnxruntime":
        from qbert.export import onnx_runtime

        onnx_runtime.require_onnx()
        return
    from qbert.export import openvino_runtime

    openvino_runtime.require_openvino()
    try:  # the IR is converted from the ONNX graph, written with onnx (not onnxruntime)
        import onnx  # noqa: F401
    except ImportError as err:
        raise ImportError(f"the OpenVINO export writes ONNX first and needs onnx ({err}): "
                          f"{openvino_runtime.EXTRA}") from None


def _export_onnx(loaded: torch.nn.Module, path: Path, rep: dict, calibration: list | None) -> bool:
    """Write the QDQ ONNX graph of a loaded packed model (its attention matmuls in int8, calibrated,
    with ``calibration``); False (the error printed) if it fails."""
    from qbert.export.onnx_export import export_onnx

    try:
        export_onnx(loaded, path, calibration, rep.get("attention_int8"))
    except (ValueError, OSError) as error:
        print(f"qbert-export: error: {error}", file=sys.stderr)
        return False
    rep["onnx_file"], rep["onnx_bytes"] = str(path), path.stat().st_size
    return True


def _check(runtime: str, model, loaded: torch.nn.Module, rep: dict, tolerance: float, calibration: list | None) -> int:
    """Compare ``model``'s logits with the loader's on the example batch (with calibrated attention
    operands: on the first calibration batch, real text, and at ``ATTENTION_INT8_TOLERANCE``);
    1 past the tolerance."""
    from qbert.export.onnx_export import example_batch

    if calibration is None:
        batch = example_batch(loaded, size=4, seq=32)
    else:
        batch, tolerance = calibration[0], ATTENTION_INT8_TOLERANCE
    with torch.no_grad():
        ref = loaded(**batch).logits
    got = model(**batch)["logits"]
    diff = rep["backend_max_abs_logit_diff"] = float((got - ref).abs().max())
    if diff > tolerance:
        print(f"qbert-export: {runtime}'s logits differ from the loader's by {diff:.3g} (tolerance {tolerance})",
              file=sys.stderr)
        return 1
    return 0


def write_onnx(packed: Path, loaded: torch.nn.Module, path: Path, rep: dict, verify: bool,
               calibration: list | None = None) -> int:
    """Export ``loaded`` (the packed file, loaded) as ONNX; with ``verify`` compare ONNX Runtime with it."""
    from qbert.export.onnx_runtime import OnnxModel

    rep["backend"] = "onnxruntime"
    if not _export_onnx(loaded, path, rep, calibration):
        return 2
    rep["backend_files"] = {str(path): path.stat().st_size}
    if not verify:
        return 0
    code = _check("ONNX Runtime", OnnxModel(path), loaded, rep, ONNX_TOLERANCE, calibration)
    rep["onnx_max_abs_logit_diff"] = rep["backend_max_abs_logit_diff"]  # the key before --backend
    return code


def write_openvino(packed: Path, loaded: torch.nn.Module, path: Path, rep: dict, verify: bool,
                   calibration: list | None = None) -> int:
    """Export the packed file as ONNX at ``path`` and convert it to OpenVINO IR beside it (``.xml``,
    ``.bin``); with ``verify`` compare OpenVINO running the IR with the loader. A model with 2-bit
    weights is refused before anything is written (exit 2): OpenVINO cannot read int2."""
    from qbert.export.openvino_runtime import OpenVinoModel, int2_modules, save_ir

    rep["backend"] = "openvino"
    low = int2_modules(loaded)
    if low:
        print(f"qbert-export: error: --backend openvino: OpenVINO cannot read 2-bit weights ({len(low)} layers, "
              f"e.g. {low[0]}); {packed} is written; use --backend onnxruntime for this model", file=sys.stderr)
        return 2
    if not _export_onnx(loaded, path, rep, calibration):
        return 2
    xml = path.with_suffix(".xml")
    try:
        xml, weights = save_ir(path, xml)
    except (RuntimeError, OSError) as error:  # OpenVINO's messages run over lines: the last one says what
        lines = [line for line in str(error).splitlines() if line.strip()]
        print(f"qbert-export: error: --backend openvino: converting {path} to {xml} failed: "
              f"{lines[-1] if lines else type(error).__name__}", file=sys.stderr)
        return 2
    rep["openvino_xml"], rep["openvino_bin"] = str(xml), str(weights)
    rep["backend_files"] = {str(f): f.stat().st_size for f in (path, xml, weights)}
    if not verify:
        return 0
    return _check("OpenVINO", OpenVinoModel(xml), loaded, rep, OPENVINO_TOLERANCE, calibration)


if __name__ == "__main__":
    raise SystemExit(main())
