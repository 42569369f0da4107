"""Console entry point: ``qbert task=sst2 model=minilm`` (one run) or ``qbert -m ...`` (a sweep)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from qbert.config import CONF_DIR, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from qbert.pipeline import run  # heavy imports after Hydra parsed the command line

    results = run(cfg)
    return results.get("primary_metric")


if __name__ == "__main__":
    main()
