"""Model configuration: defaults, variant presets and validation.

A model is described by an ``ml_collections.ConfigDict`` (or any mapping) with
the fields of :func:`default_config`.  :func:`resolve` turns it into a frozen
:class:`ModelSpec`, filling the switches that the variant implies and checking
that the configuration can be honoured.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections

VARIANTS = ("ste", "ste_tpca", "rtpca")

# Switches each variant implies unless the config sets them explicitly.
_VARIANT_SWITCHES = {
    "ste": dict(tpca=False, xlr=False, double_temporal_output=False),
    "ste_tpca": dict(tpca=True, xlr=False, double_temporal_output=False),
    "rtpca": dict(tpca=True, xlr=True, double_temporal_output=True),
}


def default_config() -> ml_collections.ConfigDict:
    """All model fields with the official RTPCA defaults at the paper size."""
    c = ml_collections.ConfigDict()
    c.variant = "rtpca"
    c.num_frames = 243
    c.num_joints = 17
    c.in_dim = 2
    c.out_dim = 3
    c.width = 512  # C, ``embed_dim_ratio`` in the official code
    c.depth = 8
    c.num_heads = 8
    c.mlp_ratio = 2.0
    c.qkv_bias = True
    c.drop_rate = 0.0  # dropout after the embeddings and in MLP / projection
    c.attn_drop_rate = 0.0  # dropout on attention probabilities
    c.drop_path_rate = 0.1  # stochastic depth, linspace(0, rate, depth)
    # TPCA pyramid.
    c.pyramid_ratio = 2
    c.pyramid_levels = 3
    # XLR: length the previous block's keys/values are pooled to; None means
    # the coarsest pyramid length (243 // 2**3 = 30 in the paper).
    c.xlr_len = ml_collections.FieldReference(None, field_type=int)
    # Variant switches; None means "as the variant implies".
    c.tpca = ml_collections.FieldReference(None, field_type=bool)
    c.xlr = ml_collections.FieldReference(None, field_type=bool)
    # Official RTPCA quirk: after Temporal_norm of temporal blocks 1..D-1 the
    # official loop runs ``x_list.append(x); x += x_list[-1]`` which doubles x.
    c.double_temporal_output = ml_collections.FieldReference(None, field_type=bool)
    # Official RTPCA: a temporal block hands on the concatenation of its own
    # keys/values and the pooled ones it received (F + xlr_len tokens).  False
    # hands on only its own F keys/values.
    c.xlr_pass_concatenated = True
    # LayerNorm epsilons of the official code.
    c.block_ln_eps = 1e-6  # norm1/norm2 of blocks, Spatial_norm, Temporal_norm
    c.head_ln_eps = 1e-5  # head.0
    c.pyramid_ln_eps = 1e-5  # time-axis pyramid norms and norm4
    c.gelu_approximate = False  # the official GELU is the exact erf form
    # Execution.
    c.dtype = ml_collections.FieldReference(None, field_type=str)  # compute dtype
    c.param_dtype = "float32"
    # explicit: softmax attention with a gradient that saves the
    # probabilities once (model/ops.py); xla | cudnn: jax.nn.dot_product_attention
    # with that implementation (cudnn pads odd sequence lengths by one masked
    # key; shapes, dtypes and backends cuDNN does not take get the explicit
    # form: model/attention.py); auto: cudnn on NVIDIA GPUs (bf16 paper
    # preset on an H100: 11 % less time per step, 24 % less memory),
    # explicit elsewhere; einsum: the explicit form under plain autodiff.
    c.attention_impl = "auto"
    # cuDNN (``auto``/``cudnn`` on an NVIDIA GPU) only for attention over at
    # least this many tokens; shorter sequences take the explicit form.  0:
    # cuDNN for every sequence.  On an H100 the spatial stream's 17 joints
    # (padded to 18) ran through cuDNN's 64-row tiles at 4.5 TFLOP/s, 11 % of
    # the paper preset's bf16 step (README, "Paper size on a GPU"); a value
    # such as 32 keeps cuDNN for the 243 frames and not for the joints.  Not
    # yet measured on a GPU, hence 0.
    c.attention_cudnn_min_length = 0
    # Rematerialisation: keep only each block's input for the backward pass
    # and run the block again there (model/blocks.py: rematerialised).
    # remat_blocks: "all", or only the "temporal" blocks, or only the
    # temporal blocks' attention sublayers, "temporal_attention".  Paper
    # preset at batch 1 on XLA:CPU: 38%, 61% and 69% of the step's temporary
    # memory without remat (0.98, 1.56, 1.76 against 2.56 GiB); on a 2-core
    # CPU the step without remat already needs less host memory than the
    # PyTorch original at batch 1, 2 and 4 (README, "Paper size on a CPU").
    c.remat = False
    c.remat_blocks = "all"
    # How the temporal stream sees the [B, F, J, C] activations: "transposed"
    # moves them to B*J sequences of F frames and back around each temporal
    # block; "grouped" attends along F in place with the joints folded into
    # the head axis (no transposes).  Same outputs; on a 2-core CPU "grouped"
    # measured 15% faster for paper-size inference and 5-10% slower for
    # training steps (README, Benchmarks), hence the default.
    c.temporal_layout = "transposed"
    return c


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    variant: str
    num_frames: int
    num_joints: int
    in_dim: int
    out_dim: int
    width: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    drop_rate: float
    attn_drop_rate: float
    drop_path_rate: float
    pyramid_ratio: int
    pyramid_levels: int
    xlr_len: int
    tpca: bool
    xlr: bool
    double_temporal_output: bool
    xlr_pass_concatenated: bool
    block_ln_eps: float
    head_ln_eps: float
    pyramid_ln_eps: float
    gelu_approximate: bool
    dtype: Any
    param_dtype: Any
    attention_impl: str
    attention_cudnn_min_length: int
    temporal_layout: str
    remat: bool
    remat_blocks: str

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    @property
    def pyramid_lengths(self) -> tuple[int, ...]:
        """Time lengths F, F//r, F//r^2, ... down to the coarsest level."""
        return pyramid_lengths(self.num_frames, self.pyramid_ratio, self.pyramid_levels)


def pyramid_lengths(frames: int, ratio: int, levels: int) -> tuple[int, ...]:
    lengths = [frames]
    for _ in range(levels):
        lengths.append(lengths[-1] // ratio)
    return tuple(lengths)


def upsample_kernel(l_in: int, l_out: int, ratio: int) -> int:
    """Kernel of a stride-``ratio`` transposed conv mapping l_in -> l_out exactly."""
    return l_out - ratio * (l_in - 1)


def as_dict(config: Mapping[str, Any] | ml_collections.ConfigDict | "ModelSpec") -> dict:
    """A model config (ConfigDict, mapping or resolved spec) as a plain dict;
    a spec's dtypes become their names."""
    if isinstance(config, ml_collections.ConfigDict):
        return config.to_dict()
    if isinstance(config, ModelSpec):
        import numpy as np

        d = dataclasses.asdict(config)
        for key in ("dtype", "param_dtype"):
            d[key] = None if d[key] is None else np.dtype(d[key]).name
        return d
    return dict(config)


def resolve(config: Mapping[str, Any] | ml_collections.ConfigDict) -> ModelSpec:
    """Validate a model config and fill variant-implied switches.

    Raises:
      ValueError: naming the field and why it cannot be honoured.
    """
    import jax.numpy as jnp

    given = as_dict(config)
    defaults = default_config().to_dict()
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"model config: unknown field(s) {unknown}; known: {sorted(defaults)}")
    merged = {**defaults, **given}

    variant = merged["variant"]
    if variant not in VARIANTS:
        raise ValueError(f"model.variant={variant!r}: expected one of {VARIANTS}")
    for key, value in _VARIANT_SWITCHES[variant].items():
        if merged[key] is None:
            merged[key] = value

    for key in ("num_frames", "num_joints", "in_dim", "out_dim", "width", "depth", "num_heads"):
        if not isinstance(merged[key], int) or merged[key] < 1:
            raise ValueError(f"model.{key}={merged[key]!r}: expected a positive integer")
    if merged["width"] % merged["num_heads"]:
        raise ValueError(
            f"model.width={merged['width']} is not divisible by model.num_heads={merged['num_heads']}"
        )
    if merged["mlp_ratio"] <= 0 or int(merged["width"] * merged["mlp_ratio"]) < 1:
        raise ValueError(f"model.mlp_ratio={merged['mlp_ratio']!r}: expected a positive ratio")
    for key in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
        if not 0.0 <= merged[key] < 1.0:
            raise ValueError(f"model.{key}={merged[key]!r}: expected a rate in [0, 1)")
    if merged["xlr"] and not merged["tpca"]:
        raise ValueError("model.xlr=True needs model.tpca=True (XLR refines the TPCA keys/values)")

    ratio, levels, frames = merged["pyramid_ratio"], merged["pyramid_levels"], merged["num_frames"]
    if merged["tpca"]:
        if ratio not in (2, 3, 4):
            raise ValueError(f"model.pyramid_ratio={ratio!r}: expected 2, 3 or 4")
        if levels not in (1, 2, 3):
            raise ValueError(f"model.pyramid_levels={levels!r}: expected 1, 2 or 3")
        lengths = pyramid_lengths(frames, ratio, levels)
        if lengths[-1] < 2:
            raise ValueError(
                f"model.num_frames={frames} is too short for a {levels}-level pyramid of ratio "
                f"{ratio}: lengths {list(lengths)}; the coarsest level needs at least 2 frames "
                f"(a time-axis LayerNorm over 1 frame is constant), so num_frames >= "
                f"{2 * ratio ** levels}"
            )
    if merged["xlr"]:
        if merged["xlr_len"] is None:
            merged["xlr_len"] = pyramid_lengths(frames, ratio, levels)[-1]
        if not isinstance(merged["xlr_len"], int) or not 1 <= merged["xlr_len"] <= frames:
            raise ValueError(
                f"model.xlr_len={merged['xlr_len']!r}: expected an integer in [1, num_frames={frames}]"
            )
    else:
        merged["xlr_len"] = 0
    if merged["attention_impl"] not in ("auto", "explicit", "xla", "cudnn", "einsum"):
        raise ValueError(
            f"model.attention_impl={merged['attention_impl']!r}: expected auto, explicit, xla, cudnn or einsum"
        )
    n = merged["attention_cudnn_min_length"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"model.attention_cudnn_min_length={n!r}: expected an integer >= 0")
    if merged["temporal_layout"] not in ("transposed", "grouped"):
        raise ValueError(f"model.temporal_layout={merged['temporal_layout']!r}: expected transposed or grouped")
    if merged["remat_blocks"] not in ("all", "temporal", "temporal_attention"):
        raise ValueError(
            f"model.remat_blocks={merged['remat_blocks']!r}: expected all, temporal or temporal_attention"
        )
    for key in ("dtype", "param_dtype"):
        if merged[key] is not None:
            try:
                merged[key] = jnp.dtype(merged[key])
            except TypeError as e:
                raise ValueError(f"model.{key}={merged[key]!r}: not a dtype") from e
    return ModelSpec(**merged)
