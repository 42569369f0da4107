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


def test_quiet_leaves_transformers_unimported_until_someone_imports_it():
    """quiet() runs first thing in every command; importing transformers there cost a refused
    config or a report seconds. The progress bar is still turned off once transformers loads."""
    import subprocess
    import sys

    code = ("import sys\nfrom qbert.quiet import quiet\nquiet()\nassert 'transformers' not in sys.modules\n"
            "import transformers\nfrom transformers.utils import logging\nprint(logging.is_progress_bar_enabled())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
