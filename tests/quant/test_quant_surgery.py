"""quantize_ / dequantize_ / quantization_map on tiny random BERTs."""

import json

import pytest
import torch
from torch import nn
from transformers import BertForQuestionAnswering, BertForSequenceClassification

from qbert.quant import (
    QuantEmbedding,
    QuantLinear,
    QuantSpec,
    calibration,
    dequantize_,
    directq_plan,
    quantization_map,
    quantize_,
    uniform_plan,
)

LINEAR_KINDS = ["attention.self.query", "attention.self.key", "attention.self.value",
                "attention.output.dense", "intermediate.dense", "output.dense"]
ENCODER = {f"bert.encoder.layer.{i}.{k}" for i in range(2) for k in LINEAR_KINDS}
EMBEDDINGS = {"bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings"}


def _float_types(model):
    return {n: type(m) for n, m in model.named_modules()}


def test_uniform_plan_covers_exactly_the_intended_modules(tiny_seq_model):
    before = _float_types(tiny_seq_model)
    quantize_(tiny_seq_model, uniform_plan(4, e_bits=8, a_bits=8, groups=4))
    qmap = quantization_map(tiny_seq_model)
    assert set(qmap) == ENCODER | EMBEDDINGS
    for name, m in tiny_seq_model.named_modules():
        if name in ENCODER:
            assert type(m) is QuantLinear and m.spec.w_bits == 4 and m.spec.a_bits == 8
        elif name in EMBEDDINGS:
            assert type(m) is QuantEmbedding and m.spec.w_bits == 8
        elif name in before:  # everything else untouched: pooler, classifier, LN, GELU, token types
            assert type(m) is before[name], name
    assert type(tiny_seq_model.classifier) is nn.Linear
    assert type(tiny_seq_model.bert.pooler.dense) is nn.Linear
    assert type(tiny_seq_model.bert.embeddings.token_type_embeddings) is nn.Embedding


def test_heads_as_groups_and_pooler_option(tiny_seq_model):
    quantize_(tiny_seq_model, uniform_plan(4, groups=2, heads_as_groups=True, num_heads=4, quantize_pooler=True))
    qmap = quantization_map(tiny_seq_model)
    assert qmap["bert.encoder.layer.0.attention.self.key"]["groups"] == 4
    assert qmap["bert.encoder.layer.0.attention.output.dense"]["groups"] == 2
    assert "bert.pooler.dense" in qmap and "classifier" not in qmap
    with pytest.raises(ValueError, match="num_heads"):
        uniform_plan(4, heads_as_groups=True)


@pytest.mark.parametrize("fixture", ["tiny_token_model", "tiny_qa_model"])
def test_plans_fit_models_without_pooler(fixture, request):
    model = request.getfixturevalue(fixture)
    quantize_(model, uniform_plan(2, groups=4))
    assert set(quantization_map(model)) == ENCODER | EMBEDDINGS
    with pytest.raises(ValueError, match="pooler"):
        quantize_(request.getfixturevalue(fixture), uniform_plan(2, groups=4, quantize_pooler=True))


def test_prefix_open_by_default_and_pinnable(tiny_seq_model):
    wrapper = nn.Module()
    wrapper.model = tiny_seq_model  # like a LightningModule holding the HF model
    quantize_(wrapper, directq_plan(8))
    assert set(quantization_map(wrapper)) == {f"model.{n}" for n in ENCODER | EMBEDDINGS}
    with pytest.raises(ValueError, match="match no quantizable module"):
        quantize_(nn.Sequential(), uniform_plan(8, prefix="bert."))


def test_errors_leave_model_untouched(tiny_seq_model):
    snapshot = _float_types(tiny_seq_model)
    with pytest.raises(ValueError, match=r"'bert\.nope'"):
        quantize_(tiny_seq_model, [("bert.nope", QuantSpec()), ("classifier", QuantSpec())])
    with pytest.raises(ValueError, match="empty"):
        quantize_(tiny_seq_model, [])
    with pytest.raises(ValueError, match="quantizes no module"):
        quantize_(tiny_seq_model, {"classifier": None})
    with pytest.raises(TypeError, match="LayerNorm"):
        quantize_(tiny_seq_model, {"bert.embeddings.LayerNorm": QuantSpec()})
    with pytest.raises(TypeError, match="BertPooler"):
        quantize_(tiny_seq_model, {"bert.pooler": QuantSpec()})
    with pytest.raises(ValueError, match=r"layer\.0\.attention\.self\.query: groups=128 does not divide its 32 rows"):
        quantize_(tiny_seq_model, uniform_plan(4, groups=128))
    with pytest.raises(ValueError, match=r"layer\.1\.intermediate\.dense: groups=5 does not divide its 64 rows"):
        quantize_(tiny_seq_model, {"classifier": QuantSpec(),
                                   "bert.encoder.layer.1.intermediate.dense": QuantSpec(groups=5)})
    assert _float_types(tiny_seq_model) == snapshot  # nothing half-replaced


def test_quantizing_twice_is_refused(tiny_seq_model):
    quantize_(tiny_seq_model, {"classifier": QuantSpec()})
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(tiny_seq_model, {"classifier": QuantSpec(w_bits=4)})
    quantize_(tiny_seq_model, {"bert.pooler.dense": QuantSpec()})  # staged quantization is fine


def test_dequantize_restores_float_model(tiny_seq_model, make_model, tiny_batch):
    reference = make_model()
    quantize_(tiny_seq_model, uniform_plan(2, groups=4, a_bits=32))
    inputs = {k: v for k, v in tiny_batch.items() if k != "labels"}
    assert not torch.equal(tiny_seq_model(**inputs).logits, reference(**inputs).logits)
    dequantize_(tiny_seq_model)
    assert _float_types(tiny_seq_model) == _float_types(reference)
    assert torch.equal(tiny_seq_model(**inputs).logits, reference(**inputs).logits)


@pytest.fixture
def one_thread():
    # tiny ops: threads only add contention on a busy CI box
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_quantized_tiny_bert_trains(tiny_seq_model, tiny_batch, one_thread):
    model = quantize_(tiny_seq_model, uniform_plan(4, e_bits=8, a_bits=8, groups=4)).train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(**tiny_batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.bert.encoder.layer[0].intermediate.dense.weight.grad is not None


def test_ptq_error_falls_with_bits(tiny_seq_model):
    errors = []
    for bits in range(2, 9):
        model = quantize_(dequantize_(tiny_seq_model), uniform_plan(bits, e_bits=bits, a_bits=32, groups=4))
        err = sum((m.weight - m.weight_quantizer(m.weight)).norm().item() ** 2
                  for m in model.modules() if isinstance(m, (QuantLinear, QuantEmbedding)))
        errors.append(err ** 0.5)
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_map_rebuilds_identical_model_from_json(tiny_seq_model, make_model, tiny_batch, tmp_path):
    model = quantize_(tiny_seq_model, uniform_plan(3, e_bits=4, a_bits=8, groups=8)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):  # move the weights and observe activation ranges
        model(**tiny_batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    (tmp_path / "quantization_map.json").write_text(json.dumps(quantization_map(model)))
    torch.save(model.state_dict(), tmp_path / "weights.pt")

    fresh = make_model(seed=123)
    quantize_(fresh, json.loads((tmp_path / "quantization_map.json").read_text()))
    fresh.load_state_dict(torch.load(tmp_path / "weights.pt"), strict=True)
    fresh.eval()
    inputs = {k: v for k, v in tiny_batch.items() if k != "labels"}
    assert quantization_map(fresh) == quantization_map(model)
    assert torch.equal(fresh(**inputs).logits, model(**inputs).logits)


def test_float_checkpoint_loads_then_calibration_enables_eval(tiny_seq_model, make_model, tiny_batch):
    float_sd = make_model(seed=7).state_dict()
    quantize_(tiny_seq_model, uniform_plan(8, a_bits=8, groups=4))
    tiny_seq_model.load_state_dict(float_sd, strict=True)
    inputs = {k: v for k, v in tiny_batch.items() if k != "labels"}
    with pytest.raises(RuntimeError, match="observed no range"):
        tiny_seq_model(**inputs)
    with torch.no_grad(), calibration(tiny_seq_model):
        tiny_seq_model(**inputs)
    out = tiny_seq_model(**inputs).logits  # ranges frozen again
    reference = make_model(seed=7)(**inputs).logits
    assert torch.allclose(out, reference, atol=0.05)  # 8-bit PTQ stays close to float


def test_quantized_model_is_json_serializable_as_plan_for_other_heads(make_model):
    qa = quantize_(make_model(BertForQuestionAnswering), uniform_plan(4, groups=4))
    seq = quantize_(make_model(BertForSequenceClassification), quantization_map(qa))
    assert quantization_map(seq) == quantization_map(qa)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_quantized_model_trains_and_rebuilds(make_model, tiny_batch, dtype):
    model = quantize_(make_model(), uniform_plan(4, a_bits=8, groups=4)).to("cuda", dtype).train()
    batch = {k: v.cuda() for k, v in tiny_batch.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(**batch).loss.backward()
    opt.step()
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    fresh = quantize_(make_model(seed=3), quantization_map(model)).to("cuda", dtype).eval()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(**inputs).logits, model(**inputs).logits)
    assert model.bert.encoder.layer[0].output.dense.input_quantizer.running_max.device.type == "cuda"
