"""aimc.AnalogModule (chip.as_module()): a programmed chip as a torch.nn.Module in a user's PyTorch code."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import aimc
from aimc.errors import AimcError, ArgumentTypeError, UnknownNameError, ValidationError


@pytest.fixture(scope="module")
def problem():
    """A small MLP on 2 cores, its inputs (256, 16), labels from the float network, and a chip (TDP, hermes-2dev)."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        x = torch.randn(256, 16, generator=g)
        y = net(x).argmax(1)
    mapping = aimc.compile(net, example_input=x[:64])
    chip = aimc.program(mapping, device="hermes-2dev", strategy="tdp", seed=0)
    return net, x, y, chip


def test_first_call_equals_chip_run_and_later_calls_draw_fresh_reproducible_noise(problem):
    _, x, _, chip = problem
    module = chip.as_module(t=3600.0, mode="four-phase", seed=7)
    assert isinstance(module, aimc.AnalogModule) and isinstance(module, nn.Module)
    first = module(x)
    assert torch.equal(first, chip.run(x, t=3600.0, mode="four-phase", seed=7))
    second = module(x)
    assert not torch.equal(first, second)  # fresh read noise, as on the real chip
    assert torch.equal(second, chip.run(x, t=3600.0, mode="four-phase", seed=module.call_seed(1)))
    assert module.calls == 2
    module.reset()
    assert module.calls == 0
    assert torch.equal(module(x), first) and torch.equal(module(x), second)
    # a new module with the same seed gives the same sequence; another seed another one
    again = chip.as_module(seed=7)
    assert torch.equal(again(x), first) and torch.equal(again(x), second)
    other = chip.as_module(seed=8)
    assert not torch.equal(other(x), first)
    # setting the seed restarts the sequence from that seed
    other.seed = 7
    assert other.calls == 0 and torch.equal(other(x), first)
    assert len({module.call_seed(k) for k in range(100)} | {again.call_seed(k) for k in range(100)}) == 100
    assert module.call_seed(0) == 7 and chip.as_module(seed=8).call_seed(1) != module.call_seed(1)


def test_no_parameters_no_grad_and_train_eval_change_nothing(problem):
    _, x, _, chip = problem
    module = chip.as_module(seed=3)
    assert list(module.parameters()) == [] and len(module.state_dict()) == 0
    out = module.train()(x)
    assert module.training and not out.requires_grad
    module.reset()
    with torch.no_grad():
        assert torch.equal(module.eval()(x), out)
    assert not module.training


def test_user_eval_loop_with_a_dataloader(problem):
    _, x, y, chip = problem
    model = chip.as_module(t=86400.0, seed=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in loader:
            correct += int((model(xb).argmax(1) == yb).sum())
    accuracy = correct / len(x)
    assert accuracy >= 0.8  # labels of the float network; the chip is 1 day after programming
    # the same accuracy from chip.run with the seeds of calls 0..3
    expected = sum(
        int((chip.run(x[i : i + 64], t=86400.0, seed=model.call_seed(k)).argmax(1) == y[i : i + 64]).sum())
        for k, i in enumerate(range(0, 256, 64))
    )
    assert correct == expected and model.calls == 4


def test_t_mode_and_run_options_take_effect(problem):
    _, x, _, chip = problem
    module = chip.as_module(seed=2)
    module.t = 31_536_000  # one year
    module.mode = "one-phase"
    assert module.t == 31_536_000.0 and module.mode == "one-phase"
    assert torch.equal(module(x), chip.run(x, t=31_536_000.0, mode="one-phase", seed=2))
    module.reset()
    module.t = 3600.0
    assert not torch.equal(module(x), chip.run(x, t=31_536_000.0, mode="one-phase", seed=2))
    module.mode = "four-phase"
    assert not torch.equal(module(x), chip.run(x, t=3600.0, mode="one-phase", seed=module.call_seed(1)))
    module.t = 31_536_000
    module.mode = "one-phase"
    assert "t=3.1536e+07" in repr(module) and "mode='one-phase'" in repr(module)
    ideal = chip.as_module(quantize=False, seed=5)
    assert torch.equal(ideal(x), chip.run(x, quantize=False, seed=5))
    assert "quantize=False" in repr(ideal)


def test_repr_names_the_network_and_the_read_settings(problem):
    _, _, _, chip = problem
    text = repr(chip.as_module(t=60.0, mode="four-phase", seed=4))
    for part in ("AnalogModule(", "network='Sequential'", "t=60", "mode='four-phase'", "seed=4", "pcm='hermes-2dev'"):
        assert part in text


def test_to_returns_the_module_and_moves_the_chip(problem, monkeypatch):
    _, x, _, chip = problem
    module = chip.as_module(seed=0)
    assert module.to("cpu") is module and module.chip is chip  # already there: nothing copied
    assert module.to(torch.device("cpu")) is module and module.cpu() is module
    assert nn.Sequential(module).to("cpu")[0] is module
    assert module.to(torch.float64) is module and module.chip is chip  # dtypes leave the chip alone
    assert torch.equal(module(x), chip.run(x, seed=0))
    # another device: the chip is replaced by chip.to(device), also when a parent module is moved (CUDA may be
    # missing here, so the move is recorded rather than done)
    moved = []
    monkeypatch.setattr(aimc.ProgrammedChip, "to", lambda self, device: moved.append(torch.device(device)) or self)
    assert module.to("meta") is module
    nn.Sequential(module).to(torch.device("meta"))
    assert moved == [torch.device("meta"), torch.device("meta")]


def test_bad_settings_raise_aimc_errors_that_name_them(problem):
    _, x, _, chip = problem
    with pytest.raises(UnknownNameError, match="mode must be one of 'one-phase', 'four-phase'"):
        chip.as_module(mode="eight-phase")
    with pytest.raises(ValidationError, match=r"t must be in \[0, inf\], got -1"):
        chip.as_module(t=-1.0)
    module = chip.as_module()
    with pytest.raises(AimcError, match="mode must be one of"):
        module.mode = "two-phase"
    with pytest.raises(ValidationError, match="t must be"):
        module.t = -5
    with pytest.raises(ValidationError, match="t must be finite"):
        module.t = float("nan")
    with pytest.raises(ValidationError, match="seed must be"):
        module.seed = -1
    with pytest.raises(ArgumentTypeError, match="seed must be an int"):
        module.seed = 1.5
    with pytest.raises(ArgumentTypeError, match=r"unknown option.*quantise.*allowed: .*quantize"):
        chip.as_module(quantise=False)
    with pytest.raises(ArgumentTypeError, match=r"chip must be an aimc\.ProgrammedChip"):
        aimc.AnalogModule(object())
    assert module.t == 3600.0 and module.mode == "four-phase" and module.seed == 0  # unchanged by the failures
    with pytest.raises(ValidationError, match="finite"):
        module(torch.full_like(x, float("nan")))
    assert module.calls == 0  # a call that raised does not count
