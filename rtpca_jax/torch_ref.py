"""An eager PyTorch statement of the official RTPCA / MixSTE forward pass, for
speed comparisons on machines where the official repository is not at hand.

It is built the way the official ``common/model_cross.py`` models are: eager
``nn.Module`` layers with the official state-dict names (so an official
checkpoint loads with ``strict=True``), attention as explicit ``q @ k^T``,
softmax and ``@ v`` products, the temporal pyramid of every temporal block as
``AdaptiveAvgPool1d`` / time-axis ``LayerNorm`` / depthwise
``ConvTranspose1d``, the pyramid layers built in spatial blocks too (unused),
and the official in-place doubling.  ``tests/test_torch_ref.py`` checks it
against the official golden outputs.  Only the frame layout and the loss are
shared with this package; nothing here is used by the JAX model.

Requires the optional ``torch`` extra (``pip install '.[torch]'``).
"""

from __future__ import annotations

try:
    import torch
    from torch import nn
    from torch.nn import functional as tf
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("rtpca_jax.torch_ref needs PyTorch: pip install '.[torch]'") from e

from rtpca_jax.model.spec import ModelSpec, upsample_kernel


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _drop_path(x, rate: float, training: bool):
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class _Attention(nn.Module):
    """``fused``: MixSTE's ``qkv``; otherwise RTPCA's ``q`` + ``kv`` with the
    pyramid layers (built for every block, run only by temporal ones)."""

    def __init__(self, s: ModelSpec, fused: bool):
        super().__init__()
        c = s.width
        self.heads, self.scale, self.fused = s.num_heads, s.head_dim ** -0.5, fused
        if fused:
            self.qkv = nn.Linear(c, 3 * c, bias=s.qkv_bias)
        else:
            self.q = nn.Linear(c, c, bias=s.qkv_bias)
            self.kv = nn.Linear(c, 2 * c, bias=s.qkv_bias)
        self.proj = nn.Linear(c, c)
        if s.tpca:
            lengths = tuple(s.pyramid_lengths)  # F, F//r, ...  down to the coarsest
            self.lengths = lengths
            eps = s.pyramid_ln_eps
            for i, n in enumerate(lengths[1:], 1):
                setattr(self, f"norm{i}", nn.LayerNorm(n, eps=eps))
            self.norm4 = nn.LayerNorm(c, eps=eps)
            # up1 goes from the coarsest level to the next one up, up3 lands on F
            for i in range(1, len(lengths)):
                l_in, l_out = lengths[-i], lengths[-i - 1]
                k = upsample_kernel(l_in, l_out, s.pyramid_ratio)
                setattr(self, f"up{i}", nn.ConvTranspose1d(c, c, k, stride=s.pyramid_ratio, groups=c))
                setattr(self, f"upnorm{i}", nn.LayerNorm(l_out, eps=eps))
            self.xlr_len = s.xlr_len

    def _heads(self, t):  # (B, N, C) -> (B, H, N, d)
        b, n, c = t.shape
        return t.reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3)

    def _pyramid(self, h):
        """Pyramid keys/values input: ``norm4(c_top + h)``."""
        t = h.transpose(1, 2)  # (B, C, F)
        levels = len(self.lengths) - 1
        downs, cur = [], t
        for i in range(1, levels + 1):
            cur = tf.gelu(getattr(self, f"norm{i}")(tf.adaptive_avg_pool1d(cur, self.lengths[i])))
            downs.append(cur)
        up = downs[-1]
        for i in range(1, levels + 1):
            skip = downs[-i - 1] if i < levels else None
            up = tf.gelu(getattr(self, f"upnorm{i}")(getattr(self, f"up{i}")(up)))
            if skip is not None:
                up = up + skip
        return self.norm4((up + t).transpose(1, 2))

    def forward(self, x, mode: str = "plain", prev_kv=None):
        b, n, c = x.shape
        if self.fused:
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
        else:
            q = self._heads(self.q(x))
            kv_in = self._pyramid(x) if mode == "temporal" else x
            kv = self.kv(kv_in).reshape(b, n, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            k, v = kv[0], kv[1]
            if prev_kv is not None:
                pk, pv = prev_kv  # (B, H, L, d): pool the token axis
                pool = lambda t: tf.adaptive_avg_pool1d(  # noqa: E731
                    t.transpose(-1, -2).reshape(-1, t.shape[-1], t.shape[-2]), self.xlr_len
                ).reshape(t.shape[0], t.shape[1], t.shape[-1], self.xlr_len).transpose(-1, -2)
                k = torch.cat([k, pool(pk)], dim=2)
                v = torch.cat([v, pool(pv)], dim=2)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out), (k, v)


class _Block(nn.Module):
    def __init__(self, s: ModelSpec, fused: bool, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(s.width, eps=s.block_ln_eps)
        self.attn = _Attention(s, fused)
        self.norm2 = nn.LayerNorm(s.width, eps=s.block_ln_eps)
        self.mlp = _Mlp(s.width, s.mlp_hidden)
        self.drop_path = drop_path

    def forward(self, x, mode="plain", prev_kv=None):
        a, kv = self.attn(self.norm1(x), mode, prev_kv)
        x = x + _drop_path(a, self.drop_path, self.training)
        x = x + _drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)
        return x, kv


class OfficialForward(nn.Module):
    """The official network (class ``MixSTE2`` of both repositories) for a
    resolved :class:`ModelSpec` of variant ``ste`` (MixSTE) or ``rtpca``."""

    def __init__(self, s: ModelSpec):
        super().__init__()
        if s.variant not in ("ste", "rtpca"):
            raise ValueError(f"torch_ref: variant {s.variant!r} has no official code (ste or rtpca)")
        self.spec = s
        c, f, j = s.width, s.num_frames, s.num_joints
        fused = s.variant == "ste"
        self.Spatial_patch_to_embedding = nn.Linear(s.in_dim, c)
        self.Spatial_pos_embed = nn.Parameter(torch.zeros(1, j, c))
        self.Temporal_pos_embed = nn.Parameter(torch.zeros(1, f, c))
        rates = [float(r) for r in torch.linspace(0, s.drop_path_rate, s.depth)]
        self.STEblocks = nn.ModuleList([_Block(s, fused, rates[i]) for i in range(s.depth)])
        self.TTEblocks = nn.ModuleList([_Block(s, fused, rates[i]) for i in range(s.depth)])
        self.Spatial_norm = nn.LayerNorm(c, eps=s.block_ln_eps)
        self.Temporal_norm = nn.LayerNorm(c, eps=s.block_ln_eps)
        self.head = nn.Sequential(nn.LayerNorm(c, eps=s.head_ln_eps), nn.Linear(c, s.out_dim))

    def forward(self, x):
        s = self.spec
        b, f, j, _ = x.shape
        temporal_mode = "temporal" if s.tpca else "plain"
        x = self.Spatial_patch_to_embedding(x.reshape(b * f, j, -1)) + self.Spatial_pos_embed
        kv = None
        for i in range(s.depth):
            if i > 0:
                x = x.reshape(b * f, j, -1)
            x, _ = self.STEblocks[i](x)
            x = self.Spatial_norm(x)
            x = x.reshape(b, f, j, -1).permute(0, 2, 1, 3).reshape(b * j, f, -1)  # (b f) n c -> (b n) f c
            if i == 0:
                x = x + self.Temporal_pos_embed
            x, new_kv = self.TTEblocks[i](x, temporal_mode, kv if (s.xlr and i > 0) else None)
            if s.xlr:
                kv = new_kv
            x = self.Temporal_norm(x)
            x = x.reshape(b, j, f, -1).permute(0, 2, 1, 3)  # (b n) f c -> b f n c
            if s.double_temporal_output and i > 0:
                x = x + x
        return self.head(x)


def official_loss(pred, target, joint_weights):
    """The official training objective (see ``rtpca_jax.losses.total_loss``)."""
    target = target.clone()
    target[:, :, 0] = 0.0
    w = torch.as_tensor(joint_weights, dtype=pred.dtype, device=pred.device)
    mpjpe = (w * torch.linalg.norm(pred - target, dim=-1)).mean()
    d = pred[:, 1:] - pred[:, :-1]
    temporal = (w[:, None] * d.square()).mean()
    vel = torch.linalg.norm(d - (target[:, 1:] - target[:, :-1]), dim=-1).mean()
    return mpjpe + 0.5 * temporal + 2.0 * vel


def build(model_config) -> OfficialForward:
    from rtpca_jax.model.spec import resolve

    return OfficialForward(resolve(model_config))


