"""Running ONNX graphs in OpenVINO (CPU) with the batches the torch models take, and NNCF's own
post-training int8 quantization of a float graph, the peer of our QDQ export.

OpenVINO reads the QDQ graph of ``onnx_export`` as it is: its Q/DQ pairs become FakeQuantize
nodes and its low-precision transformations run the Linears in int8 (``int8_layers`` counts
them in the compiled model). 8- and 4-bit weights load; int2/uint2 (opset 25, 2-bit weights)
are refused by OpenVINO's ONNX reader ("Unsupported type"): ``int2_modules`` names them before
any conversion. ``save_ir`` converts a QDQ ONNX file to OpenVINO IR (``qbert-export --backend
openvino``). Both packages are optional (``pip install 'qbert[openvino]'``) and imported only when
used.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

from qbert.export.modules import PackedLinear
from qbert.export.onnx_runtime import graph_feeds

EXTRA = "pip install 'qbert[openvino]'"


def require_openvino(nncf: bool = False) -> None:
    """ImportError naming the extra when openvino (and, with ``nncf``, nncf) is not installed."""
    try:
        import openvino  # noqa: F401
        if nncf:
            import nncf as _nncf  # noqa: F401
    except ImportError as err:
        raise ImportError(f"the OpenVINO paths need {'openvino and nncf' if nncf else 'openvino'} ({err}): {EXTRA}") from None


def int2_modules(model: torch.nn.Module) -> list[str]:
    """The packed Linears of ``model`` whose weights the ONNX graph holds as int2/uint2 (2 bits or
    fewer), which OpenVINO's ONNX reader refuses. Embeddings are not among them: the graph gathers
    their codes as int8/uint8 whatever the width."""
    return [name for name, m in model.named_modules() if isinstance(m, PackedLinear) and m.w_bits <= 2]


def read_model(path: str | Path):
    """An ONNX (or OpenVINO IR) file as an ``openvino.Model``."""
    require_openvino()
    import openvino as ov

    return ov.Core().read_model(str(path))


def save_ir(onnx_path: str | Path, xml_path: str | Path) -> tuple[Path, Path]:
    """Convert an ONNX file to OpenVINO IR: ``xml_path`` and the ``.bin`` of weights beside it.

    Float weights stay fp32 (``compress_to_fp16=False``): ``save_model`` halves them by default,
    which the packed loader, whose logits the IR is checked against, does not do (on our QDQ
    graphs it measured no change, .bin byte sizes equal: explicit rather than left to its heuristics)."""
    require_openvino()
    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(read_model(onnx_path), str(xml_path), compress_to_fp16=False)
    return xml_path, xml_path.with_suffix(".bin")


FLOAT_PRECISIONS = ("f32", "bf16")


def cpu_config(threads: int | None, precision: str = "f32") -> dict[str, Any]:
    """Latency mode (one stream), ``threads`` intra-op threads, and ``precision`` for every op that
    is not quantized. Always explicit: on CPUs with bf16 units OpenVINO would otherwise pick bf16
    by itself, so an "fp32" comparison would silently not be one; ``bf16`` is asked for by name
    (the benchmark's ``*_bf16`` paths, beside PyTorch's bf16 autocast)."""
    if precision not in FLOAT_PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {', '.join(FLOAT_PRECISIONS)}")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class OpenVinoModel:
    """An OpenVINO CPU compiled model called like a transformers model: ``model(**batch)["logits"]``.

    ``model``: a file path or an ``openvino.Model`` (not modified: reshaped on a copy). ``shape``
    ``(batch, seq)`` compiles for that static shape (as ``torch.compile`` specializes); without
    it the graph keeps its dynamic axes.
    """

    def __init__(self, model: Any, threads: int | None = None, shape: tuple[int, int] | None = None,
                 precision: str = "f32") -> None:
        require_openvino()
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(model)) if isinstance(model, (str, Path)) else model.clone()
        if shape is not None:
            model.reshape({i.get_any_name(): ov.PartialShape(list(shape)) for i in model.inputs})
        self.config = cpu_config(threads, precision)
        self.compiled = core.compile_model(model, "CPU", self.config)
        if threads and int(self.compiled.get_property("INFERENCE_NUM_THREADS")) != int(threads):
            raise RuntimeError(f"INFERENCE_NUM_THREADS: asked {threads}, OpenVINO compiled with "
                               f"{self.compiled.get_property('INFERENCE_NUM_THREADS')}")
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        # FLOAT_PRECISIONS are ov.Type names; e.g. bf16 asked on a CPU without bf16 units is refused, not run as f32
        if got != getattr(ov.Type, precision):
            raise RuntimeError(f"INFERENCE_PRECISION_HINT: asked {precision}, OpenVINO compiled with {got}")
        self.inputs = [i.get_any_name() for i in self.compiled.inputs]
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]
        self.request = self.compiled.create_infer_request()

    def feeds(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        return graph_feeds(self.inputs, batch)

    def __call__(self, **batch: Tensor) -> dict[str, Tensor]:
        self.request.infer(self.feeds(batch))
        return {n: torch.from_numpy(self.request.get_tensor(n).data.copy()) for n in self.outputs}

    def _matmul_layers(self):
        """(layer type, runtime precision, kernel) of each matrix-multiply layer of the compiled model."""
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
            if kind in ("FullyConnected", "MatMul", "Convolution"):
                precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
                kernel = info["primitiveType"].astype(str) if "primitiveType" in info else "?"
                yield kind, precision, kernel

    @staticmethod
    def _nested(counts: Counter) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (kind, key), n in sorted(counts.items()):
            out.setdefault(kind, {})[key] = n
        return out

    def int8_layers(self) -> dict[str, dict[str, int]]:
        """Matrix-multiply layers of the compiled model by the precision they run in
        (``{"FullyConnected": {"i8": 12, "f32": 2}, ...}``): how much of the graph is int8."""
        return self._nested(Counter((kind, precision) for kind, precision, _ in self._matmul_layers()))

    def matmul_kernels(self) -> dict[str, dict[str, int]]:
        """Matrix-multiply layers by the kernel OpenVINO picked (``{"FullyConnected":
        {"brgemm_avx512_amx_i8": 36}, ...}``): which instruction set ran them, e.g. whether a run
        under ``ONEDNN_MAX_CPU_ISA`` (the benchmark's CPU without AMX) really kept AMX out."""
        return self._nested(Counter((kind, kernel) for kind, _, kernel in self._matmul_layers()))


def nncf_quantize(model: Any, calibration: Iterable[dict[str, Tensor]]) -> tuple[Any, dict[str, Any]]:
    """NNCF's post-training int8 quantization of a float ``openvino.Model`` (or file), calibrated
    on the sentences of ``calibration`` (batches of the torch models' inputs), fed one sentence
    at a time as NNCF asks of transformers (batch-wise statistics mislead it), with its
    transformer settings: ``model_type=TRANSFORMER`` (SmoothQuant first, its transformer ignored
    patterns), the MIXED preset (symmetric weights, asymmetric activations), CPU target.
    Returns the quantized model and the settings used."""
    require_openvino(nncf=True)
    import nncf

    if isinstance(model, (str, Path)):
        model = read_model(model)
    rows = [{k: v[i:i + 1] for k, v in b.items()} for b in calibration for i in range(len(b["input_ids"]))]
    if not rows:
        raise ValueError("nncf_quantize needs at least one calibration sentence")
    names = [i.get_any_name() for i in model.inputs]

    def feed(b: dict[str, Tensor]) -> dict[str, Any]:
        ids = b["input_ids"]
        return {n: (b[n] if n in b else torch.zeros_like(ids)).numpy().astype("int64") for n in names}

    settings = {"model_type": "transformer", "preset": "mixed", "target_device": "CPU",
                "calibration_sentences": len(rows), "nncf": nncf.__version__}
    quantized = nncf.quantize(model, nncf.Dataset(rows, feed), model_type=nncf.ModelType.TRANSFORMER,
                              preset=nncf.QuantizationPreset.MIXED, target_device=nncf.TargetDevice.CPU,
                              subset_size=len(rows))
    return quantized, settings
