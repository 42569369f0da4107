"""Knowledge distillation: zero at equality, decreasing under training, and a teacher that does
not fit the student is a clear error."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

from qbert.config import DistillConfig, ModelConfig, TaskConfig
from qbert.quant import calibration, mkq_plan, quantize_
from qbert.train.distill import Distiller, load_teacher

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64)
ALL = DistillConfig(enabled=True, temperature=2.0)


def tiny(cls=BertForSequenceClassification, seed=0, **overrides):
    torch.manual_seed(seed)
    model = cls(BertConfig(**{**TINY, **overrides}))
    model.set_attn_implementation("eager")
    return model.eval()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (6, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[:3, 7:] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("cls", [BertForSequenceClassification, BertForTokenClassification])
def test_distillation_loss_is_zero_when_the_student_is_the_teacher(cls):
    teacher = tiny(cls)
    distiller = Distiller(teacher, ALL, token_level=cls is BertForTokenClassification)
    student = copy.deepcopy(teacher)
    inputs = batch()
    terms = distiller(student(**inputs, **distiller.model_kwargs()), inputs)
    assert all(abs(terms[k].item()) < 1e-6 for k in ("logits", "hidden", "attention", "kd"))
    other = tiny(cls, seed=3)  # and it is not zero for another model
    terms = distiller(other(**inputs, **distiller.model_kwargs()), inputs)
    assert all(terms[k].item() > 1e-7 for k in ("logits", "hidden", "attention"))  # random tiny models: near-uniform


@pytest.mark.parametrize("cfg", [ALL, DistillConfig(enabled=True, temperature=2.0, hidden_loss="normalized_mse",
                                                   attention_loss="kl")], ids=["mse", "normalized"])
def test_distillation_loss_decreases_while_a_quantized_student_trains(cfg):
    teacher = tiny()
    student = quantize_(tiny(seed=5), mkq_plan(groups=1))  # another init, and W4A4
    inputs = batch()
    with calibration(student), torch.no_grad():
        student(**inputs)
    student.train()
    distiller = Distiller(teacher, cfg)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = distiller(student(**inputs, **distiller.model_kwargs()), inputs)["kd"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(p.grad is None for p in teacher.parameters())  # the teacher stays frozen


def test_weights_select_the_terms():
    teacher, student = tiny(), tiny(seed=3)
    inputs = batch()
    only_logits = DistillConfig(enabled=True, hidden_weight=0.0, attention_weight=0.0)
    d = Distiller(teacher, only_logits)
    assert d.model_kwargs() == {"output_hidden_states": False, "output_attentions": False}
    terms = d(student(**inputs), inputs)
    assert terms["hidden"].item() == 0 and terms["attention"].item() == 0
    assert terms["kd"].item() == pytest.approx(terms["logits"].item())


def _save_run(folder, model, task):
    model.save_pretrained(folder / "model")
    (folder / "results.json").write_text(json.dumps({"task": task}))
    return folder


MODEL = ModelConfig(name="tiny", hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
SST2 = TaskConfig(name="sst2", kind="classification", num_labels=2, metric="accuracy")


def test_a_matching_teacher_loads_frozen(tmp_path):
    source = _save_run(tmp_path / "fp", tiny(vocab_size=100, max_position_embeddings=512), "sst2")
    teacher = load_teacher(source, MODEL, SST2, vocab_size=100)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("change,match", [
    ({"task": "conll03"}, "fine-tuned on 'conll03'"),
    ({"num_labels": 3}, "does not match"),
    ({"hidden_size": 64}, "does not match"),
    ({"num_hidden_layers": 3}, "does not match"),
])
def test_a_teacher_that_does_not_fit_the_student_is_a_clear_error(tmp_path, change, match):
    task = change.pop("task", "sst2")
    model = tiny(**{"max_position_embeddings": 512, **change})
    source = _save_run(tmp_path / "fp", model, task)
    with pytest.raises(ValueError, match=f"config key 'distill.teacher'.*{match}"):
        load_teacher(source, MODEL, SST2, vocab_size=100)


def test_a_quantized_teacher_is_refused(tmp_path):
    source = _save_run(tmp_path / "q", tiny(max_position_embeddings=512), "sst2")
    (source / "model" / "quantization_map.json").write_text(json.dumps({"bert.pooler.dense": {"w_bits": 8}}))
    with pytest.raises(ValueError, match="distill.teacher.*quantized"):
        load_teacher(source, MODEL, SST2, vocab_size=100)


@pytest.mark.parametrize(("damage", "match"), [
    (lambda run: (run / "results.json").write_text('{"task": "ss'), r"results\.json is damaged"),
    (lambda run: (run / "results.json").write_text('["sst2"]'), r"results\.json is damaged"),
    (lambda run: (run / "model" / "model.safetensors").write_bytes(b"\x10\x00"), r"model\.safetensors: not a readable"),
    (lambda run: (run / "model" / "quantization_map.json").write_text("{"), r"quantization_map\.json: not a readable"),
])
def test_a_damaged_teacher_run_is_refused_naming_the_file(tmp_path, damage, match):
    source = _save_run(tmp_path / "fp", tiny(max_position_embeddings=512), "sst2")
    damage(source)
    with pytest.raises(ValueError, match=match):
        load_teacher(source, MODEL, SST2, vocab_size=100)


@pytest.mark.parametrize("content", [b"PK\x03\x04 half a checkpoint", b"", b"\x80\x02}q\x00."])
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, content):
    from qbert.models.build import load_checkpoint

    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{ckpt}: not a (readable|Lightning) checkpoint"):
        load_checkpoint(ckpt)
