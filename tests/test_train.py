"""Training utilities: augmentation, learning-rate schedule, checkpoints without pickle, HWA weight noise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aimc.devices import get
from aimc.errors import ValidationError
from aimc.train.checkpoint import load_checkpoint, save_checkpoint
from aimc.train.cifar import PEAK_LR, augment, lr_at
from aimc.train.hwa import clip_weights, drift_factors, noisy_weights, weight_noise_std


def test_augment_keeps_shape_and_applies_crop_flip_and_cutout():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32) / 1000 + 1.0  # no zeros
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    zeros = (out == 0).flatten(1).float().mean(1)
    assert bool((zeros > 0).all()) and bool((zeros <= 64 * 3 / (3 * 1024) + 1e-6).all())  # one <= 8x8 hole
    # every non-cut pixel comes from the reflect-padded image
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    assert set(out[out != 0].tolist()) <= set(padded.flatten().tolist())


def test_one_cycle_schedule_warms_up_then_decays_to_zero():
    total = 1000
    lrs = [lr_at(s, total) for s in range(total)]
    assert max(lrs) == pytest.approx(PEAK_LR)
    assert lrs[0] < lrs[100] and lrs[-1] < 1e-3 * PEAK_LR
    peak = lrs.index(max(lrs))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))


def test_checkpoint_round_trip_restores_model_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = model(torch.randn(16, 4)).sum()
    loss.backward()
    opt.step()
    gen = torch.Generator().manual_seed(5)
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, model, opt, {"epoch": 3}, gen)
    expected_next = torch.rand(3, generator=gen)
    model2 = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    gen2 = torch.Generator()
    assert load_checkpoint(path, model2, opt2, gen2)["epoch"] == 3
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(
        opt.state_dict()["state"][0]["momentum_buffer"], opt2.state_dict()["state"][0]["momentum_buffer"]
    )
    assert torch.equal(torch.rand(3, generator=gen2), expected_next)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(ValidationError, match="not a valid aimc checkpoint"):
        load_checkpoint(bad, model2)


def test_hwa_noise_follows_twice_the_programming_noise_and_is_removed_after_the_step():
    device = get("hermes-2dev")
    w = torch.linspace(-1, 1, 20001)
    std = weight_noise_std(w, device, "tdp", 2.0)
    # at |w| = w_max the std is 2 x sigma_prog(1) in weight units (w_max / G_max)
    assert float(std[-1]) == pytest.approx(2 * float(device.prog_std(torch.tensor(1.0))) / device.g_max_uS, rel=1e-5)
    layer = nn.Linear(200, 300, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(300, 200) * 2 - 1)
    clean = layer.weight.detach().clone()
    model = nn.Sequential(layer)
    with noisy_weights(model, torch.Generator().manual_seed(0)):
        diff = layer.weight.detach() - clean
        expected = weight_noise_std(clean, device, "tdp", 2.0)
    assert float((diff / expected).std()) == pytest.approx(1.0, abs=0.01)  # 60,000 samples
    assert torch.equal(layer.weight.detach(), clean)
    clip_weights(model, 1.0)
    assert float(layer.weight.detach().abs().max()) <= float(clean.std()) + 1e-6


def test_drift_aware_noise_follows_the_device_drift_with_global_compensation():
    """drift_factors: the device model's conductance-dependent drift (docs/physics.md §3.2: small g drifts faster),
    rescaled so that the layer's response to an all-equal input is unchanged (GDC); no drift at t = 0; restored after
    the step."""
    device = get("hermes-2dev")
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(300, 200, generator=gen) * 2 - 1
    assert torch.allclose(drift_factors(w, device, 0.0, gen), torch.ones_like(w), atol=1e-6)
    f = drift_factors(w, device, 3600.0, gen)
    rows = w.reshape(300, -1)
    assert float((rows * f).sum(1).abs().mean()) == pytest.approx(float(rows.sum(1).abs().mean()), rel=1e-5)
    g = w.abs() / w.abs().max()
    small, large = float(f[g < 0.1].mean()), float(f[g > 0.5].mean())
    # nu_mean is 0.13 at small g and about 0.04-0.06 at g > 0.5: (3900/300)^(-0.07) = 0.84 between them
    assert 0.75 < small / large < 0.92
    layer = nn.Linear(200, 300, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    with noisy_weights(nn.Sequential(layer), gen, drift_window=(3600.0, 3600.0)):
        moved = layer.weight.detach().clone()
    assert torch.equal(layer.weight.detach(), w)
    assert float((moved - w).abs().mean()) > 0.02
