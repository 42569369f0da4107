"""Knowledge distillation from a frozen full-precision teacher (MKQ-BERT's recipe, ``quant=mkq``).

* ``load_teacher`` builds the task model, loads a full-precision fine-tuned run into it and
  freezes it in eval mode. A teacher of another task, another label set or another architecture
  (layers, hidden size, heads) is a ``ValueError`` naming ``distill.teacher``; so is a quantized
  run (it would not be the full-precision model).
* ``distillation_loss`` compares one student forward with one teacher forward on the same batch:
  logits (KL at temperature T, times T^2: the soft cross-entropy minus the teacher's entropy,
  the same gradient, and 0 when the student equals the teacher), hidden states (the embedding
  output and every layer) and attention probabilities (every layer), over the tokens that are
  not padding. ``mse`` sums each layer's plain MSE (MKQ's loss so far); the normalised forms
  keep every layer's term O(1) and average over layers, so no layer and no outlier dimension
  dominates: ``normalized_mse`` divides each hidden dimension's MSE by the teacher's variance
  of that dimension in the batch (scaling one dimension of both models changes nothing),
  ``kl`` compares each query's attention row as a distribution.
* Attention maps need the eager attention kernel (SDPA returns none in transformers 5):
  ``needs_eager`` says when, and the pipeline switches both models with
  ``set_attn_implementation("eager")``.

The teacher is held by a ``Distiller``, a plain object (not a submodule), so it is neither
trained, nor saved in checkpoints, nor switched to train mode by Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qbert.config import DistillConfig
from qbert.weights import load_weights_

KEY = "distill.teacher"


def needs_eager(cfg: DistillConfig) -> bool:
    return cfg.enabled and cfg.attention_weight > 0


def _teacher_task(source: Path) -> str | None:
    folder = source if source.is_dir() else source.parent.parent  # <run>/checkpoints/x.ckpt
    results = folder / "results.json"
    if not results.is_file():
        return None
    from qbert.report.record import read_json
    content = read_json(results)
    if content is None:  # its task cannot be checked: say so rather than distil from an unknown run
        raise ValueError(f"config key '{KEY}': {results} is damaged (not a readable JSON object), so the "
                         "teacher's task cannot be checked; re-run the teacher or point at another run")
    return content.get("task")


def load_teacher(source: str | Path, model_cfg, task_cfg, vocab_size: int) -> nn.Module:
    """The frozen full-precision teacher of ``task_cfg`` from a run folder or ``.ckpt``."""
    from qbert.models import build_task_model
    from qbert.models.build import load_checkpoint

    source = Path(source)
    task = _teacher_task(source)
    if task is not None and task != task_cfg.name:
        raise ValueError(f"config key '{KEY}': {source} was fine-tuned on {task!r}, this run is {task_cfg.name!r}")
    try:
        state, qmap = load_checkpoint(source)
    except FileNotFoundError as err:
        raise FileNotFoundError(str(err).replace("'init_from'", f"'{KEY}'")) from None
    if qmap:
        raise ValueError(f"config key '{KEY}': {source} is a quantized run; the teacher must be full precision")
    teacher = build_task_model(model_cfg, task_cfg, vocab_size=vocab_size)
    student = (f"the student's task/architecture ({task_cfg.name}: {task_cfg.num_labels} labels, "
               f"{model_cfg.num_layers} layers, hidden {model_cfg.hidden_size})")
    try:
        load_weights_(teacher, state, str(source), KEY)
    except ValueError as err:
        raise ValueError(str(err).replace("does not fit this model", f"does not match {student}")) from None
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _token_mask(attention_mask: Tensor | None, like: Tensor) -> Tensor:
    if attention_mask is None:
        return torch.ones(like.shape[:2], dtype=like.dtype, device=like.device)
    return attention_mask.to(like.dtype)


def _masked_mse(s: Tensor, t: Tensor, mask: Tensor) -> Tensor:
    """MSE over the positions where ``mask`` (shape = the leading dims of ``s``... broadcast) is 1."""
    err = (s.float() - t.float()).square()
    while mask.ndim < err.ndim:
        mask = mask.unsqueeze(-1)
    return _masked_mean(err, mask)


def _normalized_mse(s: Tensor, t: Tensor, mask: Tensor) -> Tensor:
    """Mean over dimensions of (MSE of the dimension) / (teacher's variance of it), both over
    the tokens where ``mask`` [B, T] is 1: invariant to rescaling any dimension of both."""
    s, t = s.float(), t.float()
    m = mask.unsqueeze(-1)
    n = m.sum().clamp(min=1)
    mse = ((s - t).square() * m).sum((0, 1)) / n  # [hidden]
    mean = (t * m).sum((0, 1)) / n
    var = ((t - mean).square() * m).sum((0, 1)) / n
    # A (near-)constant dimension would blow its term up: its variance is floored at 1e-4 of
    # the median dimension's (the median, unlike the mean, does not move with one outlier).
    return (mse / (var + 1e-4 * var.median() + 1e-12)).mean()


def _attention_kl(s: Tensor, t: Tensor, mask: Tensor) -> Tensor:
    """KL(teacher || student) per attention row [B, heads, query, key], over the keys the
    student kept (its attention dropout zeroes some: both rows are renormalised over the rest;
    without dropout that is every key with weight), averaged over heads and the non-padding
    queries (``mask`` [B, 1, query])."""
    s, t = s.float(), t.float()
    kept = s > 0
    t = torch.where(kept, t, torch.zeros_like(t))
    t = t / t.sum(-1, keepdim=True).clamp(min=1e-12)
    s = s / s.sum(-1, keepdim=True).clamp(min=1e-12)
    log_s = torch.where(kept, s.clamp(min=1e-30).log(), torch.zeros_like(s))
    kl = (torch.xlogy(t, t) - t * log_s).sum(-1)  # [B, heads, query]
    return _masked_mean(kl, mask)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    mask = mask.expand_as(x)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _layer_term(student: tuple[Tensor, ...], teacher: tuple[Tensor, ...], mask: Tensor, kind: str) -> Tensor:
    """The hidden-state or attention term over all layers: ``mse`` sums the per-layer MSEs
    (MKQ's loss so far), the normalised kinds average their O(1) per-layer terms."""
    if kind == "mse":
        return sum(_masked_mse(s, t, mask) for s, t in zip(student, teacher))
    per_layer = _normalized_mse if kind == "normalized_mse" else _attention_kl
    return torch.stack([per_layer(s, t, mask) for s, t in zip(student, teacher)]).mean()


def _logits(output) -> list[Tensor]:
    if getattr(output, "logits", None) is not None:
        return [output.logits]
    return [output.start_logits, output.end_logits]  # question answering


def _kl(student: Tensor, teacher: Tensor, temperature: float, mask: Tensor | None) -> Tensor:
    """KL(teacher_T || student_T) * T^2 per example (per token for token classification)."""
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    s = F.log_softmax(student.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1) * temperature**2
    if kl.ndim == 2 and mask is not None:  # token classification: per non-padding token
        return (kl * mask).sum() / mask.sum().clamp(min=1)
    return kl.mean()


def distillation_loss(student, teacher, cfg: DistillConfig, attention_mask: Tensor | None,
                      token_level: bool) -> dict[str, Tensor]:
    """The weighted distillation terms (without the task loss) and their sum under ``"kd"``."""
    device = _logits(student)[0].device
    zero = torch.zeros((), device=device)
    terms = {"logits": zero, "hidden": zero, "attention": zero}
    if cfg.logits_weight > 0:
        mask = _token_mask(attention_mask, _logits(student)[0]) if token_level else None
        terms["logits"] = sum(_kl(s, t, cfg.temperature, mask) for s, t in zip(_logits(student), _logits(teacher)))
    if cfg.hidden_weight > 0:
        mask = _token_mask(attention_mask, student.hidden_states[0])
        terms["hidden"] = _layer_term(student.hidden_states, teacher.hidden_states, mask, cfg.hidden_loss)
    if cfg.attention_weight > 0:
        if not student.attentions or not teacher.attentions:
            raise RuntimeError("distillation of attention maps needs attn_implementation='eager' on both models")
        mask = _token_mask(attention_mask, student.hidden_states[0] if student.hidden_states else _logits(student)[0])
        # [B, heads, query, key]: the rows of the non-padding queries
        qmask = mask[:, None, :]
        terms["attention"] = _layer_term(student.attentions, teacher.attentions, qmask, cfg.attention_loss)
    terms["kd"] = (cfg.logits_weight * terms["logits"] + cfg.hidden_weight * terms["hidden"]
                   + cfg.attention_weight * terms["attention"])
    return terms


@dataclass
class Distiller:
    """The frozen teacher and the loss settings; ``TaskModule`` calls it in ``training_step``."""

    teacher: nn.Module
    cfg: DistillConfig
    token_level: bool = False  # token classification: logits per token

    def model_kwargs(self) -> dict[str, bool]:
        return {"output_hidden_states": self.cfg.hidden_weight > 0,
                "output_attentions": self.cfg.attention_weight > 0}

    def __call__(self, student_output, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        with torch.no_grad():
            teacher_output = self.teacher(**inputs, **self.model_kwargs())
        return distillation_loss(student_output, teacher_output, self.cfg, inputs.get("attention_mask"),
                                 self.token_level)

    def to(self, device) -> "Distiller":
        self.teacher.to(device)
        return self
