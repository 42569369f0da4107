"""qbert's Hydra configs. Installed as the package data ``qbert.conf`` (pyproject.toml maps this
folder there), so a wheel finds them through the package: ``qbert.config.CONF_DIR``."""
