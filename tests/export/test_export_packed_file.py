"""Bad packed files are refused with an error naming the file and what is wrong."""

from __future__ import annotations

import json

import pytest

from qbert.export import PackedFileError, load_packed
from qbert.export.exporter import packed_tensors
from qbert.export.packed_file import read_packed, write_packed
from qbert.quant.surgery import quantization_map


def test_truncated_file_refused(q8_file):
    data = q8_file.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        q8_file.write_bytes(data[:cut])
        with pytest.raises(PackedFileError, match="truncated") as err:
            load_packed(q8_file)
        assert str(q8_file) in str(err.value)


def test_trailing_bytes_refused(q8_file):
    q8_file.write_bytes(q8_file.read_bytes() + b"\0")
    with pytest.raises(PackedFileError, match="unexpected bytes"):
        load_packed(q8_file)


def test_corrupted_tensor_refused_naming_it(q8_file):
    _, meta = read_packed(q8_file)
    data = bytearray(q8_file.read_bytes())
    data[-3] ^= 0xFF  # a byte of the last tensor's data
    q8_file.write_bytes(bytes(data))
    with pytest.raises(PackedFileError, match="corrupted \\(sha256 mismatch\\)") as err:
        load_packed(q8_file)
    assert "tensor '" in str(err.value)


def test_corrupted_header_refused(q8_file):
    data = bytearray(q8_file.read_bytes())
    data[9] = ord("#")
    q8_file.write_bytes(bytes(data))
    with pytest.raises(PackedFileError, match="header"):
        load_packed(q8_file)


def _rewrite(model, path, **changes):
    tensors, modules = packed_tensors(model)
    parts = {"config": model.config.to_dict(), "plan": quantization_map(model), "modules": modules}
    parts.update(changes)
    return write_packed(path, tensors, type(model).__name__, parts["config"], parts["plan"], parts["modules"])


def test_plan_that_does_not_match_the_config_refused(q8_model, tmp_path):
    config = {**q8_model.config.to_dict(), "num_hidden_layers": 1}  # the plan names layer 1 too
    path = _rewrite(q8_model, tmp_path / "bad.st", config=config)
    with pytest.raises(PackedFileError, match="plan does not match its config"):
        load_packed(path)


def test_widths_that_do_not_match_the_plan_refused(q8_model, tmp_path):
    plan = quantization_map(q8_model)
    name = "bert.encoder.layer.0.attention.self.key"
    plan[name] = {**plan[name], "w_bits": 4}
    with pytest.raises(PackedFileError, match=f"module '{name}'.*widths"):
        load_packed(_rewrite(q8_model, tmp_path / "bad.st", plan=plan))


def test_hidden_size_mismatch_refused(q8_model, tmp_path):
    config = {**q8_model.config.to_dict(), "intermediate_size": 192}
    with pytest.raises(PackedFileError, match="shape"):
        load_packed(_rewrite(q8_model, tmp_path / "bad.st", config=config))


def test_not_a_packed_file_refused(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(PackedFileError, match="not a qbert packed file"):
        load_packed(path)
    with pytest.raises(PackedFileError, match="no such"):
        load_packed(tmp_path / "missing.st")


def test_metadata_round_trip(q8_model, q8_file):
    _, meta = read_packed(q8_file)
    assert meta["plan"] == json.loads(json.dumps(quantization_map(q8_model)))
    assert meta["config"]["num_hidden_layers"] == 2 and meta["architecture"] == "BertForSequenceClassification"
