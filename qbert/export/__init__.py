"""qbert.export: real low-bit models. Packed safetensors export (``exporter``, ``packed_file``,
``packing``), an inference loader with no training code (``loader``, ``modules``), size measured
against the accounting (``report``), and integer inference backends (``int8_cpu``: torchao PT2E; ``kernels``: ``torch._int_mm`` W8A8
and tinygemm int4 weight-only modules), and a standard QDQ ONNX graph of a packed model
(``onnx_export``; ``onnx_runtime`` runs it in ONNX Runtime).
"""

from importlib import import_module

# Loaded on first use, so that ``qbert-export`` (qbert.export.cli) can silence other libraries'
# import-time noise before torch and torchao are imported.
_WHERE = {
    "export_packed": "exporter", "load_run_model": "exporter", "load_packed": "loader",
    "FORMAT": "packed_file", "PackedFileError": "packed_file", "read_packed": "packed_file",
    "write_packed": "packed_file", "pack": "packing", "packed_nbytes": "packing", "unpack": "packing",
    "export_onnx": "onnx_export", "OnnxModel": "onnx_runtime",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'qbert.export' has no attribute {name!r}")
    return getattr(import_module(f"qbert.export.{_WHERE[name]}"), name)
