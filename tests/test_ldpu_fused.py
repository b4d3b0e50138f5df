"""The compiled LDPU chain and input quantisation of a chip run (simulation numerics).

Both must give the PyTorch path's numbers bit for bit: the LDPU chain those of ``aimc.chip.analog.ldpu_chain`` (FP16
operations in ``torch.float16``), the input levels those of ``quantize_input(...).to(torch.bfloat16)``; a whole chip
run must not change when they are switched off.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aimc
from aimc.chip.analog import ldpu_chain
from aimc.compiler.mapping import MappedLayer
from aimc.compiler.tiling import Tiling
from aimc.core.pwm import quantize_input
from aimc.digital import ldpu_fused
from aimc.digital.levels import pwm_levels_bf16
from aimc.errors import ArgumentTypeError, ValidationError
from aimc.spec import ChipSpec

pytestmark = pytest.mark.skipif(not ldpu_fused.available(), reason="numba is not installed")


def _layer(r: int, c: int, m: int, n_out: int, g: torch.Generator, **flags: object) -> MappedLayer:
    tiling = Tiling(r * 8, n_out, r, c, 8, m, 256, 256)
    return MappedLayer(
        "layer",
        "linear",
        torch.zeros(n_out, r * 8),
        torch.randn(n_out, generator=g) * 0.7,
        torch.randn(n_out, generator=g) * 0.3,
        tiling,
        {},
        psum_range=0.9,
        out_range=1.3,
        **flags,  # type: ignore[arg-type]
    )


def _fp16_outputs(shape: tuple[int, ...], spread: float, g: torch.Generator) -> torch.Tensor:
    """Core outputs as the converters give them (FP16 values) with zeros of both signs, the largest FP16 value and
    a subnormal in the first row."""
    y = (torch.randn(shape, generator=g) * spread).half().float()
    y[..., 0, :5] = torch.tensor([0.0, -0.0, 65504.0, -65504.0, 2.0**-20])
    return y


def _bits(v: torch.Tensor) -> torch.Tensor:
    return v.contiguous().view(torch.int32)


@pytest.mark.parametrize(("r", "c", "m", "n_out"), [(1, 1, 37, 37), (1, 2, 16, 29), (3, 1, 24, 24), (8, 2, 16, 30)])
@pytest.mark.parametrize(("relu", "relu2"), [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("with_addend", [False, True])
def test_fused_chain_gives_the_pytorch_chains_bits(r, c, m, n_out, relu, relu2, with_addend):
    g = torch.Generator().manual_seed(100 * r + 10 * c + 2 * relu + relu2)
    layer = _layer(r, c, m, n_out, g, relu=relu, relu2=relu2, add="a" if with_addend else None)
    layer.add_at_chain_head = with_addend and r > 1  # as the compiler fuses a residual into a column chain
    rows = 203
    scale16 = F.pad(layer.scale, (0, c * m - n_out)).reshape(c, m).half().float()
    bias16 = F.pad(layer.bias, (0, c * m - n_out)).reshape(c, m).half().float()
    for spread in (0.05, 1.0, 300.0):  # small values, typical ones, and INT8 saturation on every link
        y = _fp16_outputs((r, c, rows, m), spread, g)
        addend = torch.randint(-128, 128, (rows, n_out), generator=g).float() * (2.1 / 127) if with_addend else None
        add_c = None if addend is None else F.pad(addend, (0, c * m - n_out)).reshape(rows, c, m).permute(1, 0, 2)
        ref = ldpu_chain(layer, y.half(), add_c, True).permute(1, 0, 2).reshape(rows, -1)[:, :n_out]
        out = torch.full((rows, n_out), float("nan"))
        add3 = None if addend is None else addend.view(rows, 1, n_out)
        ldpu_fused.ldpu_chain(y, scale16, bias16, add3, out, relu=relu, relu2=relu2, psum_range=0.9, out_range=1.3)
        assert torch.equal(torch.isnan(ref), torch.isnan(out))
        keep = ~torch.isnan(ref)
        assert torch.equal(_bits(ref.float())[keep], _bits(out)[keep])  # the sign of a zero included
        codes = torch.round(out[keep] / (1.3 / 127))
        assert float(codes.min()) >= -128 and float(codes.max()) <= 127
        if spread == 300.0:
            assert float(codes.max()) == 127  # saturated
            if not (relu or relu2):
                assert float(codes.min()) == -128


def test_fused_chain_reads_an_addend_with_any_strides():
    g = torch.Generator().manual_seed(3)
    layer = _layer(2, 1, 40, 40, g, relu=True, add="a", add_at_chain_head=True)
    image = torch.randint(-128, 128, (3, 40, 5, 6), generator=g).float() * (1.7 / 127)
    y = _fp16_outputs((2, 1, 3 * 30, 40), 1.0, g)
    scale16, bias16 = layer.scale.half().float().view(1, 40), layer.bias.half().float().view(1, 40)
    rows = image.permute(0, 2, 3, 1).reshape(-1, 40)
    ref = ldpu_chain(layer, y.half(), rows.unsqueeze(0), True)[0]
    for img in (image, image.contiguous(memory_format=torch.channels_last)):
        out = torch.empty(90, 40)
        view = img.permute(0, 2, 3, 1).reshape(3, 30, 40)
        ldpu_fused.ldpu_chain(y, scale16, bias16, view, out, relu=True, relu2=False, psum_range=0.9, out_range=1.3)
        assert torch.equal(_bits(out), _bits(ref))


def test_fused_chain_refuses_bad_arguments():
    y, reg, out = torch.zeros(2, 1, 4, 8), torch.ones(1, 8), torch.empty(4, 8)
    kw = {"relu": False, "relu2": False, "psum_range": 1.0, "out_range": 1.0}
    with pytest.raises(ArgumentTypeError, match="y must be a torch"):
        ldpu_fused.ldpu_chain(y.half(), reg, reg, None, out, **kw)
    with pytest.raises(ValidationError, match="scale and bias must have shape"):
        ldpu_fused.ldpu_chain(y, torch.ones(1, 7), reg, None, out, **kw)
    with pytest.raises(ValidationError, match="out must have shape"):
        ldpu_fused.ldpu_chain(y, reg, reg, None, torch.empty(4, 9), **kw)
    with pytest.raises(ValidationError, match="addend must have shape"):
        ldpu_fused.ldpu_chain(y, reg, reg, torch.zeros(1, 3, 8), out, **kw)
    with pytest.raises(ValidationError, match="out_range must be a finite number > 0"):
        ldpu_fused.ldpu_chain(y, reg, reg, None, out, **{**kw, "out_range": 0.0})
    with pytest.raises(ArgumentTypeError, match="relu must be a bool"):
        ldpu_fused.ldpu_chain(y, reg, reg, None, out, **{**kw, "relu": 1})


def test_input_levels_equal_quantize_input_in_bfloat16():
    g = torch.Generator().manual_seed(5)
    spec = ChipSpec.hermes()
    x = torch.randn(3, 7, 9, 11, generator=g) * 1.5  # beyond x_range too: saturates
    x[0, 0, 0, :4] = torch.tensor([0.5, 1.5, -2.5, -0.0]) / 127.0  # ties: half to even
    for x_range in (1.0, 0.37):
        ref = quantize_input(x, x_range, spec).to(torch.bfloat16)
        for v in (x, x.contiguous(memory_format=torch.channels_last), x[:, ::2], x.transpose(2, 3)):
            expect = ref[:, ::2] if v.shape[1] == 4 else (ref.transpose(2, 3) if v.shape[2] == 11 else ref)
            out = pwm_levels_bf16(v, x_range, spec.input_levels)
            assert out.is_contiguous()
            assert torch.equal(out.view(torch.int16), expect.contiguous().view(torch.int16))
            for ph, pw in ((1, 1), (2, 0), (0, 3)):  # with a convolution's zero padding
                out = pwm_levels_bf16(v, x_range, spec.input_levels, (ph, pw))
                assert torch.equal(out.view(torch.int16), F.pad(expect, (pw, pw, ph, ph)).view(torch.int16))
    with pytest.raises(ArgumentTypeError, match="4-d float32 CPU tensor"):
        pwm_levels_bf16(x.double(), 1.0)
    with pytest.raises(ValidationError, match="x_range must be a finite number > 0"):
        pwm_levels_bf16(x, -1.0)
    with pytest.raises(ValidationError, match="padding must be two ints"):
        pwm_levels_bf16(x, 1.0, 127, (1, -1))


class _Blocks(nn.Module):
    """Every LDPU variant the compiler fuses: ReLU, add and second ReLU on one core; a residual at the head of a
    two-core column chain; two column blocks; a two-core linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)  # K = 144: one core
        self.c3, self.b3 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.c4, self.b4 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)  # K = 288: two row blocks
        self.c5 = nn.Conv2d(32, 300, 1)  # 300 outputs: two column blocks
        self.fc = nn.Linear(300, 10)  # K = 300: two row blocks
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.b1(self.c1(x)))
        b = F.relu(F.relu(self.b2(self.c2(a))) + a)
        c = F.relu(self.b3(self.c3(b)))
        d = F.max_pool2d(F.relu(self.b4(self.c4(c)) + c), 2)
        e = F.relu(self.c5(d))
        return self.fc(self.pool(e).flatten(1))


@pytest.fixture(scope="module")
def blocks_chip():
    torch.manual_seed(0)
    net = _Blocks()
    x = torch.randn(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    net.train()
    with torch.no_grad():
        net(x)
    net.eval()
    mapping = aimc.compile(net, example_input=x)
    return aimc.program(mapping, "hermes-2dev", "tdp", seed=0), x


def test_the_test_network_has_every_ldpu_variant(blocks_chip):
    layers = blocks_chip[0].mapping.layers
    variants = {(lay.tiling.row_blocks > 1, lay.tiling.col_blocks > 1, lay.relu, lay.add is not None, lay.relu2)
                for lay in layers.values()}  # fmt: skip
    assert (False, False, True, True, True) in variants  # relu, add, relu2 on one core
    assert any(lay.add_at_chain_head and lay.tiling.row_blocks > 1 for lay in layers.values())
    assert any(v[1] for v in variants) and any(v[0] and v[3] is False for v in variants)
    assert [op.kind for op in blocks_chip[0]._fusable_pools(True).values()] == ["maxpool2d"]  # pooled in the pass


@pytest.mark.parametrize(("kernel", "stride"), [((2, 2), (2, 2)), ((3, 2), (2, 1)), ((4, 4), (4, 4))])
def test_pooling_after_the_chain_equals_max_pool2d(kernel, stride):
    g = torch.Generator().manual_seed(9)
    src = torch.randint(-3, 4, (3, 8, 9, 19), generator=g).float() * 0.5  # many ties, zeros of both signs
    src[src == 0] = torch.where(torch.rand(int((src == 0).sum()), generator=g) > 0.5, 0.0, -0.0)
    src[0, 1, 2, :3] = float("nan")
    ref = F.max_pool2d(src.permute(0, 3, 1, 2), kernel, stride).permute(0, 2, 3, 1)
    out = torch.empty(ref.shape)
    ldpu_fused.max_pool_channels_last(src, out, kernel, stride)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    keep = ~torch.isnan(ref)
    assert torch.equal(_bits(out)[keep], _bits(ref)[keep])
    with pytest.raises(ValidationError, match="out has shape"):
        ldpu_fused.max_pool_channels_last(src, torch.empty(3, 1, 1, 19), kernel, stride)
    with pytest.raises(ValidationError, match="kernel and stride must be two ints"):
        ldpu_fused.max_pool_channels_last(src, out, (0, 2), stride)


@pytest.mark.parametrize("mode", ["four-phase", "one-phase"])
def test_chip_runs_the_same_with_and_without_the_fused_chain(blocks_chip, monkeypatch, mode):
    chip, x = blocks_chip
    fast = chip.run(x, t=3600.0, mode=mode, seed=4)
    ideal_fast = chip.run(x, mode=mode, seed=4, quantize=False)
    monkeypatch.setattr(ldpu_fused, "available", lambda: False)
    assert torch.equal(chip.run(x, t=3600.0, mode=mode, seed=4), fast)
    assert torch.equal(chip.run(x, mode=mode, seed=4, quantize=False), ideal_fast)  # not-quantised: untouched


class _Lstm(nn.Module):
    """An LSTM layer of two row blocks (K = 200 + 70) and two column blocks (4 x 70 gates)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(200, 70, batch_first=True)
        self.fc = nn.Linear(70, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out)


def test_lstm_runs_the_same_with_and_without_the_fused_chain(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 200, generator=torch.Generator().manual_seed(1))
    mapping = aimc.compile(_Lstm().eval(), example_input=x)
    tiling = mapping.layers["lstm"].tiling
    assert (tiling.row_blocks, tiling.col_blocks) == (2, 2)
    chip = aimc.program(mapping, "hermes-2dev", "tdp", seed=0)
    fast = chip.run(x, seed=2)
    monkeypatch.setattr(ldpu_fused, "available", lambda: False)
    assert torch.equal(chip.run(x, seed=2), fast)
