"""Adaptive batch-norm statistics (AdaBS, docs/physics.md §4.2; Joshi et al., Nat. Commun. 11:2473, 2020) on the chip.

Batch norm is folded into each layer's LDPU affine registers (scale s, bias b per output channel). On the chip a
channel's pre-bias output z = s·Σ(core outputs) drifts and is distorted away from the statistics the batch norm was
trained for. AdaBS passes a few thousand unlabelled images through the chip at the time of use, measures each
channel's mean μ and std σ of z, and rewrites the registers so that the channel's output has its software mean and
std again:

    s' = s · σ_ref / σ,    b' = b + μ_ref − (σ_ref / σ) · μ

where μ_ref, σ_ref are the same statistics of an ideal chip (exact conductances, no read noise, ideal converters)
on the same images — the statistics the batch norm itself was fitted to. We apply it to every conv/linear layer
(also those without a batch norm, e.g. the classifier's bias), layer after layer in one run, so that each layer is
measured with the corrections upstream of it in place. Only the digital registers change: the
programmed devices, their drift and noise are untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from aimc._validation import SeedLike, check_number
from aimc.chip.analog import Observer
from aimc.chip.program import program
from aimc.chip.runtime import ProgrammedChip
from aimc.compiler.mapping import MappedLayer, Mapping
from aimc.errors import ValidationError

#: Our choice: images per chip run while measuring (memory vs speed).
BATCH = 250
#: Floor of a channel's measured std relative to its reference std (a dead channel is not blown up).
MIN_STD_RATIO = 1e-3


class _Moments:
    """Per-channel running sums of z = s·Σ_r y_r over all output positions (float64)."""

    def __init__(self) -> None:
        self.sums: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def __call__(self, layer: MappedLayer, y: torch.Tensor) -> None:
        if layer.kind in ("lstm", "gru"):
            return
        t = layer.tiling
        pad = t.col_blocks * t.block_outputs - t.outputs
        s = F.pad(layer.scale, (0, pad)).reshape(t.col_blocks, 1, -1).to(y.device, torch.float64)
        z = (y.to(torch.float64) * s).sum(0)  # (c, R, m)
        s1, s2, n = self.sums.get(layer.name, (0.0, 0.0, 0))
        self.sums[layer.name] = (s1 + z.sum(1), s2 + (z * z).sum(1), n + z.shape[1])

    def stats(self, layer: MappedLayer) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (outputs,) of the layer's z."""
        s1, s2, n = self.sums[layer.name]
        mean = (s1 / n).reshape(-1)[: layer.tiling.outputs]
        var = (s2 / n).reshape(-1)[: layer.tiling.outputs] - mean**2
        return mean, var.clamp_min(0.0).sqrt()


def _measure(chip: ProgrammedChip, x: torch.Tensor, **run_kwargs: object) -> _Moments:
    """Per-layer statistics of ``chip`` on inputs ``x`` (one run per :data:`BATCH` inputs)."""
    moments = _Moments()

    def observe_all(layer: MappedLayer, measure: Callable[[Observer], None]) -> MappedLayer:
        measure(moments)
        return layer

    for i in range(0, len(x), BATCH):
        chip.run(x[i : i + BATCH], recalibrate=observe_all, **run_kwargs)  # type: ignore[arg-type]
    return moments


def reference_moments(mapping: Mapping, x: torch.Tensor) -> _Moments:
    """Per-layer statistics of an ideal chip (exact weights, ideal converters, no read noise) on images ``x``."""
    ideal = program(mapping, "ideal", "tdp", seed=0)
    return _measure(ideal, x, t=60.0, quantize=False, read_noise=False, drift_compensation=False)


def adabs(
    chip: ProgrammedChip,
    x: torch.Tensor,
    t: float,
    *,
    mode: str = "four-phase",
    seed: SeedLike = 0,
    reference: _Moments | None = None,
    layers: Sequence[str] | None = None,
) -> ProgrammedChip:
    """A copy of ``chip`` whose LDPU affine registers are recalibrated at time ``t`` on unlabelled inputs ``x``.

    One run of the chip over ``x`` (all of it as one batch, so keep it to a few hundred to a few thousand
    inputs): before each layer runs, its cores are read once on the layer's actual inputs (which already carry
    the upstream layers' corrections) to measure the statistics, then the layer runs with the corrected
    registers.

    Args:
        chip: a programmed chip (not modified).
        x: calibration inputs (N, ...) of the network, e.g. a thousand training images.
        t: seconds after programming at which the chip will be used.
        mode: read mode of the calibration run.
        seed: read-noise seed of the calibration run.
        reference: :func:`reference_moments` of ``chip.mapping`` on ``x`` (computed when None).
        layers: names of the layers to recalibrate (default: every conv/linear layer).

    Returns:
        A :class:`ProgrammedChip` sharing ``chip``'s programmed cores, with a new mapping whose layers have the
        recalibrated ``scale`` and ``bias``.
    """
    if not isinstance(chip, ProgrammedChip):
        raise ValidationError(f"chip must be an aimc ProgrammedChip, got {type(chip).__name__}")
    check_number(t, "t", low=0.0)
    if not isinstance(x, torch.Tensor) or x.shape[0] < 2:
        raise ValidationError("x must be a tensor of at least 2 calibration inputs (N, ...)")
    mapping = chip.mapping
    names = (
        [n for n, lay in mapping.layers.items() if lay.kind not in ("lstm", "gru")] if layers is None else list(layers)
    )
    unknown = [n for n in names if n not in mapping.layers or mapping.layers[n].kind in ("lstm", "gru")]
    if unknown:
        raise ValidationError(f"layers {unknown} are not conv/linear layers of the mapping")
    ref = reference_moments(mapping, x) if reference is None else reference
    corrected: dict[str, MappedLayer] = {}

    def recalibrate(layer: MappedLayer, measure: Callable[[Observer], None]) -> MappedLayer:
        if layer.name not in names:
            return layer
        moments = _Moments()
        measure(moments)
        mu_ref, sd_ref = ref.stats(layer)
        mu, sd = moments.stats(layer)
        ratio = sd_ref / sd.clamp_min(MIN_STD_RATIO * sd_ref.clamp_min(1e-30))
        ratio = torch.where(sd_ref > 0, ratio, torch.ones_like(ratio))
        corrected[layer.name] = dataclasses.replace(
            layer,
            scale=(layer.scale.double() * ratio).to(layer.scale.dtype),
            bias=(layer.bias.double() + mu_ref - ratio * mu).to(layer.bias.dtype),
        )
        return corrected[layer.name]

    chip.run(x, t=t, mode=mode, seed=seed, recalibrate=recalibrate)
    layers_new = {n: corrected.get(n, lay) for n, lay in mapping.layers.items()}
    return dataclasses.replace(chip, mapping=dataclasses.replace(mapping, layers=layers_new))
