"""The U-Net noise predictor (DDPM, Ho et al. 2020, appendix B; with improved-diffusion's refinements).

    x_t (B, C, R, R), t (B,) [, labels (B, NUM_TYPES)]  ->  prediction (B, C, R, R)
                                                    (eps, v or x0: the network does not care)

Layout for the default config (base 64, mults 1-2-4-8, two residual blocks per level, R = 64):

    conv_in                       64 x 64x64
    level 0: 2 res                64 x 64x64   -> down -> 32x32
    level 1: 2 res               128 x 32x32   -> down -> 16x16
    level 2: 2 (res + attn)      256 x 16x16   -> down -> 8x8
    level 3: 2 (res + attn)      512 x 8x8
    middle:  res, attn, res      512 x 8x8
    decoder: mirror, 3 res per level (each concatenates one skip), upsample between levels
    out:     GroupNorm, SiLU, zero-initialised conv -> C channels

The time step enters every residual block as a per-channel scale and shift of the second
normalisation (FiLM, "scale-shift norm"). A type-conditional model (``condition="type"``) adds a label
embedding to the time embedding: labels are multi-hot rows over the 18 types, and the embedding is the
sum of the rows of a table for the types present, or a learned null row when none is (the
unconditional branch of classifier-free guidance). A two-type Pokémon is the sum of its two types'
embeddings: the order of the two does not matter to the picture, one table serves one- and two-type
requests, and a single type asked for alone is a point the training also visits (pokediff.training.labels
shows two-type images with one of their types part of the time). An unconditional model has no label
table and the same state dict as before conditioning existed. Attention uses scaled_dot_product_attention, which picks a
flash / memory-efficient kernel on GPU. The U-Net knows nothing about the noise schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pokediff.config import ModelConfig
from pokediff.pokemon_types import NUM_TYPES


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    # The largest group count <= groups that divides the channels (tiny test models have few channels).
    g = math.gcd(channels, groups)
    return nn.GroupNorm(g, channels, eps=1e-6)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in Transformer positions.

    t: (B,) -> (B, dim): [cos(t * f_k), sin(t * f_k)], f_k = max_period^(-k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch: each block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN -> SiLU -> conv -> GN * (1 + scale(t)) + shift(t) -> SiLU -> dropout -> conv, plus skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, out, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual connection."""

    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        # -> 3 x (B, heads, H*W, C/heads)
        q, k, v = qkv.reshape(B, 3, self.heads, C // self.heads, H * W).permute(1, 0, 2, 4, 3).unbind(0)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        h = h.transpose(2, 3).reshape(B, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: residual blocks, each optionally followed by attention."""

    def __init__(self, blocks: list[ResBlock], attns: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)


class UNet(nn.Module):
    """DDPM U-Net; ``UNet(ModelConfig(...))``. forward(x (B,C,R,R), t (B,)[, labels (B,NUM_TYPES)]) -> (B,C,R,R)."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        cfg = config or ModelConfig()
        self.config = cfg
        ch, groups = cfg.base_channels, cfg.groups
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conditional = cfg.condition != "none"
        if self.conditional:  # row 0: the null label; row 1 + k: type k (pokediff.pokemon_types.TYPES)
            self.label_emb = nn.Embedding(NUM_TYPES + 1, emb_dim)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        def attn(channels: int, resolution: int) -> nn.Module:
            if resolution in cfg.attention_resolutions:
                return AttentionBlock(channels, cfg.head_channels, groups)
            return nn.Identity()

        # ---- encoder: remember the channel count of every skip it produces
        skip_channels = [ch]
        resolution, cur = cfg.resolution, ch
        self.down_levels, self.downsamples = nn.ModuleList(), nn.ModuleList()
        for i, mult in enumerate(cfg.channel_mults):
            out = ch * mult
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cur, out, emb_dim, cfg.dropout, groups))
                attns.append(attn(out, resolution))
                cur = out
                skip_channels.append(cur)
            self.down_levels.append(Level(blocks, attns))
            last = i == len(cfg.channel_mults) - 1
            self.downsamples.append(nn.Identity() if last else Downsample(cur))
            if not last:
                resolution //= 2
                skip_channels.append(cur)

        # ---- middle
        self.mid1 = ResBlock(cur, cur, emb_dim, cfg.dropout, groups)
        self.mid_attn = AttentionBlock(cur, cfg.head_channels, groups)
        self.mid2 = ResBlock(cur, cur, emb_dim, cfg.dropout, groups)

        # ---- decoder: num_res_blocks + 1 blocks per level, each eats one skip
        self.up_levels, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.channel_mults))):
            out = ch * mult
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(cur + skip_channels.pop(), out, emb_dim, cfg.dropout, groups))
                attns.append(attn(out, resolution))
                cur = out
            self.up_levels.append(Level(blocks, attns))
            self.upsamples.append(Upsample(cur) if i > 0 else nn.Identity())
            if i > 0:
                resolution *= 2
        assert not skip_channels, "encoder and decoder skips must pair up"

        self.norm_out = _norm(cur, groups)
        self.conv_out = _zero(nn.Conv2d(cur, cfg.in_channels, 3, padding=1))

    def label_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        """Multi-hot labels (B, NUM_TYPES) -> (B, 4*base): the sum of the present types' rows of the
        table, or the null row for an all-zero label."""
        labels = labels.to(self.label_emb.weight.dtype)
        null = (labels.sum(dim=1, keepdim=True) == 0).to(labels.dtype)  # (B, 1)
        return torch.cat([null, labels], dim=1) @ self.label_emb.weight  # (B, 1 + NUM_TYPES) @ (1 + NUM_TYPES, E)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """labels: multi-hot (B, NUM_TYPES) for a conditional model (None or a zero row: the null label);
        an unconditional model takes none."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))  # (B, 4*base)
        if self.conditional:
            if labels is None:
                labels = torch.zeros(x.shape[0], NUM_TYPES, device=x.device)
            emb = emb + self.label_embedding(labels)
        elif labels is not None:
            raise ValueError("this U-Net is unconditional (model.condition: none): it takes no labels")

        h = self.conv_in(x)
        skips = [h]
        for level, down in zip(self.down_levels, self.downsamples):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)

        for level, up in zip(self.up_levels, self.upsamples):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            h = up(h)

        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
