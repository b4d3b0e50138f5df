"""The reference networks of the chip paper (docs/physics.md §11), by name or by factory.

- :func:`resnet9` / :class:`ResNet9` — ResNet-9, CIFAR-10 (``"resnet9"``).
- :func:`char_lstm` / :class:`CharLSTM` — character-level Penn Treebank LSTM (``"char-lstm"``).
- :func:`caption_lstm` / :class:`CaptionLSTM` — Flickr8k image-captioning LSTM (``"caption-lstm"``).
- :func:`char_transformer` / :class:`CharTransformer` — character-level PTB transformer, the char-LSTM's
  transformer counterpart (``"char-transformer"``; not in the chip paper).
- :func:`onchip_weight_count`, :func:`onchip_bias_count` — what the chip holds of a model.

Examples:
    >>> from aimc.models import get_model, onchip_weight_count
    >>> onchip_weight_count(get_model("char-lstm"))
    1299312
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from aimc._registry import Registry
from aimc.models.networks import (
    RESNET9_FILTERS,
    CaptionLSTM,
    CharLSTM,
    ResNet9,
    caption_lstm,
    char_lstm,
    onchip_bias_count,
    onchip_weight_count,
    orthogonal_embedding,
    resnet9,
)
from aimc.models.transformer import CharTransformer, char_transformer

_MODELS: Registry[Callable[..., nn.Module]] = Registry(
    "model",
    {"resnet9": resnet9, "char-lstm": char_lstm, "caption-lstm": caption_lstm, "char-transformer": char_transformer},
)


def available_models() -> list[str]:
    """Every name :func:`get_model` accepts."""
    return _MODELS.available()


def get_model(name: str, **kwargs: object) -> nn.Module:
    """A new reference network by name (``"resnet9"``, ``"char-lstm"``, ``"caption-lstm"``, ``"char-transformer"``).

    ``kwargs`` go to the factory (e.g. ``seed=1``, ``num_classes=100``).

    Raises:
        UnknownNameError: ``name`` is not a known model (the message lists the known names).
    """
    return _MODELS.get(name)(**kwargs)


def example_input(name: str, batch: int = 8, seed: int = 0) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """A random input batch of the right shape and type for a reference network (for mapping, not accuracy)."""
    g = torch.Generator().manual_seed(seed)
    if name == "resnet9":
        return torch.randn(batch, 3, 32, 32, generator=g)
    if name == "char-lstm":
        return torch.randint(0, 50, (batch, 32), generator=g)
    if name == "caption-lstm":
        return torch.randn(batch, 2048, generator=g), torch.randint(0, 4064, (batch, 12), generator=g)
    if name == "char-transformer":
        return torch.randint(0, 50, (batch, 128), generator=g)
    raise _MODELS.unknown(name)


__all__ = [
    "RESNET9_FILTERS",
    "CaptionLSTM",
    "CharLSTM",
    "CharTransformer",
    "ResNet9",
    "available_models",
    "caption_lstm",
    "char_lstm",
    "char_transformer",
    "example_input",
    "get_model",
    "onchip_bias_count",
    "onchip_weight_count",
    "orthogonal_embedding",
    "resnet9",
]
