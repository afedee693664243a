"""Conversion between official PyTorch RTPCA / MixSTE weights and Flax params.

Official names (``common/model_cross.py`` of both repositories, ``module.``
prefix stripped) map one to one onto this package's parameter tree:

=================================  =========================================
official                           rtpca-jax
=================================  =========================================
Spatial_patch_to_embedding         embed (Dense, kernel transposed)
Spatial_pos_embed (1, J, C)        spatial_pos (J, C)
Temporal_pos_embed (1, F, C)       temporal_pos (F, C)
STEblocks.i / TTEblocks.i          spatial_block_i / temporal_block_i
  attn.q, attn.kv                    attn.q, attn.kv
  attn.qkv (MixSTE, fused)           attn.q = rows 0:C, attn.kv = rows C:3C
  attn.norm{k} (time LN)             attn.pyramid.pool_norm_{k}
  attn.norm4 (channel LN)            attn.pyramid.out_norm
  attn.up{j}, attn.upnorm{j}         attn.pyramid.up_{n+1-j}, up_norm_{n+1-j}
Spatial_norm, Temporal_norm        spatial_norm, temporal_norm
head.0, head.1                     head_norm, head
=================================  =========================================

The official RTPCA code also creates pyramid layers in every *spatial*
attention that its forward pass never runs; they are listed in
:func:`unused_official_keys`, ignored on reading and emitted (LayerNorms at
their PyTorch initial values, convolutions zero) on writing so that the
official model loads the result with ``strict=True``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np

from rtpca_jax.model.spec import ModelSpec, as_dict, default_config, resolve

_PREFIXES = ("module.",)


# --------------------------------------------------------------------------
# Key mapping


@dataclasses.dataclass(frozen=True)
class _Entry:
    torch_key: str
    path: tuple[str, ...]  # path into the Flax params tree
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]
    torch_shape: tuple[int, ...]


def _ident(a):
    return a


def _linear(prefix: str, path: tuple[str, ...], out_f: int, in_f: int, bias: bool = True):
    entries = [_Entry(f"{prefix}.weight", path + ("kernel",), np.transpose, np.transpose, (out_f, in_f))]
    if bias:
        entries.append(_Entry(f"{prefix}.bias", path + ("bias",), _ident, _ident, (out_f,)))
    return entries


def _norm(prefix: str, path: tuple[str, ...], size: int):
    return [
        _Entry(f"{prefix}.weight", path + ("scale",), _ident, _ident, (size,)),
        _Entry(f"{prefix}.bias", path + ("bias",), _ident, _ident, (size,)),
    ]


def _conv_t(prefix: str, path: tuple[str, ...], channels: int, k: int):
    return [
        _Entry(
            f"{prefix}.weight", path + ("kernel",),
            lambda w: np.transpose(w[:, 0, :]), lambda w: np.transpose(w)[:, None, :],
            (channels, 1, k),
        ),
        _Entry(f"{prefix}.bias", path + ("bias",), _ident, _ident, (channels,)),
    ]


def _pyramid_entries(prefix: str, path: tuple[str, ...], s: ModelSpec):
    lengths = s.pyramid_lengths
    n = s.pyramid_levels
    c = s.width
    out = []
    for k in range(1, n + 1):
        out += _norm(f"{prefix}.norm{k}", path + (f"pool_norm_{k}",), lengths[k])
    out += _norm(f"{prefix}.norm4", path + ("out_norm",), c)
    for j in range(1, n + 1):
        k = n + 1 - j  # official up{j} maps level k to level k-1
        kernel = lengths[k - 1] - s.pyramid_ratio * (lengths[k] - 1)
        out += _conv_t(f"{prefix}.up{j}", path + (f"up_{k}",), c, kernel)
        out += _norm(f"{prefix}.upnorm{j}", path + (f"up_norm_{k}",), lengths[k - 1])
    return out


def _fused_qkv(prefix: str, path: tuple[str, ...], c: int, bias: bool):
    """MixSTE's fused ``qkv`` Linear: rows 0:C queries, C:3C keys then values."""
    entries = [
        _Entry(f"{prefix}.weight", path + ("q", "kernel"), lambda w: w[:c].T, None, (3 * c, c)),
        _Entry(f"{prefix}.weight", path + ("kv", "kernel"), lambda w: w[c:].T, None, (3 * c, c)),
    ]
    if bias:
        entries += [
            _Entry(f"{prefix}.bias", path + ("q", "bias"), lambda b: b[:c], None, (3 * c,)),
            _Entry(f"{prefix}.bias", path + ("kv", "bias"), lambda b: b[c:], None, (3 * c,)),
        ]
    return entries


def _entries(s: ModelSpec, fused_qkv: bool) -> list[_Entry]:
    c, h = s.width, s.mlp_hidden
    out = _linear("Spatial_patch_to_embedding", ("embed",), c, s.in_dim)
    out.append(_Entry("Spatial_pos_embed", ("spatial_pos",), lambda a: a[0], lambda a: a[None], (1, s.num_joints, c)))
    out.append(_Entry("Temporal_pos_embed", ("temporal_pos",), lambda a: a[0], lambda a: a[None], (1, s.num_frames, c)))
    for stream, name in (("STEblocks", "spatial_block"), ("TTEblocks", "temporal_block")):
        for i in range(s.depth):
            tp, fp = f"{stream}.{i}", (f"{name}_{i}",)
            out += _norm(f"{tp}.norm1", fp + ("norm1",), c)
            if fused_qkv:
                out += _fused_qkv(f"{tp}.attn.qkv", fp + ("attn",), c, s.qkv_bias)
            else:
                out += _linear(f"{tp}.attn.q", fp + ("attn", "q"), c, c, s.qkv_bias)
                out += _linear(f"{tp}.attn.kv", fp + ("attn", "kv"), 2 * c, c, s.qkv_bias)
            out += _linear(f"{tp}.attn.proj", fp + ("attn", "proj"), c, c)
            if stream == "TTEblocks" and s.tpca:
                out += _pyramid_entries(f"{tp}.attn", fp + ("attn", "pyramid"), s)
            out += _norm(f"{tp}.norm2", fp + ("norm2",), c)
            out += _linear(f"{tp}.mlp.fc1", fp + ("mlp", "fc1"), h, c)
            out += _linear(f"{tp}.mlp.fc2", fp + ("mlp", "fc2"), c, h)
    out += _norm("Spatial_norm", ("spatial_norm",), c)
    out += _norm("Temporal_norm", ("temporal_norm",), c)
    out += _norm("head.0", ("head_norm",), c)
    out += _linear("head.1", ("head",), s.out_dim, c)
    return out


def unused_official_keys(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Official parameters the forward pass never uses, with their shapes.

    In the official RTPCA every spatial attention builds the pyramid layers
    but only temporal attention runs them.
    """
    if not spec.tpca:
        return {}
    out = {}
    for i in range(spec.depth):
        for e in _pyramid_entries(f"STEblocks.{i}.attn", (), spec):
            out[e.torch_key] = e.torch_shape
    return out


def _spec(model_config) -> ModelSpec:
    return model_config if isinstance(model_config, ModelSpec) else resolve(model_config)


def strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in state_dict.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def from_torch(state_dict: Mapping[str, Any], model_config, *, dtype=None) -> dict:
    """Flax params from an official state dict (names without ``module.``).

    Every key must be mapped or be a known-unused official parameter; any
    other key, any missing key and any shape mismatch is reported together in
    one ``ValueError``.  Arrays are cast to ``dtype`` (default: the config's
    ``param_dtype``).
    """
    s = _spec(model_config)
    dtype = np.dtype(dtype or s.param_dtype)
    sd = {k: np.asarray(v) for k, v in strip_prefix(state_dict).items()}
    fused = any(k.endswith("attn.qkv.weight") for k in sd)
    entries = _entries(s, fused)
    unused = unused_official_keys(s)
    problems = []
    expected = {e.torch_key: e.torch_shape for e in entries}
    for k in sorted(set(sd) - set(expected)):
        if k in unused:
            if tuple(sd[k].shape) != unused[k]:
                problems.append(f"shape of unused {k}: {tuple(sd[k].shape)}, expected {unused[k]}")
        else:
            problems.append(f"unexpected key {k} {tuple(sd[k].shape)}")
    for k, shape in expected.items():
        if k not in sd:
            problems.append(f"missing key {k} {shape}")
        elif tuple(sd[k].shape) != shape:
            problems.append(f"shape of {k}: {tuple(sd[k].shape)}, expected {shape}")
    if problems:
        problems = list(dict.fromkeys(problems))
        raise ValueError(
            f"state dict does not match the model config ({s.variant}, F={s.num_frames}, "
            f"C={s.width}, depth={s.depth}); {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        )
    params: dict = {}
    for e in entries:
        node = params
        for p in e.path[:-1]:
            node = node.setdefault(p, {})
        node[e.path[-1]] = np.ascontiguousarray(e.to_flax(sd[e.torch_key])).astype(dtype)
    return params


def to_torch(params: Mapping[str, Any], model_config, *, include_unused: bool = True,
             dtype=np.float32) -> dict[str, np.ndarray]:
    """Official state dict (no ``module.`` prefix) from Flax params.

    MixSTE-style configs (``variant='ste'``) get the fused ``attn.qkv``; TPCA
    configs the split ``attn.q``/``attn.kv`` of the official RTPCA.  With
    ``include_unused`` the official parameters the forward never uses are
    emitted too (LayerNorm weights 1, everything else 0), so that the official
    model loads the dict with ``strict=True``.
    """
    s = _spec(model_config)

    def get(path):
        node = params
        for p in path:
            if p not in node:
                raise ValueError(f"params lack {'/'.join(path)} needed for the official layout")
            node = node[p]
        return np.asarray(node)

    out: dict[str, np.ndarray] = {}
    fused = s.variant == "ste"
    for e in _entries(s, fused_qkv=False):
        out[e.torch_key] = np.ascontiguousarray(e.to_torch(get(e.path))).astype(dtype)
    if fused:
        for stream in ("STEblocks", "TTEblocks"):
            for i in range(s.depth):
                p = f"{stream}.{i}.attn"
                out[f"{p}.qkv.weight"] = np.concatenate([out.pop(f"{p}.q.weight"), out.pop(f"{p}.kv.weight")])
                if s.qkv_bias:
                    out[f"{p}.qkv.bias"] = np.concatenate([out.pop(f"{p}.q.bias"), out.pop(f"{p}.kv.bias")])
    if include_unused:
        for k, shape in unused_official_keys(s).items():
            is_ln_weight = re.search(r"\.(up)?norm\d\.weight$", k) is not None
            out[k] = (np.ones if is_ln_weight else np.zeros)(shape, dtype)
    return out


# --------------------------------------------------------------------------
# Config inference


def infer_config(state_dict: Mapping[str, Any], num_heads: int = 8) -> ml_collections.ConfigDict:
    """Model config read off an official state dict's keys and shapes.

    A fused ``attn.qkv`` means MixSTE (``ste``); pyramid layers in temporal
    attention mean the official RTPCA (``rtpca``: TPCA + XLR; the weights of an
    STE+TPCA model are indistinguishable, pass that variant explicitly).
    """
    sd = {k: np.asarray(v) for k, v in strip_prefix(state_dict).items()}

    def need(key):
        if key not in sd:
            raise ValueError(f"state dict lacks {key!r}; is this an official RTPCA/MixSTE checkpoint?")
        return sd[key]

    cfg = default_config()
    spos, tpos = need("Spatial_pos_embed"), need("Temporal_pos_embed")
    cfg.num_joints, cfg.width = int(spos.shape[1]), int(spos.shape[2])
    cfg.num_frames = int(tpos.shape[1])
    cfg.in_dim = int(need("Spatial_patch_to_embedding.weight").shape[1])
    cfg.out_dim = int(need("head.1.weight").shape[0])
    depth = 0
    while f"STEblocks.{depth}.norm1.weight" in sd:
        depth += 1
    if depth == 0:
        raise ValueError("state dict has no STEblocks.0.*: not an official RTPCA/MixSTE checkpoint")
    cfg.depth = depth
    cfg.num_heads = num_heads
    cfg.mlp_ratio = float(need("STEblocks.0.mlp.fc1.weight").shape[0]) / cfg.width
    if "STEblocks.0.attn.qkv.weight" in sd:
        cfg.variant = "ste"
        cfg.qkv_bias = "STEblocks.0.attn.qkv.bias" in sd
    else:
        cfg.qkv_bias = "STEblocks.0.attn.q.bias" in sd
        if "TTEblocks.0.attn.norm1.weight" in sd:
            cfg.variant = "rtpca"
            levels = 0
            while levels < 3 and f"TTEblocks.0.attn.norm{levels + 1}.weight" in sd:
                levels += 1
            l1 = int(sd["TTEblocks.0.attn.norm1.weight"].shape[0])
            ratios = [r for r in (2, 3, 4) if cfg.num_frames // r == l1]
            if not ratios:
                raise ValueError(
                    f"TTEblocks.0.attn.norm1 has {l1} steps: no pyramid ratio 2-4 maps "
                    f"{cfg.num_frames} frames onto it"
                )
            cfg.pyramid_ratio, cfg.pyramid_levels = ratios[0], levels
        else:
            cfg.variant = "ste"
    return cfg


# --------------------------------------------------------------------------
# Files


def load_torch_checkpoint(path) -> dict[str, np.ndarray]:
    """Official weights from a PyTorch file as numpy arrays, ``module.`` stripped.

    Accepts the official training dict (``model_pos``; also ``model`` or
    ``state_dict``) or a bare state dict.  Always ``torch.load(...,
    weights_only=True)``: the file can hold only tensors and plain containers,
    never code.
    """
    import os

    from rtpca_jax import storage

    path = os.fspath(path)
    if not storage.isfile(path):
        raise ValueError(f"{path}: checkpoint file not found")
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading PyTorch checkpoints needs torch: pip install '.[torch]' "
                          "(or pip install torch==2.13.0)") from e
    try:
        with storage.open_binary(path) as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle errors of many kinds
        raise ValueError(f"{path}: not a weights-only PyTorch checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:300]})") from e
    if isinstance(obj, dict):
        for key in ("model_pos", "model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(hasattr(v, "detach") for v in obj.values()):
        raise ValueError(f"{path}: no state dict found (expected 'model_pos', 'model', 'state_dict' or a "
                         f"dict of tensors)")
    return {k: v.detach().cpu().numpy() for k, v in strip_prefix(obj).items()}


def save_torch_checkpoint(state_dict: Mapping[str, np.ndarray], path, *, prefix: str = "module.",
                          epoch: int = 0, lr: float = 0.0) -> None:
    """Write the official training-checkpoint layout
    ``{'epoch', 'lr', 'optimizer': None, 'model_pos': {prefix + key: tensor}}``."""
    import io

    import torch

    from rtpca_jax import storage

    ckpt = {"epoch": int(epoch), "lr": float(lr), "optimizer": None,
            "model_pos": {prefix + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    storage.write_bytes(path, buf.getvalue())


TORCH_SUFFIXES = (".bin", ".pth", ".pt")


def model_config_of(path: str):
    """The model section stored beside a checkpoint: ``model_config.json``
    (converted model) or ``config.json`` (training work directory); None if
    neither exists."""
    from rtpca_jax import storage

    for name, key in (("model_config.json", None), ("config.json", "model")):
        p = storage.join(path, name)
        if storage.isfile(p):
            d = storage.read_json(p)
            return ml_collections.ConfigDict(d[key] if key else d)
    return None


def load_model(path: str, model_config=None):
    """``(module, params)`` for any checkpoint path: a training work directory
    (``config.json`` + ``checkpoints/``), its ``checkpoints/`` folder, a
    ``convert to-jax`` output (``model_config.json`` + ``params/``), or an
    official PyTorch ``.bin``/``.pth`` (config inferred from the weights
    unless ``model_config`` is given).  Local or remote paths alike."""
    import jax

    from rtpca_jax import checkpoints, model, storage

    path = storage.normalize(path)
    if path.endswith(TORCH_SUFFIXES) and storage.isfile(path):
        sd = load_torch_checkpoint(path)
        cfg = model_config if model_config is not None else infer_config(sd)
        return model.build(cfg), from_torch(sd, cfg)
    if not storage.isdir(path):
        raise ValueError(f"{path}: checkpoint not found (a training work directory, a `convert to-jax` output "
                         f"or an official .bin)")
    cfg = model_config_of(path)
    if cfg is None and storage.basename(path) == "checkpoints":
        cfg = model_config_of(storage.dirname(path))
    if cfg is None:
        cfg = model_config
    if cfg is None:
        raise ValueError(f"{path}: no model_config.json or config.json beside the checkpoint; pass a config")
    module = model.build(cfg)
    abstract = jax.eval_shape(lambda: model.init_params(module, jax.random.PRNGKey(0)))
    sub = storage.join(path, "checkpoints")
    return module, checkpoints.load_params(sub if storage.isdir(sub) else path, abstract)


# --------------------------------------------------------------------------
# Frame-count resampling


def _interp_time(a: np.ndarray, new_len: int, axis: int = 0) -> np.ndarray:
    """Linear interpolation along ``axis`` with the end points kept
    (``new position i`` <- ``old position i * (L_old - 1) / (L_new - 1)``)."""
    old_len = a.shape[axis]
    if old_len == new_len:
        return a
    x_old = np.linspace(0.0, 1.0, old_len)
    x_new = np.linspace(0.0, 1.0, new_len)
    a = np.moveaxis(a, axis, -1)
    flat = a.reshape(-1, old_len)
    out = np.stack([np.interp(x_new, x_old, row) for row in flat]).reshape(a.shape[:-1] + (new_len,))
    return np.moveaxis(out, -1, axis).astype(a.dtype)


def resample_frames(params: Mapping[str, Any], model_config, num_frames: int):
    """Parameters for ``num_frames`` frames from those of another frame count.

    Interpolated along time: the temporal positional embedding ``(F, C)`` and
    the time-axis pyramid LayerNorms (one weight per time step).  The depthwise
    upsampling kernels' tap counts follow the level lengths
    (``k = L_out - r (L_in - 1)``); a kernel that gains a tap gets a zero tap,
    one that loses a tap drops its last.  Returns ``(params, new_config)``.
    """
    import copy

    s = _spec(model_config)
    cfg = ml_collections.ConfigDict(as_dict(model_config))
    cfg.num_frames = int(num_frames)
    new = resolve(cfg)  # validates the pyramid at the new length
    out = copy.deepcopy(jax_tree_to_numpy(params))
    out["temporal_pos"] = _interp_time(out["temporal_pos"], num_frames, axis=0)
    if s.tpca:
        new_l = new.pyramid_lengths
        for i in range(s.depth):
            pyr = out[f"temporal_block_{i}"]["attn"]["pyramid"]
            for k in range(1, s.pyramid_levels + 1):
                for name, level in ((f"pool_norm_{k}", k), (f"up_norm_{k}", k - 1)):
                    for leaf in ("scale", "bias"):
                        pyr[name][leaf] = _interp_time(pyr[name][leaf], new_l[level])
                kern = pyr[f"up_{k}"]["kernel"]
                k_new = new_l[k - 1] - new.pyramid_ratio * (new_l[k] - 1)
                if k_new > kern.shape[0]:
                    kern = np.concatenate([kern, np.zeros((k_new - kern.shape[0],) + kern.shape[1:], kern.dtype)])
                pyr[f"up_{k}"]["kernel"] = kern[:k_new]
    return out, cfg


def jax_tree_to_numpy(tree):
    if isinstance(tree, Mapping):
        return {k: jax_tree_to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


# --------------------------------------------------------------------------
# Command line


def main(argv=None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m rtpca_jax.convert",
                                 description="Convert between official PyTorch RTPCA/MixSTE checkpoints and rtpca-jax.",
                                 epilog="both commands take --config FILE (its model section describes the weights) "
                                        "and --config.model.KEY=VALUE overrides, read as train.py reads them")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tj = sub.add_parser("to-jax", help="official .bin -> Orbax params directory")
    tj.add_argument("checkpoint")
    tj.add_argument("--out", required=True)
    tj.add_argument("--frames", type=int, help="resample frame-tied parameters to this many frames")
    tj.add_argument("--num-heads", type=int, default=8, help="heads, when inferring the config")
    tt = sub.add_parser("to-torch", help="rtpca-jax params -> official training checkpoint .bin")
    tt.add_argument("directory", help="convert to-jax output or a training work directory")
    tt.add_argument("--out", required=True)
    tt.add_argument("--no-prefix", action="store_true", help="keys without the 'module.' prefix")
    from rtpca_jax import checkpoints, storage
    from rtpca_jax.config_lib import parse_command_line

    try:
        args, _, _, configs = parse_command_line(ap, argv, min_configs=0, max_configs=1)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # to-jax: the model section describing the weights (default: inferred from them);
    # to-torch: default the model_config.json / config.json of the directory
    model_config = configs[0].model if configs else None
    try:
        storage.check_reachable(args.checkpoint if args.cmd == "to-jax" else args.directory, what="input")
        storage.check_reachable(args.out, what="output")
        if args.cmd == "to-jax":
            sd = load_torch_checkpoint(args.checkpoint)
            cfg = model_config if model_config is not None else infer_config(sd, num_heads=args.num_heads)
            from rtpca_jax.model import count_params

            params = from_torch(sd, cfg)
            if args.frames:
                params, cfg = resample_frames(params, cfg, args.frames)
            checkpoints.save_params(args.out, params, cfg)
            print(f"wrote {args.out}/params ({count_params(params):,} parameters, "
                  f"{cfg.variant}, F={cfg.num_frames}) and {args.out}/model_config.json")
        else:
            module, params = load_model(args.directory, model_config)
            sd = to_torch(jax_tree_to_numpy(params), module.spec)
            save_torch_checkpoint(sd, args.out, prefix="" if args.no_prefix else "module.")
            print(f"wrote {args.out} ({len(sd)} tensors, official layout)")
    except (ValueError, ImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
