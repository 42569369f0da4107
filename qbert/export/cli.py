"""``qbert-export RUN_DIR [-o FILE] [--onnx [FILE]]``: pack a quantized run's model, check it, report its size.

Reads ``RUN_DIR/model/`` (written by every quantized run), writes the packed safetensors file
(default ``RUN_DIR/packed.qbert.safetensors``), loads it back with the inference loader,
compares its logits with the fake-quantized model's on a random batch, and prints (and with
``--report`` writes as JSON) the file size per section beside the storage accounting.
With ``--onnx`` it also writes the packed model as a standard QDQ ONNX graph (default
``RUN_DIR/model.qbert.onnx``, see ``qbert.export.onnx_export``) and compares ONNX Runtime's
logits with the loader's on the same batch (at most ``ONNX_TOLERANCE`` apart).
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
# layers after it carry that on. Measured over the 872 SST-2 dev sentences (MiniLM): a 3/2-bit
# Q-BERT run, max 0.017 (mean 0.0004); a Q8BERT-plan PTQ model, max 0.26 (mean 0.022), 0.052
# on this command's random batch. A wrong step or code moves logits by whole units.
ONNX_TOLERANCE = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qbert-export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a quantized run folder (or its model/ folder)")
    parser.add_argument("-o", "--out", help="packed file to write (default RUN_DIR/packed.qbert.safetensors)")
    parser.add_argument("--report", help="also write the size report as JSON here")
    parser.add_argument("--no-verify", action="store_true", help="skip the logits check after writing")
    parser.add_argument("--onnx", nargs="?", const="", metavar="FILE",
                        help="also write a QDQ ONNX graph (default RUN_DIR/model.qbert.onnx)")
    args = parser.parse_args(argv)
    if args.onnx is not None:
        from qbert.export.onnx_runtime import require_onnx
        try:
            require_onnx()
        except ImportError as error:
            parser.exit(2, f"qbert-export: error: {error}\n")

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
    if not args.no_verify:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (4, 32), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 20:] = 0
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask).logits
            got = load_packed(out)(input_ids=ids, attention_mask=mask).logits
        rep["verify_max_abs_logit_diff"] = float((got - ref).abs().max())
        if not torch.allclose(got, ref, atol=1e-4, rtol=1e-4):
            print(f"qbert-export: the loaded model's logits differ from the fake-quantized model's "
                  f"(max |diff| {rep['verify_max_abs_logit_diff']:.3g})", file=sys.stderr)
            return 1
    if args.onnx is not None:
        onnx_path = Path(args.onnx) if args.onnx else folder / "model.qbert.onnx"
        code = write_onnx(out, onnx_path, rep, verify=not args.no_verify)
        if code:
            return code
    print(f"wrote {out}")
    print(format_report(rep))
    if "verify_max_abs_logit_diff" in rep:
        print(f"loader vs fake-quant logits: max |diff| = {rep['verify_max_abs_logit_diff']:.3g}")
    if "onnx_max_abs_logit_diff" in rep:
        print(f"wrote {rep['onnx_file']}; ONNX Runtime vs loader logits: max |diff| = {rep['onnx_max_abs_logit_diff']:.3g}")
    if args.report:
        Path(args.report).write_text(json.dumps(rep, indent=2) + "\n")
    return 0


def write_onnx(packed: Path, path: Path, rep: dict, verify: bool) -> int:
    """Export the packed file as ONNX; with ``verify`` compare ONNX Runtime with the loader."""
    from qbert.export.loader import load_packed
    from qbert.export.onnx_export import example_batch, export_onnx
    from qbert.export.onnx_runtime import OnnxModel

    loaded = load_packed(packed)
    try:
        export_onnx(loaded, path)
    except (ValueError, OSError) as error:
        print(f"qbert-export: error: {error}", file=sys.stderr)
        return 2
    rep["onnx_file"], rep["onnx_bytes"] = str(path), path.stat().st_size
    if verify:
        batch = example_batch(loaded, size=4, seq=32)
        with torch.no_grad():
            ref = loaded(**batch).logits
        got = OnnxModel(path)(**batch)["logits"]
        rep["onnx_max_abs_logit_diff"] = float((got - ref).abs().max())
        if rep["onnx_max_abs_logit_diff"] > ONNX_TOLERANCE:
            print(f"qbert-export: ONNX Runtime's logits differ from the loader's by {rep['onnx_max_abs_logit_diff']:.3g} "
                  f"(tolerance {ONNX_TOLERANCE})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
