"""Build a task model (and its tokenizer) from a ModelConfig and a TaskConfig."""

from qbert.models.build import build_task_model, build_tokenizer, load_finetuned_, resolve_weights

__all__ = ["build_task_model", "build_tokenizer", "load_finetuned_", "resolve_weights"]
