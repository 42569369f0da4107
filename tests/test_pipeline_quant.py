"""Quantized runs through the whole pipeline: FP start produced once, QAT, plan recorded, rebuilt."""

from __future__ import annotations

import json

import pytest
import torch

from qbert_testing import FAST
from qbert.config import validate
from qbert.pipeline import run

QUANT = [*FAST, "quant.groups=32"]  # the tiny BERT has 32- and 64-row matrices


def test_qat_starts_from_a_finetuned_model_made_once(compose_cfg, tmp_path):
    ft = f"finetuned_dir={tmp_path / 'ft'}"
    first = run(compose_cfg(["task=sst2", "quant=qbert", "quant.w_bits=4", *QUANT, ft], output_dir=tmp_path / "q4"))
    made = [p for p in (tmp_path / "ft").iterdir() if p.is_dir()]  # beside it: its lock file
    assert len(made) == 1 and (made[0] / "results.json").is_file()
    assert first["weights"]["init_from"] == str(made[0])
    second = run(compose_cfg(["task=sst2", "quant=directq", "quant.w_bits=2", *FAST, ft], output_dir=tmp_path / "d2"))
    assert [p for p in (tmp_path / "ft").iterdir() if p.is_dir()] == made  # reused, not retrained
    assert second["weights"]["init_from"] == str(made[0])

    qmap = first["quantization_map"]
    assert qmap and all(spec["w_bits"] == 4 for name, spec in qmap.items() if "encoder" in name)
    assert {spec["groups"] for name, spec in qmap.items() if "encoder" in name} == {32}
    assert {spec["groups"] for name, spec in second["quantization_map"].items() if "encoder" in name} == {1}
    assert not any(name.endswith("classifier") for name in qmap)  # the task head stays float
    # 4-bit weights: at most 8x smaller than fp32; on this tiny model each 32-value group row
    # also stores two fp32 range values (2 bits per weight), so about 5.9x.
    assert 5 < first["size"]["encoder"]["compression"] < 8
    saved = json.loads((tmp_path / "q4" / "model" / "quantization_map.json").read_text())
    assert saved == qmap


def test_a_quantized_run_is_rebuilt_from_its_folder(compose_cfg, tmp_path):
    trained = run(compose_cfg(["task=conll03", "quant=qbert", "quant.w_bits=3", *QUANT,
                               f"finetuned_dir={tmp_path / 'ft'}"], output_dir=tmp_path / "q3"))
    again = run(compose_cfg(["task=conll03", *FAST, f"init_from={tmp_path / 'q3'}", "eval_only=true"],
                            output_dir=tmp_path / "eval"))
    assert again["quantization_map"] == trained["quantization_map"]
    assert again["metrics"] == trained["metrics"]


@pytest.mark.parametrize("module", ["word_embedding", "position_embedding", "self_attention", "ffn"])
def test_module_ablations_quantize_only_their_module(compose_cfg, tmp_path, module):
    results = run(compose_cfg(["task=sst2", "quant=ablation", f"quant.module={module}", *QUANT,
                               f"finetuned_dir={tmp_path / 'ft'}"], output_dir=tmp_path / module))
    names = set(results["quantization_map"])
    expected = {"word_embedding": ("word_embeddings",), "position_embedding": ("position_embeddings",),
                "self_attention": ("attention.self.", "attention.output.dense"),
                "ffn": ("intermediate.dense", "layer.0.output.dense", "layer.1.output.dense")}[module]
    assert names and all(any(part in n for part in expected) for n in names)


@pytest.mark.parametrize("override,key", [
    ("quant.w_bits=1", "quant.w_bits"), ("quant.a_bits=16", "quant.a_bits"), ("quant.groups=0", "quant.groups"),
    ("quant.module=ffn", "quant.module"),
])
def test_quant_config_errors_name_the_key(compose_cfg, override, key):
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        validate(compose_cfg(["quant=qbert", override]))


def test_groups_that_do_not_divide_the_rows_fail_naming_the_module(compose_cfg, tmp_path):
    with pytest.raises(ValueError, match="encoder.layer.0"):
        run(compose_cfg(["task=sst2", "quant=qbert", *FAST, "quant.groups=128",
                         f"finetuned_dir={tmp_path / 'ft'}"], output_dir=tmp_path / "bad"))


def test_qat_recipe_changes_only_the_quantized_stage(compose_cfg):
    qat = validate(compose_cfg(["task=sst2", "quant=qbert", "quant.epochs=1", "quant.lr=1e-5"]))
    assert (qat.optim.epochs, qat.optim.lr) == (1, 1e-5)
    fp = validate(compose_cfg(["task=sst2"]))
    assert (fp.optim.epochs, fp.optim.lr) == (3, 3e-5)
    # quant=none trains with optim.*: a QAT recipe key there would be ignored, so it is refused
    with pytest.raises(ValueError, match="config key 'quant.epochs': 1 is not read by quant=none"):
        validate(compose_cfg(["task=sst2", "quant.epochs=1"]))


def test_post_training_quantization_calibrates_activation_ranges(compose_cfg, tmp_path):
    ft = f"finetuned_dir={tmp_path / 'ft'}"
    ptq = run(compose_cfg(["task=sst2", "quant=qbert", "quant.w_bits=8", *QUANT, ft, "eval_only=true",
                           "quant.calibration_batches=2"], output_dir=tmp_path / "ptq"))
    assert ptq["steps"] == 0 and 0 <= ptq["metrics"]["dev"]["accuracy"] <= 100
    fp = json.loads(next((tmp_path / "ft").glob("*/results.json")).read_text())
    # 8-bit weights and activations barely move a model's predictions.
    assert abs(ptq["metrics"]["dev"]["accuracy"] - fp["metrics"]["dev"]["accuracy"]) <= 5.0


def test_qat_gives_the_same_bits_whether_its_start_was_trained_in_process(compose_cfg, tmp_path):
    """Training the full-precision start moves the global RNG; the QAT stage reseeds."""
    from safetensors.torch import load_file

    overrides = ["task=sst2", "quant=qbert", "quant.w_bits=2", *QUANT, f"finetuned_dir={tmp_path / 'ft'}"]
    first = run(compose_cfg(overrides, output_dir=tmp_path / "a"))  # trains its start first
    second = run(compose_cfg(overrides, output_dir=tmp_path / "b"))  # finds it on disk
    assert first["weights"]["init_from"] == second["weights"]["init_from"]
    a, b = load_file(tmp_path / "a" / "model" / "model.safetensors"), load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first["metrics"] == second["metrics"]


def test_an_interrupted_full_precision_start_resumes_from_its_checkpoint(compose_cfg, tmp_path, caplog):
    ft = tmp_path / "ft"
    overrides = ["task=sst2", "quant=qbert", "quant.w_bits=4", *QUANT, f"finetuned_dir={ft}", "optim.epochs=2",
                 "trainer.max_steps=-1", "trainer.limit_train_batches=2", "trainer.save_checkpoints=true"]
    run(compose_cfg(overrides, output_dir=tmp_path / "a"))
    (start,) = [p for p in ft.iterdir() if p.is_dir()]
    first = json.loads((start / "results.json").read_text())
    assert first["steps"] == 4 and first["resumed_from"] is None
    (start / "results.json").unlink()  # as if killed after its last epoch's checkpoint
    with caplog.at_level("INFO"):
        run(compose_cfg(overrides, output_dir=tmp_path / "b"))
    again = json.loads((start / "results.json").read_text())
    assert "was interrupted: resuming" in caplog.text
    assert again["resumed_from"] == str(start / "checkpoints" / "last.ckpt")
    assert again["steps"] == 4 and again["metrics"] == first["metrics"]  # nothing retrained
