"""The reference networks of the chip paper (SPEC §3), by name or by factory.

- :func:`resnet9` / :class:`ResNet9` — ResNet-9, CIFAR-10 (``"resnet9"``).
- :func:`char_lstm` / :class:`CharLSTM` — character-level Penn Treebank LSTM (``"char-lstm"``).
- :func:`caption_lstm` / :class:`CaptionLSTM` — Flickr8k image-captioning LSTM (``"caption-lstm"``).
- :func:`onchip_weight_count`, :func:`onchip_bias_count` — what the chip holds of a model.

Examples:
    >>> from aimc.models import get_model, onchip_weight_count
    >>> onchip_weight_count(get_model("char-lstm"))
    1299312
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from aimc.errors import ArgumentTypeError, UnknownNameError
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

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet9": resnet9,
    "char-lstm": char_lstm,
    "caption-lstm": caption_lstm,
}


def available_models() -> list[str]:
    """Every name :func:`get_model` accepts."""
    return list(_MODELS)


def get_model(name: str, **kwargs: object) -> nn.Module:
    """A new reference network by name (``"resnet9"``, ``"char-lstm"``, ``"caption-lstm"``).

    ``kwargs`` go to the factory (e.g. ``seed=1``, ``num_classes=100``).

    Raises:
        UnknownNameError: ``name`` is not a known model (the message lists the known names).
    """
    if not isinstance(name, str):
        raise ArgumentTypeError(f"model name must be a str, got {type(name).__name__} {name!r}")
    if name not in _MODELS:
        raise UnknownNameError(f"unknown model name {name!r}; available: {', '.join(map(repr, _MODELS))}")
    return _MODELS[name](**kwargs)


__all__ = [
    "RESNET9_FILTERS",
    "CaptionLSTM",
    "CharLSTM",
    "ResNet9",
    "available_models",
    "caption_lstm",
    "char_lstm",
    "get_model",
    "onchip_bias_count",
    "onchip_weight_count",
    "orthogonal_embedding",
    "resnet9",
]
