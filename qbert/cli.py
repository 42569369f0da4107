"""Console entry point: ``qbert task=sst2 model=minilm`` (one run) or ``qbert -m ...`` (a sweep)."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from qbert.config import CONF_DIR, register_configs
from qbert.quiet import quiet

quiet()  # before torch, transformers and Lightning print their import-time notes
register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from qbert.sweep.jobs import run_job  # heavy imports after Hydra parsed the command line

    results = run_job(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)
    return results.get("primary_metric") if results else None


if __name__ == "__main__":
    main()
