"""qbert: ultra-low-precision quantization of BERT-family models (Q-BERT, Q8BERT, MKQ-BERT).

Importing qbert is light (no torch, no transformers). When transformers is imported, in whichever
order, qbert registers its model type and quantizers with it (``qbert.hf``), so that
``AutoModelFor...from_pretrained(<quantized run>/model)`` rebuilds the fake-quantized model.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_after_transformers: list = []  # callbacks run once transformers is imported (see after_transformers_import)


def after_transformers_import(callback) -> None:
    """Run ``callback()`` once transformers is imported: now if it is, else right after its
    import (whoever imports it). Lets qbert configure transformers without importing it, which
    costs seconds a command that never builds a model (a refused config, a report) should not pay."""
    if "transformers" in sys.modules and hasattr(sys.modules["transformers"], "__version__"):
        callback()
    else:
        _after_transformers.append(callback)
        if not any(isinstance(f, _AfterTransformersImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterTransformersImport())


def _register_with_transformers() -> None:
    if "qbert.hf" in sys.modules and not hasattr(sys.modules["qbert.hf"], "register"):
        return  # qbert.hf is importing transformers itself; it registers when its import finishes
    try:
        from qbert import hf
        hf.register()
    except Exception as err:  # never break `import transformers` for a user of another library
        import warnings
        warnings.warn(f"qbert could not register with transformers ({type(err).__name__}: {err}); "
                      "from_pretrained of a quantized qbert run will fail", RuntimeWarning, stacklevel=2)


class _AfterTransformersImport(importlib.abc.MetaPathFinder):
    """Runs the registration right after ``import transformers`` finishes (a post-import hook)."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_with_transformers()
            while _after_transformers:
                _after_transformers.pop(0)()

        spec.loader.exec_module = exec_then_register
        return spec


if "transformers" in sys.modules:
    _register_with_transformers()
elif not any(isinstance(f, _AfterTransformersImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTransformersImport())
