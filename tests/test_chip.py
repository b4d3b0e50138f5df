"""program() and ProgrammedChip.run(): agreement with PyTorch, determinism, save/load, user networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aimc
from aimc.data import cifar10_tensors
from aimc.errors import ValidationError
from aimc.models import char_lstm, resnet9

from conftest import HAVE_CIFAR10


@pytest.fixture(scope="module")
def cifar():
    if not HAVE_CIFAR10:
        pytest.skip("needs CIFAR-10: run `aimc data fetch cifar10` (or set AIMC_DATA=DIR) to enable")
    return cifar10_tensors("test", 1000)


@pytest.fixture(scope="module")
def resnet(cifar):
    """ResNet-9 with batch-norm statistics measured on CIFAR-10 images (realistic activation scales)."""
    model = resnet9(seed=0)
    x, _ = cifar
    model.train()
    with torch.no_grad():
        for i in range(0, 1000, 250):
            model(x[i : i + 250])
    model.eval()
    return model, aimc.compile(model, example_input=x[:128])


def test_noise_free_chip_agrees_with_pytorch_on_1000_cifar_images(resnet, cifar):
    model, mapping = resnet
    x, _ = cifar
    chip = aimc.program(mapping, device="ideal", strategy="tdp", seed=0)
    with torch.no_grad():
        ref = model(x)
    out = chip.run(x, quantize=False)
    agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
    assert agree >= 0.995
    assert float((out - ref).abs().max()) < 1e-4 * float(ref.abs().max()) + 1e-5


def test_char_lstm_noise_free_logits_match_pytorch():
    model = char_lstm(seed=0).eval()
    tokens = torch.randint(0, 50, (4, 40), generator=torch.Generator().manual_seed(1))
    mapping = aimc.compile(model, example_input=tokens)
    chip = aimc.program(mapping, device="ideal", strategy="tdp", seed=0)
    with torch.no_grad():
        ref = model(tokens)
    assert float((chip.run(tokens, quantize=False) - ref).abs().max()) < 1e-5
    # with the chip's converters (8-bit PWM, CCO ADC, INT8 links, FP16 GDPU with the tanh table)
    assert float((chip.run(tokens) - ref).abs().max()) < 0.05 * float(ref.abs().max()) + 0.01


def test_quantised_noise_free_resnet9_stays_close_to_pytorch(resnet, cifar):
    model, mapping = resnet
    x, _ = cifar
    chip = aimc.program(mapping, device="ideal", strategy="tdp", seed=0)
    with torch.no_grad():
        ref = model(x[:250])
    out = chip.run(x[:250])
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 0.15  # 8-bit PWM inputs, INT8 activations and partial sums, FP16 LDPUs


def test_adc_calibration_follows_each_cores_operating_range(resnet, cifar):
    """``CoreConfig.adc_calibration="operating"`` (the default) fits each core's ADCs over [0, its largest
    calibration current], which the per-core G_max limit keeps below 90% of the 100 uA range; the LDPU's affine
    correction is then the one the fixed-range fit would give for that range, and the chip's converters distort
    less: the quantised noise-free output is closer to PyTorch than with the full-range fit (0.066 vs 0.083 with
    column scaling and the default calibration)."""
    from aimc.chip import CURRENT_HEADROOM, core_adc_range, core_w_max
    from aimc.core import calibrate
    from aimc.core.config import CoreConfig

    model, mapping = resnet
    x, _ = cifar
    cfg = CoreConfig()
    chip = aimc.program(mapping, device="hermes-2dev", strategy="tdp", seed=0, config=cfg)
    device = chip.device
    for layer in mapping.layers.values():
        w_max = core_w_max(layer, device, "tdp", cfg, mapping.spec)
        top = core_adc_range(layer, device, "tdp", cfg, mapping.spec, w_max)
        assert top is not None and top.shape == (layer.tiling.row_blocks, layer.tiling.col_blocks)
        # at least the 5 uA floor; at most the current the per-core G_max limit allows (measured 50-90 uA here)
        limit = CURRENT_HEADROOM * mapping.spec.adc_saturation_uA + 1e-3
        assert bool((top >= 5.0).all()) and bool((top <= limit).all())
        adc = chip.cores[layer.name].adc
        fixed = CoreConfig(calibration_max_fraction=float(top[0, 0]) / mapping.spec.adc_saturation_uA)
        inv_a, beta = calibrate(adc.gain[0, 0], adc.offset[0, 0], mapping.spec, fixed)
        # the range passes through a float here and a float32 tensor in program(): at an ADC whose count at one of
        # the 16 fit points sits at a flooring boundary the two fits can differ by that count (~0.5% of its offset);
        # every other ADC's fit is the same
        for got, want in ((inv_a, adc.inv_alpha[0, 0]), (beta, adc.beta[0, 0])):
            same = torch.isclose(got, want, rtol=1e-4, atol=1e-4)
            assert float(same.float().mean()) >= 0.97
            assert float(((got - want).abs() / want.abs().clamp_min(1e-3)).max()) < 0.01
    with torch.no_grad():
        ref = model(x[:250])
    rel = {}
    for mode in ("operating", "full"):
        ideal = aimc.program(mapping, device="ideal", strategy="tdp", seed=0, config=CoreConfig(adc_calibration=mode))
        rel[mode] = float((ideal.run(x[:250]) - ref).norm() / ref.norm())
    assert rel["operating"] < 0.9 * rel["full"]
    full = aimc.program(
        mapping, device="hermes-2dev", strategy="tdp", seed=0, config=CoreConfig(adc_calibration="full")
    )
    assert torch.equal(full.cores["conv0"].states.g_target, chip.cores["conv0"].states.g_target)
    assert not torch.equal(full.cores["conv0"].adc.inv_alpha, chip.cores["conv0"].adc.inv_alpha)


def test_noisy_runs_differ_by_seed_and_repeat_with_the_same_seed(resnet, cifar):
    _, mapping = resnet
    x, _ = cifar
    chip = aimc.program(mapping, device="hermes-2dev", strategy="tdp", seed=0)
    a = chip.run(x[:16], t=3600.0, seed=1)
    b = chip.run(x[:16], t=3600.0, seed=2)
    c = chip.run(x[:16], t=3600.0, seed=1)
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


def test_save_and_load_give_identical_outputs(resnet, cifar, tmp_path):
    _, mapping = resnet
    x, _ = cifar
    chip = aimc.program(mapping, device="hermes-1dev", strategy="odp", seed=3)
    path = tmp_path / "chip.safetensors"
    chip.save(str(path))
    loaded = aimc.load(str(path))
    assert loaded.strategy == "odp" and loaded.device.name == "hermes-1dev" and loaded.seed == 3
    for mode in ("four-phase", "one-phase"):
        assert torch.equal(chip.run(x[:8], 86400.0, mode, seed=5), loaded.run(x[:8], 86400.0, mode, seed=5))


def test_corrupted_and_foreign_files_are_rejected(resnet, tmp_path):
    _, mapping = resnet
    chip = aimc.program(mapping, device="hermes-2dev", strategy="tdp", seed=0)
    path = tmp_path / "chip.safetensors"
    chip.save(str(path))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(aimc.CorruptFileError, match="not a readable safetensors"):
        aimc.load(str(truncated))
    altered = bytearray(data)
    altered[-100] ^= 0xFF
    bad = tmp_path / "altered.safetensors"
    bad.write_bytes(bytes(altered))
    with pytest.raises(aimc.CorruptFileError, match="checksum"):
        aimc.load(str(bad))
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(aimc.CorruptFileError, match="not a saved aimc chip"):
        aimc.load(str(foreign))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(aimc.CorruptFileError):
        aimc.load(str(garbage))


def test_networks_as_people_write_them_match_pytorch_noise_free():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding="same", bias=False),
        nn.ReLU(),
        nn.BatchNorm2d(16),  # BN after the activation
        nn.Conv2d(16, 32, 3, stride=2, padding="valid"),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 64),
        nn.ReLU(),
        nn.BatchNorm1d(64),
        nn.Linear(64, 10),
        nn.Softmax(dim=1),
    )
    x = torch.randn(32, 3, 16, 16)
    net.train()
    with torch.no_grad():
        net(x)
    net.eval()
    mapping = aimc.compile(net, example_input=x)
    chip = aimc.program(mapping, device="ideal", strategy="tdp", seed=0)
    with torch.no_grad():
        ref = net(x)
    assert float((chip.run(x, quantize=False) - ref).abs().max()) < 1e-5
    kinds = [op.kind for op in mapping.ops]
    assert kinds.count("affine") == 2  # a BN after an activation stays an LDPU pass (before a conv or a Linear)


def test_run_rejects_bad_inputs(resnet):
    _, mapping = resnet
    chip = aimc.program(mapping, device="ideal", strategy="tdp", seed=0)
    with pytest.raises(ValidationError, match="finite"):
        chip.run(torch.full((1, 3, 32, 32), float("inf")))
    with pytest.raises(ValidationError, match="t must be"):
        chip.run(torch.zeros(1, 3, 32, 32), t=-1.0)
    with pytest.raises(aimc.errors.UnknownNameError, match="mode"):
        chip.run(torch.zeros(1, 3, 32, 32), mode="eight-phase")
    with pytest.raises(ValidationError, match="1 input"):
        chip.run((torch.zeros(1, 3, 32, 32), torch.zeros(1)))
    with pytest.raises(ValidationError, match="empty"):
        chip.run(torch.zeros(0, 3, 32, 32))
    with pytest.raises(aimc.errors.ArgumentTypeError, match="mapping"):
        aimc.program("resnet9", "ideal")  # type: ignore[arg-type]


def test_every_op_kind_of_a_mapping_has_its_computation():
    """The runtime computes every op kind a mapping may hold: the analog layers on their cores, the rest from the
    table of aimc.chip.ops, the input and output in the run loop."""
    from aimc.chip.ops import OPS
    from aimc.compiler.mapping import OP_KINDS

    assert set(OPS) | {"input", "output", "analog", "lstm", "gru"} == set(OP_KINDS)
