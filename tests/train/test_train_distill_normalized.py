"""The normalised layer-wise distillation loss (distill.hidden_loss=normalized_mse,
distill.attention_loss=kl): no outlier dimension and no layer dominates it."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from qbert.config import DistillConfig
from qbert.train.distill import Distiller, _attention_kl, _normalized_mse, distillation_loss

from test_train_distill import batch, tiny  # the same tiny models and padded batch

NORMALIZED = DistillConfig(enabled=True, hidden_loss="normalized_mse", attention_loss="kl")
PLAIN = DistillConfig(enabled=True)
LAYERS = {"num_hidden_layers": 3}


def outputs(model, inputs):
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True, output_attentions=True)


def scaled(output, dim: int, factor: float):
    """The same output with hidden dimension ``dim`` of every layer multiplied by ``factor``."""
    hidden = []
    for h in output.hidden_states:
        h = h.clone()
        h[..., dim] *= factor
        hidden.append(h)
    return SimpleNamespace(logits=output.logits, hidden_states=tuple(hidden), attentions=output.attentions)


def test_normalized_hidden_loss_ignores_the_scale_of_a_dimension_the_plain_one_is_dominated_by_it():
    inputs = batch()
    student, teacher = outputs(tiny(seed=3, **LAYERS), inputs), outputs(tiny(**LAYERS), inputs)
    mask = inputs["attention_mask"]
    terms = {}
    for name, cfg in (("plain", PLAIN), ("normalized", NORMALIZED)):
        before = distillation_loss(student, teacher, cfg, mask, token_level=False)["hidden"].item()
        after = distillation_loss(scaled(student, 5, 100.0), scaled(teacher, 5, 100.0), cfg, mask,
                                  token_level=False)["hidden"].item()
        terms[name] = (before, after)
    before, after = terms["normalized"]
    assert after == pytest.approx(before, rel=1e-3)
    before, after = terms["plain"]  # one outlier dimension of 32 makes up nearly all of it
    assert after > 50 * before


@pytest.mark.parametrize("cfg", [NORMALIZED, PLAIN], ids=["normalized", "plain"])
def test_distillation_loss_is_zero_for_identical_student_and_teacher(cfg):
    teacher = tiny(**LAYERS)
    distiller = Distiller(teacher, cfg)
    inputs = batch()
    terms = distiller(copy.deepcopy(teacher)(**inputs, **distiller.model_kwargs()), inputs)
    assert all(abs(terms[k].item()) < 1e-6 for k in ("logits", "hidden", "attention", "kd"))


def test_each_layers_normalized_term_is_order_one_whatever_the_scale_of_its_hidden_states():
    inputs = batch()
    student, teacher = outputs(tiny(seed=3, **LAYERS), inputs), outputs(tiny(**LAYERS), inputs)
    mask = inputs["attention_mask"]
    mask_q = mask.float()[:, None, :]
    for s, t in zip(student.hidden_states, teacher.hidden_states):
        per_layer = _normalized_mse(s, t, mask.float()).item()
        assert 0.3 < per_layer < 5.0  # unrelated models: about 2 (each dimension's MSE ~ twice its variance)
        # a layer whose activations are 1000x larger in both models counts the same
        assert _normalized_mse(1000 * s, 1000 * t, mask.float()).item() == pytest.approx(per_layer, rel=1e-4)
    keys = inputs["input_ids"].shape[1]
    for s, t in zip(student.attentions, teacher.attentions):
        kl = _attention_kl(s, t, mask_q).item()
        assert 0 < kl < torch.log(torch.tensor(float(keys))).item()  # a row's KL to near-uniform rows
    # the total is the mean of the layers' terms, not their sum: more layers do not weigh more
    total = distillation_loss(student, teacher, NORMALIZED, mask, token_level=False)
    per_layer = [_normalized_mse(s, t, mask.float()).item() for s, t in zip(student.hidden_states, teacher.hidden_states)]
    assert total["hidden"].item() == pytest.approx(sum(per_layer) / len(per_layer), rel=1e-5)


def test_attention_kl_is_zero_for_the_same_rows_after_attention_dropout():
    torch.manual_seed(0)
    teacher = torch.softmax(torch.randn(2, 4, 5, 5), dim=-1)
    keep = (torch.rand_like(teacher) > 0.3).float()
    keep[..., 0] = 1.0  # no row loses every key
    dropped = teacher * keep / 0.7  # what a student in train mode returns
    mask = torch.ones(2, 1, 5)
    assert _attention_kl(dropped, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.softmax(torch.randn(2, 4, 5, 5), dim=-1)
    assert _attention_kl(other, teacher, mask).item() > 0.05
    # a padding query (mask 0) does not count
    mask[1, 0, 2:] = 0
    noisy = other.clone()
    noisy[1, :, 2:] = torch.softmax(torch.randn(4, 3, 5) * 10, dim=-1)
    assert _attention_kl(noisy, teacher, mask).item() == pytest.approx(_attention_kl(other, teacher, mask).item())
