"""Every config schema of qbert, registered in Hydra's ConfigStore.

The YAML files under ``conf/`` only choose values; the schemas here fix the keys and types, so a
typo or a wrong type fails when Hydra composes the config, naming the key. Range checks live in
``__post_init__`` and run once, when ``validate(cfg)`` turns the composed config into these
dataclasses (Hydra itself never calls ``__post_init__``).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


def _conf_dir() -> Path:
    """The Hydra configs: inside the installed package (a wheel: ``qbert/conf``), else the
    top-level ``conf/`` of the checkout this code runs from (editable install, PYTHONPATH)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"qbert's configs are missing: neither {package / 'conf'} (an installed "
                            f"package) nor {package.parent / 'conf'} (a checkout) holds train.yaml")


CONF_DIR = _conf_dir()

TASK_KINDS = ("classification", "token_classification", "question_answering")
DATA_SOURCES = ("sample", "local", "hub")
ALLOCATIONS = ("rule", "ilp", "manual")  # qbert_mp: the paper's rule, an integer program, or given widths
SENSITIVITIES = ("eigenvalue", "trace")
SCALE_GRADS = ("lsq", "lsq_unscaled")  # qbert.quant.learned; MKQ-BERT's own rule was not available
ABLATION_MODULES = ("word_embedding", "position_embedding", "self_attention", "ffn")
QUANT_BITS = (2, 3, 4, 5, 6, 7, 8, 32)  # 32 = keep full precision
W_RANGES = ("minmax", "percentile", "mse")  # = qbert.quant.primitives.WEIGHT_RANGE_METHODS (no torch here)
W_GRIDS = ("restricted", "full", "asymmetric")  # = qbert.quant.primitives.GRIDS
A_RANGES = ("ema", "ema_asym", "per_token", "per_token_asym")  # = qbert.quant.input_ranges.A_RANGES
A_SITES = ("qkv", "attn_out", "ffn_in", "ffn_out")  # = qbert.quant.input_ranges.SITES
LOGGERS = ("none", "csv", "wandb")
EVAL_CHECKPOINTS = ("last", "best")
VALIDATE_MODES = ("auto", "always", "never")
HIDDEN_LOSSES = ("mse", "normalized_mse")  # distillation of hidden states (qbert.train.distill)
ATTENTION_LOSSES = ("mse", "kl")  # distillation of attention probabilities
QAT_STARTS = ("finetuned", "pretrained")  # what a quantized run's training starts from


def added_field(default: Any, neutral: Any) -> Any:
    """A field added after results already existed. ``neutral`` is the value that reproduces
    those results; the config hash leaves the field out while it holds that value, so adding a
    field never invalidates earlier work, while any other value (a new default included) is hashed.
    A section (a dataclass) default is copied for each instance."""
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda: dataclasses.replace(default), metadata={"hash_neutral": neutral})
    return field(default=default, metadata={"hash_neutral": neutral})


def hash_neutral_values(schema: type | None = None, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> neutral value of every ``added_field`` in the schema tree."""
    import dataclasses
    import typing

    schema = schema or RunConfig
    types = typing.get_type_hints(schema)
    found: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        if "hash_neutral" in f.metadata:
            found[prefix + f.name] = f.metadata["hash_neutral"]
        if dataclasses.is_dataclass(types[f.name]):
            found.update(hash_neutral_values(types[f.name], f"{prefix}{f.name}."))
    return found


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"config key '{key}': {message}")


def _one_of(value: Any, allowed: tuple, key: str) -> None:
    _check(value in allowed, key, f"got {value!r}, expected one of {list(allowed)}")


@dataclass
class SplitsConfig:
    """Which split trains, which picks the best checkpoint, which are reported."""

    train: str = MISSING
    val: str = MISSING
    test: List[str] = field(default_factory=list)


@dataclass
class TaskConfig:
    name: str = MISSING
    kind: str = MISSING
    num_labels: int = 2
    metric: str = MISSING  # the metric monitored for the best checkpoint, e.g. "accuracy"
    max_length: int = 128
    doc_stride: int = 128  # question answering: overlap between context windows
    n_best: int = 20  # question answering: candidate starts/ends per window
    max_answer_length: int = 30
    local_splits: SplitsConfig = field(default_factory=SplitsConfig)
    hub_splits: SplitsConfig = field(default_factory=SplitsConfig)
    # Shown in results and reports where the local protocol differs from the paper's.
    local_protocol_note: str = ""

    def __post_init__(self) -> None:
        _one_of(self.kind, TASK_KINDS, "task.kind")
        _check(self.num_labels >= 1, "task.num_labels", f"must be >= 1, got {self.num_labels}")
        _check(16 <= self.max_length <= 512, "task.max_length", f"must be in [16, 512], got {self.max_length}")
        _check(self.kind != "question_answering" or 0 < self.doc_stride < self.max_length, "task.doc_stride",
               f"must be in (0, max_length={self.max_length}), got {self.doc_stride}")
        _check(self.n_best >= 1, "task.n_best", f"must be >= 1, got {self.n_best}")
        _check(self.max_answer_length >= 1, "task.max_answer_length", "must be >= 1")


@dataclass
class DataConfig:
    source: str = "sample"  # sample: slices committed in the repo; local: a folder; hub: datasets ids
    root: Optional[str] = None  # folder in the layout of ../shared/data, for source=local
    max_train_samples: Optional[int] = None  # cut each split after loading (None = all)
    max_eval_samples: Optional[int] = None
    num_workers: int = 0
    # Training batches of similar length in shuffled order (qbert.data.sampling): far less padding
    # than uniformly random batches. false: uniformly shuffled batches.
    group_by_length: bool = added_field(True, neutral=False)
    # Tokenized features are cached here, keyed by task settings, tokenizer and data file (null:
    # tokenize every time). Where, not what: not part of the config hash.
    cache_dir: Optional[str] = "outputs/cache/features"
    # Hold out N examples of the training split (one draw, the same for every seed and row), train
    # on the rest, and validate and report on them instead of the task's val/test splits: for
    # choosing a recipe without ever looking at the split a table reports. null: off.
    holdout: Optional[int] = added_field(None, neutral=None)

    def __post_init__(self) -> None:
        _one_of(self.source, DATA_SOURCES, "data.source")
        _check(self.holdout is None or self.holdout > 0, "data.holdout", f"must be positive or null, got {self.holdout}")
        _check(self.source != "local" or bool(self.root), "data.root",
               "data.source=local needs data.root (e.g. data.root=../shared/data)")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            _check(value is None or value > 0, f"data.{key}", f"must be positive or null, got {value}")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")


@dataclass
class ModelConfig:
    name: str = MISSING
    # Where the weights come from, first match wins: path (a local folder), package (a Python
    # package shipping a `model/` folder), hub_id (Hugging Face hub, needs network), or random
    # initialisation from the architecture below when all three are empty (model=tiny).
    path: Optional[str] = None
    package: Optional[str] = None
    hub_id: Optional[str] = None
    tokenizer: Optional[str] = None  # folder or hub id; defaults to the weights' location
    tokenizer_package: Optional[str] = None
    # Architecture: what a random model is built with, and checked against loaded weights.
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 64
    # "eager" is needed for Hessian-vector products (SDPA has no double backward on CPU).
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        _check(self.hidden_size % self.num_heads == 0, "model.hidden_size",
               f"{self.hidden_size} is not divisible by model.num_heads={self.num_heads}")
        _one_of(self.attn_implementation, ("eager", "sdpa"), "model.attn_implementation")


@dataclass
class InputSiteModes:
    """quant.a_sites: an input range mode per site (null: quant.a_range); see QuantConfig."""

    qkv: Optional[str] = None
    attn_out: Optional[str] = None
    ffn_in: Optional[str] = None
    ffn_out: Optional[str] = None


@dataclass
class InputSiteBits:
    """quant.a_site_bits: an input width per site (null: quant.a_bits); see QuantConfig."""

    qkv: Optional[int] = None
    attn_out: Optional[int] = None
    ffn_in: Optional[int] = None
    ffn_out: Optional[int] = None


def set_sites(section: Any) -> dict[str, Any]:
    """The sites an ``InputSiteModes``/``InputSiteBits`` (or its dict in a resolved config) sets."""
    values = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section or {})
    return {site: value for site, value in values.items() if value is not None}


NO_SITES = {site: None for site in A_SITES}  # a_sites / a_site_bits at their defaults, as hashed


@dataclass
class QuantConfig:
    """How to quantize: ``method`` picks a method of ``qbert/methods/`` (each declares which of the
    fields below it reads; any other field must keep its default, or validation refuses it)."""

    # none | directq (one range per matrix) | qbert (group-wise) | qbert_mp (group-wise + Hessian
    # mixed precision) | ablation | q8bert (8-bit QAT, EMA ranges) | q8bert_ptq (8-bit dynamic
    # post-training) | mkq (learned scales, W4A4)
    method: str = "none"
    w_bits: int = 8  # encoder Linear weights
    e_bits: int = 8  # word and position embeddings
    a_bits: int = 8  # inputs of every quantized Linear (EMA ranges)
    groups: int = 128  # row groups per matrix (qbert, qbert_mp, ablation, mkq)
    heads_as_groups: bool = False  # Q/K/V: one group per attention head instead of `groups`
    # Q/K/V: groups_per_head row groups inside each head (num_heads x groups_per_head per matrix,
    # each a run of head_dim / groups_per_head rows, so none straddles two heads), instead of
    # `groups` contiguous groups (on MiniLM-L6, 128 groups of 3 rows cross the 32-row heads).
    # 1 = heads_as_groups. Must divide the head size. null: as `groups` / heads_as_groups say.
    groups_per_head: Optional[int] = added_field(None, neutral=None)
    # Symmetric ranges (no zero point) for the inputs (activations), and for the weights unless
    # w_grid says otherwise; false: asymmetric inputs and weights.
    symmetric: bool = True
    # How each weight group's range is chosen (qbert, qbert_mp, directq, ablation; every weight
    # they quantize, embedding tables included). minmax: max |w| (min/max when asymmetric), the
    # paper's; percentile: per group the w_percentile-th and (100 - w_percentile)-th percentiles
    # (nearest rank: with 99.99 and a group under 10,000 weights, the max itself); mse: per
    # group, the clipping ratio (100 from 1.0 down to 0.2 of the minmax range) of least squared
    # error ||Q(W) - W||^2 on the actual grid, searched at the first QAT step and every 100
    # steps after (a search of all MiniLM-L6 weights costs 30% to 120% of a QAT step; in
    # between, the ratio times the current minmax range follows the weight). On MiniLM-L6's 36
    # encoder weights, 2 bits, 128 groups: relative error ||Q(W) - W|| / ||W|| 0.92 with minmax,
    # 0.47 with mse (restricted grid); see README.md for the table.
    w_range: str = added_field("minmax", neutral="minmax")
    w_percentile: float = added_field(99.99, neutral=99.99)  # w_range=percentile only
    # The weights' integer grid: restricted = symmetric [-(2^(b-1)-1), 2^(b-1)-1] (3 levels at
    # 2 bits: {-s, 0, s}, the paper's); full = symmetric [-2^(b-1), 2^(b-1)-1] (all 2^b levels,
    # step max|w| / 2^(b-1)); asymmetric = [0, 2^b-1] with a zero point per group (inputs
    # stay as `symmetric` says). null: restricted when symmetric=true, asymmetric when false.
    # symmetric=false with w_grid=restricted or full is refused as a contradiction.
    w_grid: Optional[str] = added_field(None, neutral=None)
    # How the inputs of the encoder Linears (activations) take their ranges (qbert.quant.
    # input_ranges): ema = one EMA range per tensor on the grid `symmetric` gives (Q8BERT's, and
    # every run's before this key); ema_asym = the same, always asymmetric (min/max + zero point;
    # weights keep their own grid); per_token = each token's own range, computed at every
    # forward, on the grid `symmetric` gives; per_token_asym = per-token, always asymmetric.
    a_range: str = added_field("ema", neutral="ema")
    # Per input site, another mode or width than a_range / a_bits (null: those). Sites: qkv (the
    # Q/K/V input), attn_out (attention output projection), ffn_in (FFN input projection), ffn_out
    # (FFN output projection: the GELU output, a8 error 8-20% per tensor on MiniLM-L6), e.g.
    # quant.a_sites.ffn_out=per_token_asym quant.a_site_bits.ffn_out=8.
    a_sites: InputSiteModes = added_field(InputSiteModes(), neutral=NO_SITES)
    a_site_bits: InputSiteBits = added_field(InputSiteBits(), neutral=NO_SITES)
    module: Optional[str] = None  # ablation only: the one module kind that is quantized
    # Quantization-aware fine-tuning recipe; null = the task's optim settings. They change the
    # QAT stage only, not the full-precision start it is fine-tuned from.
    epochs: Optional[int] = None
    lr: Optional[float] = None
    # What QAT starts from. finetuned: the full-precision fine-tuned start of the same task, data
    # and seed (every table's rows: quantize, then fine-tune the quantized model); pretrained: the
    # pre-trained weights, so the quantized model is fine-tuned from scratch with the task's whole
    # recipe (quant.epochs / quant.lr null = optim's) - Q8BERT's "quantization-aware training
    # during fine-tuning", with the same training budget as the full-precision start it is compared with.
    start: str = added_field("finetuned", neutral="finetuned")
    # Post-training quantization (eval_only=true): training batches that set activation ranges;
    # for quant=mkq also the batches that initialise the learned input scales before QAT.
    calibration_batches: int = 16
    # EMA factor of activation ranges: running = ema_decay * running + (1 - ema_decay) * batch.
    ema_decay: float = 0.9
    # QAT steps computed in float before fake quantization turns on (Q8BERT's delay); the EMA
    # ranges are observed meanwhile.
    delay_steps: int = 0
    # QAT optimiser steps at most (null = quant.epochs epochs); like epochs and lr, it changes the
    # QAT stage only, so a short QAT run still starts from the fully trained full-precision model.
    max_steps: Optional[int] = None
    # mkq: gradient rule of the learned scales, and their own learning rate (null = quant.lr).
    scale_grad: str = "lsq"
    scale_lr: Optional[float] = None
    # mkq: true W4A4, the operands of the attention matmuls (Q and K of the scores, the
    # probabilities P and V of the context) quantized at a_bits too, each with a learned step
    # (P on an unsigned grid); false: only the Linear inputs (qbert/quant/attention.py). qbert-export
    # packs the operands' steps too, and its loader and ONNX graph quantize them where the matmul reads them.
    attention_operands: bool = added_field(False, neutral=False)
    # mkq: every learned asymmetric offset kept on the integer grid (offset = -zero_point * step,
    # rounded in the forward pass), as an integer kernel needs; false: LSQ+'s float offset.
    integer_zero_points: bool = added_field(False, neutral=False)
    # Hessian mixed precision (qbert_mp; the analysis itself is set in `hessian`). allocation=rule:
    # each encoder layer gets w_bits (low) or high_bits, the most sensitive ones high_bits; how
    # many: high_layers, else the most that keep the mean width <= avg_bits, else half the layers.
    # allocation=ilp: per-layer widths from bit_choices minimising sum(sensitivity x ||Q(W)-W||^2)
    # within size_budget_mb (encoder MiB, the paper's "Size w/o-e"; null = the rule's size).
    # allocation=manual: the widths in layer_bits, one per encoder layer, no analysis (controls,
    # or an allocation taken from elsewhere).
    high_bits: int = 3
    high_layers: Optional[int] = None
    avg_bits: Optional[float] = None
    allocation: str = "rule"
    size_budget_mb: Optional[float] = None
    bit_choices: List[int] = field(default_factory=lambda: [2, 3, 4, 8])
    layer_bits: Optional[List[int]] = None

    def __post_init__(self) -> None:
        from qbert.methods import get  # the registry: one module per method (qbert/methods/)
        get(self.method)
        _check(0.0 <= self.ema_decay < 1.0, "quant.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        _check(self.delay_steps >= 0, "quant.delay_steps", f"must be >= 0, got {self.delay_steps}")
        _check(self.scale_grad in SCALE_GRADS, "quant.scale_grad",
               f"got {self.scale_grad!r}, expected one of {list(SCALE_GRADS)} (MKQ-BERT's own scale "
               "gradient is not implemented: its definition was not available, see qbert/quant/learned.py)")
        _check(self.scale_lr is None or 0 < self.scale_lr < 1, "quant.scale_lr",
               f"must be in (0, 1) or null, got {self.scale_lr}")
        _check(self.epochs is None or self.epochs >= 1, "quant.epochs", f"must be >= 1 or null, got {self.epochs}")
        _check(self.lr is None or 0 < self.lr < 1, "quant.lr", f"must be in (0, 1) or null, got {self.lr}")
        _check(self.max_steps is None or self.max_steps >= 1, "quant.max_steps",
               f"must be >= 1 or null, got {self.max_steps}")
        _check(self.calibration_batches >= 1, "quant.calibration_batches", "must be >= 1")
        _one_of(self.start, QAT_STARTS, "quant.start")
        _check(self.start == "finetuned" or self.method != "qbert_mp" or self.allocation == "manual", "quant.start",
               "quant.start=pretrained with quant=qbert_mp: the Hessian analysis ranks the layers of the fine-tuned "
               "model, which a run from the pre-trained weights does not have; use quant.allocation=manual with "
               "quant.layer_bits, or quant.start=finetuned")
        _check(not self.integer_zero_points or not self.symmetric or self.attention_operands,
               "quant.integer_zero_points", "symmetric inputs (quant.symmetric=true) have no offset to round; "
               "set quant.symmetric=false, or quant.attention_operands=true for the probabilities' offset")
        _check(not self.attention_operands or self.a_bits < 32, "quant.attention_operands",
               "quant.a_bits=32 quantizes no activation: there is no width for the attention operands")
        for key in ("w_bits", "e_bits", "a_bits"):
            _one_of(getattr(self, key), QUANT_BITS, f"quant.{key}")
        _check(self.groups >= 1, "quant.groups", f"must be >= 1, got {self.groups}")
        _one_of(self.w_range, W_RANGES, "quant.w_range")
        _check(0.0 < self.w_percentile <= 100.0, "quant.w_percentile", f"must be in (0, 100], got {self.w_percentile}")
        _check(self.w_percentile == 99.99 or self.w_range == "percentile", "quant.w_percentile",
               f"{self.w_percentile} is read only with quant.w_range=percentile (got quant.w_range={self.w_range})")
        _check(self.w_grid is None or self.w_grid in W_GRIDS, "quant.w_grid",
               f"got {self.w_grid!r}, expected null or one of {list(W_GRIDS)}")
        _check(self.symmetric or self.w_grid not in ("restricted", "full"), "quant.w_grid",
               f"quant.w_grid={self.w_grid} is a symmetric grid but quant.symmetric=false asks for asymmetric "
               "weights and inputs: set quant.w_grid=asymmetric (or leave it null) with quant.symmetric=false, or "
               f"quant.symmetric=true for symmetric inputs with the {self.w_grid} weight grid (asymmetric inputs with "
               f"it: quant.symmetric=true quant.a_range=ema_asym)")
        self._check_inputs()
        _check(self.groups_per_head is None or self.groups_per_head >= 1, "quant.groups_per_head",
               f"must be >= 1 or null, got {self.groups_per_head}")
        _check(self.groups_per_head is None or not self.heads_as_groups, "quant.groups_per_head",
               "quant.heads_as_groups=true is quant.groups_per_head=1: set only one of them")
        if self.method == "ablation":
            _one_of(self.module, ABLATION_MODULES, "quant.module")
        _one_of(self.high_bits, QUANT_BITS[:-1], "quant.high_bits")
        _one_of(self.allocation, ALLOCATIONS, "quant.allocation")
        _check(bool(self.bit_choices), "quant.bit_choices", "must list at least one width")
        for bits in self.bit_choices:
            _one_of(bits, QUANT_BITS[:-1], "quant.bit_choices")
        _check(self.high_layers is None or self.high_layers >= 0, "quant.high_layers",
               f"must be >= 0 or null, got {self.high_layers}")
        _check(self.size_budget_mb is None or self.size_budget_mb > 0, "quant.size_budget_mb",
               f"must be > 0 or null, got {self.size_budget_mb}")
        _check((self.allocation == "manual") == bool(self.layer_bits), "quant.layer_bits",
               "set it (one width per encoder layer) exactly when quant.allocation=manual")
        for bits in self.layer_bits or []:
            _one_of(bits, QUANT_BITS[:-1], "quant.layer_bits")
        if self.method == "qbert_mp" and self.allocation == "rule":
            _check(self.high_bits > self.w_bits, "quant.high_bits",
                   f"must exceed quant.w_bits (the low width {self.w_bits}), got {self.high_bits}")
            _check(self.high_layers is None or self.avg_bits is None, "quant.avg_bits",
                   "set quant.high_layers or quant.avg_bits, not both")
            _check(self.avg_bits is None or self.w_bits <= self.avg_bits <= self.high_bits, "quant.avg_bits",
                   f"must lie in [quant.w_bits, quant.high_bits] = [{self.w_bits}, {self.high_bits}], "
                   f"got {self.avg_bits}")


    def _check_inputs(self) -> None:
        """a_range / a_sites / a_site_bits: known modes, sites and widths, and no range mode for
        an input that stays float (it would change nothing)."""
        _one_of(self.a_range, A_RANGES, "quant.a_range")
        modes, widths = set_sites(self.a_sites), set_sites(self.a_site_bits)
        for site, mode in modes.items():
            _one_of(mode, A_RANGES, f"quant.a_sites.{site}")
        for site, bits in widths.items():
            _one_of(bits, QUANT_BITS, f"quant.a_site_bits.{site}")
        width = {site: widths.get(site, self.a_bits) for site in A_SITES}
        for site, mode in modes.items():
            _check(mode == "ema" or width[site] < 32, f"quant.a_sites.{site}",
                   f"{mode} ranges for an input that stays float (width 32: quant.a_bits / quant.a_site_bits)")
        inherits = [site for site in A_SITES if site not in modes]
        _check(self.a_range == "ema" or bool(inherits), "quant.a_range",
               f"{self.a_range} applies to no input: quant.a_sites gives every site its own mode")
        _check(self.a_range == "ema" or any(width[s] < 32 for s in inherits), "quant.a_range",
               f"{self.a_range} applies to inputs {inherits}, and every one of them stays float "
               f"(quant.a_bits={self.a_bits}, quant.a_site_bits={widths})")


@dataclass
class HessianConfig:
    """Q-BERT's Hessian sensitivity analysis (used by quant=qbert_mp; see qbert/hessian/)."""

    fraction: float = 0.1  # of the training windows: the pool the runs draw their batches from
    runs: int = 10  # independent estimates per layer (each on its own batches)
    batch_size: int = 32
    # The Hessian of a run is that of the mean loss over these batches; null: as many as
    # hessian.run_fraction of the training windows fill (set exactly one of the two).
    batches_per_run: Optional[int] = 1
    # Of the training windows, each run's data, in as many full batches as fit (hessian=published:
    # 0.1, the paper's 10 % per run, drawn from hessian.fraction=1.0, so the ten runs are disjoint);
    # null: batches_per_run.
    run_fraction: Optional[float] = added_field(None, neutral=None)
    # Form each Hessian-vector product batch by batch, rebuilding and freeing each batch's graph
    # (memory of one batch, one forward + first backward per batch and step) instead of keeping
    # every batch's graph for the whole run. Same numbers; not part of the Hessian cache key.
    stream: bool = added_field(False, neutral=False)
    max_iters: int = 50  # power-iteration cap
    tol: float = 1e-3  # converged when ||Hv - lam v|| <= tol |lam| (lam then within tol of an eigenvalue)
    on_no_convergence: str = "warn"  # warn (logged with layer and run, recorded) | error
    sensitivity: str = "eigenvalue"  # eigenvalue: |mean| + std of the top eigenvalue (Q-BERT);
    #                                  trace: mean Hutchinson trace per parameter (HAWQ-v2)
    trace_samples: int = 32  # Hutchinson probes per layer and run (sensitivity=trace)
    seed: Optional[int] = None  # null: the run's seed
    cache_dir: str = "outputs/hessian"  # results keyed by weights, task, data and these settings
    plots: bool = True  # Figure 2 (eigenvalue box plot) and loss landscapes, next to the results
    landscape_layers: Optional[List[int]] = None  # null: every layer
    landscape_points: int = 15
    landscape_radius: float = 0.5  # the step along the unit top eigenvector spans [-r, r]

    def __post_init__(self) -> None:
        _check(0 < self.fraction <= 1, "hessian.fraction", f"must be in (0, 1], got {self.fraction}")
        for key in ("runs", "batch_size", "max_iters", "trace_samples"):
            _check(getattr(self, key) >= 1, f"hessian.{key}", f"must be >= 1, got {getattr(self, key)}")
        _check((self.batches_per_run is None) != (self.run_fraction is None), "hessian.run_fraction",
               f"set exactly one of hessian.batches_per_run and hessian.run_fraction (null the other), got "
               f"{self.batches_per_run} and {self.run_fraction}")
        _check(self.batches_per_run is None or self.batches_per_run >= 1, "hessian.batches_per_run",
               f"must be >= 1 or null, got {self.batches_per_run}")
        _check(self.run_fraction is None or 0 < self.run_fraction <= self.fraction, "hessian.run_fraction",
               f"must be in (0, hessian.fraction = {self.fraction}] or null, got {self.run_fraction}")
        _check(0 < self.tol < 1, "hessian.tol", f"must be in (0, 1), got {self.tol}")
        _one_of(self.on_no_convergence, ("warn", "error"), "hessian.on_no_convergence")
        _one_of(self.sensitivity, SENSITIVITIES, "hessian.sensitivity")
        _check(self.landscape_points >= 3, "hessian.landscape_points", "must be >= 3")
        _check(self.landscape_radius > 0, "hessian.landscape_radius", "must be > 0")


@dataclass
class DistillConfig:
    """Knowledge distillation from the full-precision fine-tuned model of the same task.

    Any method that trains can distil (``distill.enabled=true``); ``quant=mkq`` turns it on
    (``distill.enabled=false`` is its ablation), the other paper rows leave it off. The loss is
    ``labels_weight * task loss + logits_weight * T^2 * KL(teacher_T || student_T)`` (soft
    cross-entropy at temperature T, minus the teacher's entropy so that it is 0 at equality)
    ``+ hidden_weight * hidden term + attention_weight * attention term``, the two layer-wise
    terms as ``hidden_loss`` / ``attention_loss`` say (qbert/train/distill.py).
    """

    enabled: bool = False
    # The teacher: a full-precision run folder (or .ckpt) of this task and architecture; null =
    # the full-precision start the quantized run is fine-tuned from (init_from / finetuned_dir).
    teacher: Optional[str] = None
    temperature: float = 1.0
    logits_weight: float = 1.0
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    labels_weight: float = 1.0
    # mse: the sum over the embedding output and every layer of the MSE of the hidden states
    # (MKQ's loss so far: a few outlier dimensions of MiniLM dominate it); normalized_mse: per
    # layer, each dimension's MSE divided by the teacher's variance of that dimension in the
    # batch, averaged over dimensions, then over layers (about 2 for an unrelated student).
    hidden_loss: str = added_field("mse", neutral="mse")
    # mse: the sum over layers of the MSE of the attention probabilities (every key entry);
    # kl: per layer, KL(teacher || student) of each non-padding query's attention row, averaged
    # over heads and queries, then over layers.
    attention_loss: str = added_field("mse", neutral="mse")

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "distill.temperature", f"must be > 0, got {self.temperature}")
        _one_of(self.hidden_loss, HIDDEN_LOSSES, "distill.hidden_loss")
        _one_of(self.attention_loss, ATTENTION_LOSSES, "distill.attention_loss")
        for key in ("logits_weight", "hidden_weight", "attention_weight", "labels_weight"):
            _check(getattr(self, key) >= 0, f"distill.{key}", f"must be >= 0, got {getattr(self, key)}")
        _check(not self.enabled or self.logits_weight + self.hidden_weight + self.attention_weight > 0,
               "distill.logits_weight", "distillation with every distillation weight 0 distils nothing")
        if not self.enabled:  # a distillation setting without distillation would be silently ignored
            for f in dataclasses.fields(self):
                value = getattr(self, f.name)
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                _check(f.name == "enabled" or value == default, f"distill.{f.name}",
                       f"distill.{f.name}={value} takes effect only when distilling: add distill.enabled=true "
                       f"(or leave distill.{f.name} at its default, {default})")


@dataclass
class OptimConfig:
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    batch_size: int = 32
    eval_batch_size: int = 128
    epochs: int = 3
    grad_clip: float = 1.0
    # AdamW as one fused kernel over all parameters (CPU and CUDA): the same update, computed
    # in one pass instead of a Python loop over ~100 tensors.
    fused: bool = added_field(True, neutral=False)

    def __post_init__(self) -> None:
        _check(0 < self.lr < 1, "optim.lr", f"must be in (0, 1), got {self.lr}")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(0 <= self.warmup_ratio < 1, "optim.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _check(self.batch_size >= 1, "optim.batch_size", "must be >= 1")
        _check(self.eval_batch_size >= 1, "optim.eval_batch_size", "must be >= 1")
        _check(self.epochs >= 1, "optim.epochs", "must be >= 1")
        _check(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 disables clipping)")


@dataclass
class TrainerConfig:
    """Passed to ``lightning.Trainer``; only the settings qbert exposes."""

    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"  # "bf16-mixed" on a GPU
    deterministic: bool = True
    max_steps: int = -1  # -1: run optim.epochs epochs
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    limit_test_batches: Optional[float] = None
    val_check_interval: Optional[float] = None
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    # A training progress line in the log every this many seconds (step, loss, time left). null:
    # every 60 s when the progress bar is off, none when it is on; 0: never.
    progress_log_seconds: Optional[float] = None
    eval_checkpoint: str = "last"  # which weights are tested: last (no selection on test) or best
    save_checkpoints: bool = True
    # Validation passes during training: auto = only when something uses them (best-checkpoint
    # selection, a logger drawing the curve, or val_check_interval / limit_val_batches set);
    # always; never. They never change the trained weights, only what is logged.
    validate: str = "auto"

    def __post_init__(self) -> None:
        _one_of(self.accelerator, ("cpu", "gpu", "cuda", "auto"), "trainer.accelerator")
        _one_of(self.precision, ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"), "trainer.precision")
        _one_of(self.eval_checkpoint, EVAL_CHECKPOINTS, "trainer.eval_checkpoint")
        _one_of(self.validate, VALIDATE_MODES, "trainer.validate")
        _check(self.max_steps == -1 or self.max_steps > 0, "trainer.max_steps", "must be -1 or positive")
        _check(self.progress_log_seconds is None or self.progress_log_seconds >= 0, "trainer.progress_log_seconds",
               f"must be >= 0 (0: no progress lines) or null, got {self.progress_log_seconds}")
        if self.eval_checkpoint == "best":
            _check(self.save_checkpoints, "trainer.eval_checkpoint",
                   "best tests the best validation checkpoint, which needs trainer.save_checkpoints=true")
            _check(self.validate != "never", "trainer.eval_checkpoint",
                   "best needs validation passes to choose a checkpoint, but trainer.validate=never")
        if self.validate == "never":
            for key in ("val_check_interval", "limit_val_batches"):
                _check(getattr(self, key) is None, f"trainer.{key}", "set, but trainer.validate=never")

    def progress_seconds(self) -> float:
        """Seconds between training progress lines in the log; 0: none."""
        if self.progress_log_seconds is not None:
            return self.progress_log_seconds
        return 0.0 if self.enable_progress_bar else 60.0

    def validates(self, logger: str) -> bool:
        """Whether fit runs validation passes (see ``validate``)."""
        if self.validate != "auto":
            return self.validate == "always"
        return (self.eval_checkpoint == "best" or logger != "none"
                or self.val_check_interval is not None or self.limit_val_batches is not None)


@dataclass
class LoggerConfig:
    name: str = "none"
    project: str = "qbert"
    group: Optional[str] = None  # W&B group; defaults to the experiment name
    mode: Optional[str] = None  # W&B mode; None: online with credentials, offline without
    tags: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _one_of(self.name, LOGGERS, "logger.name")
        _check(self.mode in (None, "online", "offline", "disabled"), "logger.mode",
               f"got {self.mode!r}, expected null, online, offline or disabled")


@dataclass
class SweepConfig:
    """How a job of a multirun treats work already done (qbert/sweep/jobs.py). Not part of the
    config hash: it changes what is recomputed, never a result."""

    # Skip a job whose results.json, for the same config hash, already lies under resume_root
    # (the job's folder gets a copy, marked reused); resume an unfinished one from its
    # checkpoints/last.ckpt.
    skip_finished: bool = True
    resume_unfinished: bool = True
    resume_root: str = "outputs/multirun/${experiment_name}"
    # A failed job records error.json (message, traceback) in its folder and the sweep goes on;
    # false: the first failure stops the sweep (Hydra's own behaviour).
    isolate_failures: bool = True
    # At the end of a multirun: qbert-report on the sweep folder (table, plots, dashboard, report).
    report: bool = True


@dataclass
class RunConfig:
    task: TaskConfig = MISSING
    model: ModelConfig = MISSING
    quant: QuantConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    hessian: HessianConfig = field(default_factory=HessianConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 42
    experiment_name: str = "default"  # W&B group and sweep folder; set by experiment presets
    # Start from a fine-tuned run: its output folder or a Lightning .ckpt file.
    init_from: Optional[str] = None
    output_dir: str = "."  # filled from Hydra's run dir
    # Evaluate `init_from` without training (e.g. a post-training quantization baseline).
    eval_only: bool = False
    # Quantized runs start from the full-precision fine-tuned model of the same task, model,
    # data and seed, produced here once (or reused when already there) unless init_from is set.
    finetuned_dir: str = "outputs/finetuned"

    def __post_init__(self) -> None:
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        from qbert.methods import unread_settings
        unread = unread_settings(self.quant, self.eval_only)
        if unread:  # a setting the method would silently ignore
            raise ValueError("\n".join(unread))
        per_head, head_dim = self.quant.groups_per_head, self.model.hidden_size // self.model.num_heads
        _check(per_head is None or head_dim % per_head == 0, "quant.groups_per_head",
               f"{per_head} does not divide the head size {head_dim} (model.hidden_size / model.num_heads = "
               f"{self.model.hidden_size} / {self.model.num_heads}): the groups are equal runs of rows inside "
               f"each head, so pick a divisor of {head_dim}")
        _check(not (self.optim.fused and self.optim.grad_clip and self.trainer.precision == "16-mixed"),
               "optim.fused", "a fused AdamW unscales fp16 gradients inside its kernel, after clipping would "
               "have seen them scaled: with trainer.precision=16-mixed set optim.fused=false (or bf16-mixed)")
        if self.quant.method != "none":  # the QAT stage's recipe
            self.optim.epochs = self.quant.epochs or self.optim.epochs
            self.optim.lr = self.quant.lr or self.optim.lr
            self.trainer.max_steps = self.quant.max_steps or self.trainer.max_steps
        _check(self.init_from is None or self.quant.start == "finetuned", "quant.start",
               f"quant.start=pretrained trains from the pre-trained weights, but init_from={self.init_from!r} names "
               "a start to load: leave one of them unset")
        has_weights = (self.init_from is not None or self.quant.method != "none"  # the FP start
                       or any((self.model.path, self.model.package, self.model.hub_id)))
        _check(not self.eval_only or has_weights, "eval_only",
               "needs weights to evaluate: set init_from, a quant method or a pretrained model")
        _check(self.quant.method != "q8bert_ptq" or self.eval_only, "eval_only",
               "quant.method=q8bert_ptq is post-training quantization: it needs eval_only=true "
               "(conf/quant/q8bert_ptq.yaml sets it)")
        if self.distill.enabled:
            _check(self.quant.method != "none", "distill.enabled",
                   "distillation trains a quantized student from its full-precision start: set a quant method")
            from qbert.methods import get
            _check(get(self.quant.method).trains, "distill.enabled",
                   f"quant={self.quant.method} trains nothing (post-training only): there is no student to distil into")
            _check(not self.eval_only, "distill.enabled", "eval_only=true trains nothing to distil into")


def _cpu_precision() -> str:
    from qbert.precision import cpu_precision  # imports torch: only when a config is resolved
    return cpu_precision()


# conf/trainer/cpu.yaml: `precision: ${qbert_cpu_precision:}` (bf16-mixed where the CPU has native bf16)
OmegaConf.register_new_resolver("qbert_cpu_precision", _cpu_precision, replace=True)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys the schema does not have (added with Hydra's ``+``, which bypasses the schema): each
    with the closest known key, if any."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return []  # a free-form mapping (e.g. a plan): any key is allowed
    known = [f.name for f in dataclasses.fields(schema)]
    found = []
    for key in node.keys():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            found.append(f"config key '{prefix}{key}'" + (f" (did you mean '{prefix}{close[0]}'?)" if close else ""))
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            found += unknown_keys(child, f"{prefix}{key}.")
    return found


def validate(cfg: DictConfig) -> RunConfig:
    """Turn a composed config into typed dataclasses, running every range check once. A key the
    schema does not have is refused: it would be stored in results and read by nothing."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise ValueError("; ".join(unknown) + ": not a qbert setting, so nothing would read it (keys added with '+' skip the "
                         "schema's check); see `qbert --cfg job` for the settings")
    run = OmegaConf.to_object(cfg)
    assert isinstance(run, RunConfig), f"expected a RunConfig, got {type(run).__name__}"
    return run
