"""qbert inside transformers: a quantized run's ``model/`` loads back with ``from_pretrained``.

What a quantized run saves (``mark_quantized`` before ``save_pretrained``): ``config.json`` with
model type ``qbert_bert`` (a ``BertConfig``) and a ``quantization_config`` = ``{"quant_method":
"qbert", "format": "fake_quant", "plan": <the quantization map>}``; the weights are the latent
float weights and the activation ranges, exactly as qbert trains them.

* After ``import qbert``: ``AutoConfig`` knows ``qbert_bert``, the ``AutoModelFor...`` classes map
  it to BERT's, and transformers hands the ``quantization_config`` to the quantizer registered here
  for ``"qbert"``, which applies the plan (``quantize_``) before the weights load: the run's
  fake-quantized model, the run's logits.
* Without qbert: transformers does not know the model type and raises. (An unknown
  ``quant_method`` alone would only log a warning and load the latent floats: a different model
  under the same name.)
* A packed model (``qbert.export.load_packed``) carries the ``"qbert_packed"`` quantizer, which is
  not serializable: its ``save_pretrained`` raises instead of writing integer codes a float
  loader would misread. It is saved with ``qbert-export``.

``register()`` runs when transformers is imported after qbert (see ``qbert/__init__.py``).
"""

from __future__ import annotations

import logging
from typing import Any

import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

log = logging.getLogger(__name__)

MODEL_TYPE = "qbert_bert"
QUANT_METHOD = "qbert"
PACKED_METHOD = "qbert_packed"
FORMATS = ("fake_quant",)


class QBertConfig(BertConfig):
    """A BERT config whose model is fake-quantized by qbert (see ``quantization_config``)."""

    model_type = MODEL_TYPE


class QBertModel(BertModel):
    config_class = QBertConfig


class QBertForSequenceClassification(BertForSequenceClassification):
    config_class = QBertConfig


class QBertForTokenClassification(BertForTokenClassification):
    config_class = QBertConfig


class QBertForQuestionAnswering(BertForQuestionAnswering):
    config_class = QBertConfig


AUTO_CLASSES = ((AutoModel, QBertModel), (AutoModelForSequenceClassification, QBertForSequenceClassification),
                (AutoModelForTokenClassification, QBertForTokenClassification),
                (AutoModelForQuestionAnswering, QBertForQuestionAnswering))


class QBertQuantizationConfig(QuantizationConfigMixin):
    """``quantization_config`` of a qbert model: the plan that rebuilds it."""

    def __init__(self, plan: dict | None = None, format: str = "fake_quant", quant_method: str = QUANT_METHOD,
                 **kwargs: Any) -> None:
        if format not in FORMATS:
            raise ValueError(f"quantization_config.format={format!r}: this qbert reads {list(FORMATS)}")
        if not plan:
            raise ValueError("quantization_config.plan is empty: a qbert model needs the plan that quantized it")
        self.quant_method = QUANT_METHOD
        self.plan = plan
        self.format = format

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": QUANT_METHOD, "format": self.format, "plan": self.plan}


class QBertHfQuantizer(HfQuantizer):
    """Applies the stored plan before the weights load; the model is then qbert's QAT model."""

    requires_calibration = False

    def _process_model_before_weight_loading(self, model, **kwargs):
        from qbert.quant import plan_from_dict, quantize_
        quantize_(model, plan_from_dict(self.quantization_config.plan))
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        return model

    def is_serializable(self, safe_serialization=None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True


class PackedQuantizationConfig(QuantizationConfigMixin):
    def __init__(self, source: str = "", **kwargs: Any) -> None:
        self.quant_method = PACKED_METHOD
        self.source = source

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": PACKED_METHOD, "source": self.source}


class PackedHfQuantizer(HfQuantizer):
    """Marks a model built by ``load_packed``: its integer modules have no transformers format."""

    requires_calibration = True

    def is_serializable(self, safe_serialization=None) -> bool:
        log.warning("a packed qbert model (%s) is not saved with save_pretrained: its modules hold "
                    "integer codes that a float loader would misread. Keep the packed file, or export "
                    "the run again with qbert-export.", self.quantization_config.source)
        return False

    @property
    def is_trainable(self) -> bool:
        return False


def register() -> None:
    """Teach transformers qbert's model type and quantizers (idempotent)."""
    if MODEL_TYPE not in transformers.CONFIG_MAPPING:
        AutoConfig.register(MODEL_TYPE, QBertConfig)
        for auto, cls in AUTO_CLASSES:
            auto.register(QBertConfig, cls)
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(QBertQuantizationConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(QBertHfQuantizer)
    if PACKED_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(PACKED_METHOD)(PackedQuantizationConfig)
    if PACKED_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(PACKED_METHOD)(PackedHfQuantizer)


def mark_quantized(model, plan: dict) -> None:
    """Give a fake-quantized model the config that makes ``save_pretrained`` + ``from_pretrained``
    rebuild it: model type ``qbert_bert`` and the plan as ``quantization_config``."""
    register()
    if not isinstance(model.config, BertConfig):
        raise TypeError(f"qbert saves BERT-family models; this one has a {type(model.config).__name__}")
    fields = {k: v for k, v in model.config.to_dict().items() if k not in ("model_type", "transformers_version")}
    config = QBertConfig(**fields)
    config.quantization_config = QBertQuantizationConfig(plan=plan)
    model.config = config


def mark_packed(model, source: str) -> None:
    """``save_pretrained`` of a packed model raises (see module docstring)."""
    register()
    quantizer = PackedHfQuantizer(PackedQuantizationConfig(source=source))
    model.hf_quantizer = quantizer
    model.config.quantization_config = quantizer.quantization_config


# Whoever imports this module first (qbert's post-import hook or qbert.export) gets it registered.
register()
