"""AdaBS on the chip: the recalibrated LDPU registers restore each channel's software statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aimc
from aimc.chip.adabs import _measure, adabs, reference_moments
from aimc.errors import ValidationError


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1, bias=False),
        nn.BatchNorm2d(24),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(24 * 8 * 8, 10),
    )
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 3, 8, 8, generator=g)
    mapping = aimc.compile(_net(), example_input=x[:100], name="small")
    return mapping, x


def _mismatch(mapping, chip, x, t, ref):
    """Worst channel mismatch of the pre-activation mean (in reference stds) and of the std (relative)."""
    moments = _measure(chip, x, t=t, seed=5)
    worst_mean, worst_std = 0.0, 0.0
    for name, layer in chip.mapping.layers.items():
        original = mapping.layers[name]
        mu_ref, sd_ref = ref.stats(original)
        mu, sd = moments.stats(layer)
        shift = (mu + layer.bias) - (mu_ref + original.bias)
        worst_mean = max(worst_mean, float((shift.abs() / sd_ref).max()))
        worst_std = max(worst_std, float((sd / sd_ref - 1).abs().max()))
    return worst_mean, worst_std


#: One year after programming: drift has moved the statistics.
ONE_YEAR = 31_536_000.0


def _adabs_one_year(mapping, x):
    """A TDP chip read a year after programming (drift has moved the statistics), before and after AdaBS: the chip,
    the recalibrated chip and the (mean, std) mismatches of :func:`_mismatch` before and after."""
    chip = aimc.program(mapping, "hermes-2dev", "tdp", seed=3)
    ref = reference_moments(mapping, x)
    before = _mismatch(mapping, chip, x, ONE_YEAR, ref)
    fixed = adabs(chip, x, ONE_YEAR, seed=5, reference=ref)
    return chip, fixed, before, _mismatch(mapping, fixed, x, ONE_YEAR, ref)


def test_adabs_restores_channel_statistics(setup):
    mapping, x = setup
    chip, fixed, before, after = _adabs_one_year(mapping, x)
    # measured again (fresh read noise), every channel's mean is within 5% and its std within 5% of the software
    # values, and both mismatches shrink
    assert after[0] < 0.05 and after[1] < 0.05, (before, after)
    assert after[0] < before[0] and after[1] < before[1], (before, after)
    # only the digital registers changed: the programmed cores are shared
    assert fixed.cores is chip.cores
    assert fixed.mapping.layers["0"].weight is chip.mapping.layers["0"].weight


def test_adabs_twice_changes_little(setup):
    """A second recalibration of an already recalibrated chip (same data, same read noise) moves the first layer's
    registers by < 1% and the others' by < 6% (the first one already restored the statistics; downstream, the FP16
    and INT8 rounding of the slightly changed upstream outputs moves them a little).
    With other read noise they may move by a few %:
    the quasi-static part of the 1/f read noise is drawn once per run and changes a 27-row layer's gains.)"""
    mapping, x = setup
    t = 86_400.0
    chip = aimc.program(mapping, "hermes-2dev", "tdp", seed=4)
    ref = reference_moments(mapping, x)
    once = adabs(chip, x, t, seed=1, reference=ref)
    twice = adabs(once, x, t, seed=1, reference=ref)
    for name, layer in twice.mapping.layers.items():
        rtol = 0.01 if name == "0" else 0.06
        torch.testing.assert_close(layer.scale, once.mapping.layers[name].scale, rtol=rtol, atol=1e-6)


def test_adabs_rejects_bad_arguments(setup):
    mapping, x = setup
    chip = aimc.program(mapping, "ideal", "tdp", seed=0)
    with pytest.raises(ValidationError, match="t"):
        adabs(chip, x, -1.0)
    with pytest.raises(ValidationError, match="calibration inputs"):
        adabs(chip, x[:1], 60.0)
    with pytest.raises(ValidationError, match="not conv/linear"):
        adabs(chip, x, 60.0, layers=["nope"])
    with pytest.raises(ValidationError, match="ProgrammedChip"):
        adabs(mapping, x, 60.0)


def _user_cnn(batch_norm: bool) -> nn.Module:
    """A user's CNN with batch norm after the ReLU (not folded into the conv: a separate LDPU affine pass, and before
    the pooling one that is not folded into the classifier either), or the same network without batch norm."""
    torch.manual_seed(2)
    bn = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        bn(8),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        bn(12),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(48, 10),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn-after-relu", "no-bn"])
def test_adabs_on_a_user_cnn(batch_norm):
    """AdaBS restores every conv/linear layer's channel statistics of a user's network whose batch norms are
    separate affine passes after the ReLU (each layer is measured on inputs that passed them), and of one without
    batch norm (it then recalibrates the layers' bias registers)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 3, 8, 8, generator=g)
    mapping = aimc.compile(_user_cnn(batch_norm), example_input=x[:50], name="user")
    affine = [op for op in mapping.ops if op.kind == "affine"]
    assert len(affine) == (2 if batch_norm else 0)
    _, fixed, before, after = _adabs_one_year(mapping, x)
    assert after[0] < 0.05 and after[1] < 0.05, (before, after)
    assert after[0] < before[0] and after[1] < before[1], (before, after)
    assert set(fixed.mapping.layers) == {"0", "3", "8"}
    # the batch norms' own affine passes keep their registers: the layers after them absorb the correction
    for op in affine:
        for part in ("scale", "shift"):
            assert torch.equal(
                fixed.mapping.extra_tensors[f"{op.name}.{part}"], mapping.extra_tensors[f"{op.name}.{part}"]
            )
    out = fixed.run(x[:20], t=ONE_YEAR, seed=6)
    assert out.shape == (20, 10) and bool(torch.isfinite(out).all())
