"""Console entry point: ``qbert task=sst2 model=minilm`` (one run) or ``qbert -m ...`` (a sweep)."""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from qbert.config import CONF_DIR, register_configs
from qbert.quiet import quiet

quiet()  # before torch, transformers and Lightning print their import-time notes
register_configs()


# What qbert raises for a bad input (a config value, a data, weights or packed file, a missing
# path): the message names the key, file, line or field, so it is all the user sees; a traceback
# would bury it. Anything else is a bug and keeps Hydra's traceback.
REFUSALS = (ValueError, OSError)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from qbert.sweep.jobs import run_job  # heavy imports after Hydra parsed the command line

    try:
        results = run_job(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)
    except REFUSALS as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(refusal(error), file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    return results.get("primary_metric") if results else None


def refusal(error: BaseException) -> str:
    return (f"qbert: error: {error}\n"
            f"(a {type(error).__name__}; HYDRA_FULL_ERROR=1 shows where it was raised)")


if __name__ == "__main__":
    main()
