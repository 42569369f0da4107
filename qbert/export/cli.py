"""``qbert-export RUN_DIR [-o FILE]``: pack a quantized run's model, check it, report its size.

Reads ``RUN_DIR/model/`` (written by every quantized run), writes the packed safetensors file
(default ``RUN_DIR/packed.qbert.safetensors``), loads it back with the inference loader,
compares its logits with the fake-quantized model's on a random batch, and prints (and with
``--report`` writes as JSON) the file size per section beside the storage accounting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qbert.quiet import quiet

quiet()  # before torch and torchao print their import-time notes

import torch  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qbert-export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a quantized run folder (or its model/ folder)")
    parser.add_argument("-o", "--out", help="packed file to write (default RUN_DIR/packed.qbert.safetensors)")
    parser.add_argument("--report", help="also write the size report as JSON here")
    parser.add_argument("--no-verify", action="store_true", help="skip the logits check after writing")
    args = parser.parse_args(argv)

    from qbert.export.exporter import export_packed, load_run_model
    from qbert.export.loader import load_packed
    from qbert.export.report import format_report, size_report

    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else (run_dir.parent if run_dir.name == "model" else run_dir) / "packed.qbert.safetensors"
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
    print(f"wrote {out}")
    print(format_report(rep))
    if "verify_max_abs_logit_diff" in rep:
        print(f"loader vs fake-quant logits: max |diff| = {rep['verify_max_abs_logit_diff']:.3g}")
    if args.report:
        Path(args.report).write_text(json.dumps(rep, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
