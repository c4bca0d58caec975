"""The Local feature Integration Transformer (LIT) of FIRe, written from SPEC section 1."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import LITConfig


class LIT(nn.Module):
    """Turns a local feature map into ``N`` super-features by iterative attention.

    Parameter names follow the official checkpoint (``templates_init``, ``project_q``,
    ``project_k``, ``project_v``, ``norm_inputs``, ``norm_templates``, ``norm_mlp``,
    ``mlp.0``, ``mlp.2``) so that no renaming is needed inside LIT.

    Args:
        in_channels: channels ``C`` of the feature map.
        cfg: iterations ``T``, number of templates ``N``, width ``dim``.

    Shape:
        - Input: :math:`(B, C, H, W)`.
        - Output: super-features :math:`(B, N, D)` and attention :math:`(B, N, H, W)`
          of the last iteration (softmax over templates, then normalised over tokens).
    """

    def __init__(self, in_channels: int, cfg: LITConfig = LITConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.norm_inputs = nn.LayerNorm(in_channels)
        self.project_k = nn.Linear(in_channels, d, bias=False)
        self.project_v = nn.Linear(in_channels, d, bias=False)
        self.templates_init = nn.Parameter(torch.randn(1, cfg.N, d))
        self.norm_templates = nn.LayerNorm(d)
        self.project_q = nn.Linear(d, d, bias=False)
        self.norm_mlp = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Linear(d // 2, d))
        self.scale = d**-0.5

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 4:
            raise ValueError(f"LIT expects a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        tokens = self.norm_inputs(x.flatten(2).transpose(1, 2))  # (B, L, C), row-major
        k = self.project_k(tokens)  # (B, L, D)
        v = self.project_v(tokens)  # (B, L, D)
        templates = self.templates_init.expand(b, -1, -1)
        attn = None
        for _ in range(self.cfg.T):
            prev = templates
            q = self.project_q(self.norm_templates(templates)) * self.scale  # (B, N, D)
            logits = torch.bmm(k, q.transpose(1, 2))  # (B, L, N)
            attn = logits.softmax(dim=2) + 1e-8  # softmax over templates
            attn = attn / attn.sum(dim=1, keepdim=True)  # normalise over tokens
            templates = prev + torch.bmm(attn.transpose(1, 2), v)  # (B, N, D)
            templates = templates + self.mlp(self.norm_mlp(templates))
        attention = attn.transpose(1, 2).reshape(b, self.cfg.N, h, w)
        return templates, attention
