"""qbert.export: real low-bit models. Packed safetensors export (``exporter``, ``packed_file``,
``packing``), an inference loader with no training code (``loader``, ``modules``), size measured
against the accounting (``report``), and integer inference backends (``int8_cpu``: torchao PT2E; ``kernels``: ``torch._int_mm`` W8A8
and tinygemm int4 weight-only modules).
"""

from qbert.export.exporter import export_packed, load_run_model
from qbert.export.loader import load_packed
from qbert.export.packed_file import FORMAT, PackedFileError, read_packed, write_packed
from qbert.export.packing import pack, packed_nbytes, unpack

__all__ = ["FORMAT", "PackedFileError", "export_packed", "load_packed", "load_run_model", "pack",
           "packed_nbytes", "read_packed", "unpack", "write_packed"]
