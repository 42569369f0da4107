"""Running an exported ONNX graph in ONNX Runtime (CPU) with the batches the torch models take."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def require_onnx() -> None:
    """ImportError naming the extra when onnx / onnxruntime are not installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ImportError(f"the ONNX export needs onnx and onnxruntime ({err}): pip install 'qbert[onnx]'") from None


def graph_feeds(names: list[str], batch: dict[str, Tensor]) -> dict:
    """A transformers batch as an exported graph's int64 inputs ``names``: token types default
    to zeros, as in transformers (ONNX Runtime and OpenVINO models alike)."""
    ids = batch["input_ids"]
    out = {}
    for name in names:
        t = batch.get(name)
        out[name] = (torch.zeros_like(ids) if t is None and name == "token_type_ids" else t).numpy().astype("int64")
    return out


class OnnxModel:
    """An ONNX Runtime session called like a transformers model: ``model(**batch)["logits"]``."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        require_onnx()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def feeds(self, batch: dict[str, Tensor]) -> dict:
        return graph_feeds(self.inputs, batch)

    def run(self, batch: dict[str, Tensor], outputs: list[str] | None = None) -> dict[str, Tensor]:
        names = outputs or self.outputs
        return {n: torch.from_numpy(v) for n, v in zip(names, self.session.run(names, self.feeds(batch)))}

    def __call__(self, **batch: Tensor) -> dict[str, Tensor]:
        return self.run(batch, self.outputs)


def with_outputs(model: "str | Path | object", names: list[str], path: str | Path) -> OnnxModel:
    """A session of the graph ``model`` (a file or an ``onnx.ModelProto``) that also returns the
    intermediate tensors ``names`` (types from shape inference), saved at ``path``: how tests and
    ``experiments/trace_runtime_gap.py`` read a layer's integer input codes back."""
    require_onnx()
    import onnx

    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    proto = onnx.shape_inference.infer_shapes(proto)
    info = {v.name: v for v in proto.graph.value_info}
    missing = [n for n in names if n not in info]
    if missing:
        raise KeyError(f"not tensors of the graph: {missing[:3]}")
    proto.graph.output.extend(info[n] for n in names)
    onnx.save(proto, str(path))
    return OnnxModel(path)
