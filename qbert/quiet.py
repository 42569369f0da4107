"""Other libraries' console noise off; qbert's own messages (and everyone's errors) kept.

A run's console should show qbert's progress and warnings, not half a screen of lines nobody
acts on: torchao's optional-kernel load failures, torch's pytree deprecation notes, Lightning's
hardware census and product tips, a deprecated ``LeafSpec`` check inside Lightning, and the
progress bar transformers draws for writing a single weights file. Each is silenced by name
below; warnings and errors from anything else, qbert included, still print. Call ``quiet()``
before those libraries are imported (the CLI does it first thing).
"""

from __future__ import annotations

import logging
import warnings

# logger -> the lowest level still shown
NOISY_LOGGERS = {
    "torchao": logging.ERROR,  # "Failed to load ... _C_mxfp8 / _C_cutlass", "Detected no triton"
    "torch.utils._pytree": logging.ERROR,  # "<enum ...> is an Enum subclass ... register_constant()"
    "lightning.pytorch.utilities.rank_zero": logging.WARNING,  # GPU/TPU available, tips, "fit stopped"
    "lightning.fabric.utilities.rank_zero": logging.WARNING,
    "lightning.pytorch.accelerators.cuda": logging.WARNING,  # LOCAL_RANK / CUDA_VISIBLE_DEVICES
}
NOISY_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


def quiet() -> None:
    for name, level in NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # when transformers is imported, not now: importing it costs seconds a refused config or a
    # report never needs
    from qbert import after_transformers_import
    after_transformers_import(_quiet_transformers)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards": one file, a bar for nothing
