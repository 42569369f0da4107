"""Other libraries' console noise is silenced by name; qbert's own warnings still print."""

from __future__ import annotations

import logging
import warnings

from qbert.quiet import quiet


def test_noise_is_silenced_and_our_warnings_are_kept(caplog):
    quiet()
    with caplog.at_level(logging.INFO):
        logging.getLogger("torchao").warning("Failed to load _C_mxfp8.so")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False, used: False")
        logging.getLogger("torch.utils._pytree").warning("<enum 'X'> is an Enum subclass")
        logging.getLogger("qbert.hessian.sensitivity").warning("3 of 12 power iterations stopped")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").error("a real Lightning error")
    text = caplog.text
    assert "Failed to load" not in text and "GPU available" not in text and "Enum subclass" not in text
    assert "3 of 12 power iterations stopped" in text and "a real Lightning error" in text
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet()  # filters added after simplefilter take precedence, as in a run
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning)
        warnings.warn("qbert: something the user should see", UserWarning)
    assert [str(w.message) for w in seen] == ["qbert: something the user should see"]
