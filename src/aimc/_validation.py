"""Input validation shared by every public function (one place, one wording; cf. sklearn.utils.validation)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from aimc.errors import ArgumentTypeError, UnknownNameError, ValidationError

SeedLike = int | torch.Generator | None


def make_generator(seed: SeedLike, name: str = "seed") -> torch.Generator:
    """Return a CPU ``torch.Generator`` from an int seed or pass a generator through.

    ``None`` is not accepted silently: aimc never draws from a global random state, so a caller must say which
    seed it wants (reproducibility; docs/design.md "Determinism").
    """
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ArgumentTypeError(f"{name} must be an int seed or a torch.Generator, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValidationError(f"{name} must be a non-negative int, got {seed}")
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def check_finite_tensor(x: object, name: str, ndim: Iterable[int] | None = None) -> torch.Tensor:
    """Check that ``x`` is a floating-point tensor with finite values and an allowed number of dimensions."""
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ArgumentTypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if ndim is not None:
        allowed = tuple(ndim)
        if x.dim() not in allowed:
            raise ValidationError(
                f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(x.shape)}"
            )
    if x.numel() == 0:
        raise ValidationError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    # One reduction answers for the common case: a finite sum means every element is finite (NaN/Inf propagate).
    # Only a non-finite sum, which huge finite values can also give, needs the element-wise check.
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValidationError(f"{name} must be finite; it holds {bad} NaN/Inf value(s)")
    return x


def check_number(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
) -> float:
    """Check that ``value`` is a finite real number (an int if ``integer``) inside [low, high]."""
    kind = "an int" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentTypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    if integer and not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an int, got {value!r}")
    if not math.isfinite(value):
        raise ValidationError(f"{name} must be finite, got {value}")
    lo_ok = low is None or (value >= low if low_inclusive else value > low)
    hi_ok = high is None or (value <= high if high_inclusive else value < high)
    if not (lo_ok and hi_ok):
        lb = "-inf" if low is None else f"{low:g}"
        hb = "inf" if high is None else f"{high:g}"
        interval = f"{'[' if low_inclusive else '('}{lb}, {hb}{']' if high_inclusive else ')'}"
        raise ValidationError(f"{name} must be in {interval}, got {value}")
    return value


def check_choice(value: object, name: str, allowed: Sequence[str]) -> str:
    """Check that ``value`` is one of the ``allowed`` strings."""
    if not isinstance(value, str) or value not in allowed:
        raise UnknownNameError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value
