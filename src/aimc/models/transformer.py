"""A character-level transformer language model for Penn Treebank, the transformer counterpart of the chip paper's
char-LSTM (same data, split and 50-character vocabulary; docs/validation.md).

A decoder-only (causal) pre-norm transformer in the style of GPT-2 (Radford et al., 2019):

- ``embedding``: ``nn.Embedding(vocab_size, d_model)`` and ``position``: a learned ``(context, d_model)`` table;
  both are tables looked up off-chip, as the chip paper keeps the char-LSTM's embedding off-chip.
- ``blocks``: ``layers`` x [LayerNorm -> causal multi-head self-attention (``qkv`` Linear d -> 3d, ``proj`` Linear
  d -> d) -> residual; LayerNorm -> ``fc1`` Linear d -> ff, GELU, ``fc2`` Linear ff -> d -> residual].
- ``norm`` + ``head``: a final LayerNorm and ``Linear(d_model, vocab_size)``.

On the chip, every ``Linear`` is an analog layer; attention's activation-by-activation products, the softmax, the
LayerNorms, GELU and the residual adds are digital work (docs/design.md "Digital operations").

Shapes:
    tokens (B, T) int64 with T <= context -> logits (B, T, vocab_size).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aimc.models.networks import _check_positive_int, _check_seed, _seeded_init


class _Block(nn.Module):
    """One pre-norm transformer block: causal self-attention and an MLP, each with a residual."""

    def __init__(self, d_model: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ff)
        self.fc2 = nn.Linear(ff, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        shape = (b, t, self.heads, d // self.heads)
        q, k, v = (z.reshape(shape).transpose(1, 2) for z in (q, k, v))
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        x = x + F.dropout(self.proj(a.transpose(1, 2).reshape(b, t, d)), drop, self.training)
        return x + F.dropout(self.fc2(F.gelu(self.fc1(self.ln2(x)))), drop, self.training)


class CharTransformer(nn.Module):
    """Causal character-level transformer LM (see the module docstring).

    Args:
        vocab_size: characters in the vocabulary.
        d_model: width of the residual stream.
        layers: transformer blocks.
        heads: attention heads (``d_model`` must be a multiple).
        ff: hidden width of each block's MLP.
        context: longest sequence (size of the position table).
        dropout: dropout of attention weights and of both residual branches, in training only.
        seed: fixes PyTorch's default initialisation (global random state untouched).
    """

    #: Submodules that run in software (the token and position tables are looked up off-chip).
    offchip_modules: tuple[str, ...] = ("embedding",)

    def __init__(
        self,
        vocab_size: int = 50,
        d_model: int = 256,
        layers: int = 4,
        heads: int = 4,
        ff: int = 1024,
        context: int = 128,
        dropout: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for value, name in ((vocab_size, "vocab_size"), (d_model, "d_model"), (layers, "layers"), (heads, "heads")):
            _check_positive_int(value, name)
        _check_positive_int(ff, "ff")
        _check_positive_int(context, "context")
        seed = _check_seed(seed)
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of heads ({heads})")
        self.vocab_size, self.d_model, self.context = vocab_size, d_model, context
        with _seeded_init(seed):
            self.embedding = nn.Embedding(vocab_size, d_model)
            self.position = nn.Parameter(torch.randn(context, d_model) * 0.02)
            self.blocks = nn.ModuleList(_Block(d_model, heads, ff, dropout) for _ in range(layers))
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab_size)
            # GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2·layers)
            for name, p in self.named_parameters():
                if name.endswith("weight") and p.dim() == 2 and name != "position":
                    nn.init.normal_(
                        p, 0.0, 0.02 / (math.sqrt(2 * layers) if name.endswith(("proj.weight", "fc2.weight")) else 1)
                    )
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab_size) of the next character after each of ``tokens`` (B, T)."""
        t = tokens.shape[1]
        x = self.embedding(tokens) + self.position[:t]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def char_transformer(**kwargs: object) -> CharTransformer:
    """Character-level PTB transformer; see :class:`CharTransformer` (keyword arguments as there)."""
    return CharTransformer(**kwargs)  # type: ignore[arg-type]
