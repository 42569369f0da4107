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


def _edit_metadata(path, edit):
    """Rewrite the file's header with ``edit(metadata)`` applied, tensor bytes untouched (a hand edit)."""
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header["__metadata__"]
    edit(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _edit_json_field(key, edit):
    def apply(meta):
        value = json.loads(meta[key])
        edit(value)
        meta[key] = json.dumps(value)
    return apply


@pytest.mark.parametrize("field, edit", [
    ("config.hidden_act", _edit_json_field("config", lambda c: c.update(hidden_act="relu"))),
    ("config.layer_norm_eps", _edit_json_field("config", lambda c: c.update(layer_norm_eps=1e-5))),
    ("config.id2label.0", _edit_json_field("config", lambda c: c["id2label"].update({"0": "positive"}))),
    (".a_bits", _edit_json_field("modules", lambda m: m[sorted(m)[-1]].update(a_bits=4))),
    ("architecture", lambda meta: meta.update(architecture="BertForTokenClassification")),
])
def test_edited_metadata_refused_naming_the_field(q8_file, field, edit):
    _edit_metadata(q8_file, edit)
    with pytest.raises(PackedFileError, match="metadata changed since it was written") as err:
        load_packed(q8_file)
    assert field in str(err.value) and str(q8_file) in str(err.value)


def test_added_or_removed_metadata_field_refused(q8_file):
    _edit_metadata(q8_file, _edit_json_field("config", lambda c: c.update(extra_layer_flag=True)))
    with pytest.raises(PackedFileError, match="added \\['config.extra_layer_flag'\\]"):
        load_packed(q8_file)


def test_file_without_metadata_checksums_refused(q8_file):
    def downgrade(meta):
        meta["format"] = "qbert.packed/1"
        del meta["metadata_sha256"]
    _edit_metadata(q8_file, downgrade)
    with pytest.raises(PackedFileError, match="older qbert"):
        load_packed(q8_file)


def test_unedited_header_rewrite_still_loads(q8_file):
    _edit_metadata(q8_file, lambda meta: None)  # same metadata, header re-serialised
    load_packed(q8_file)
