"""Grouped and depthwise Conv2d (groups > 1): placed as the equivalent dense convolution's block-diagonal matrix.

Checks that the layer matrix is that expansion in the same im2col order as an ungrouped conv's, that the chip with
the ideal device computes what PyTorch computes (exactly without the converters, within the converters' rounding
with them), and that the mapping reports the utilisation the zeros cost.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aimc
from aimc.compiler.layout import layer_rows
from aimc.compiler.validate import check_mapping
from aimc.errors import ValidationError

SPEC = aimc.ChipSpec.hermes()
CELLS = SPEC.tile_rows * SPEC.tile_cols


def _dw_separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
    """MobileNet's block: depthwise 3x3 (stride 1 or 2) + BN + ReLU, pointwise 1x1 + BN + ReLU."""
    return [
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


def _net() -> nn.Sequential:
    """Stem, a groups=2 conv, two depthwise-separable blocks (stride 1 and 2), pooling, a classifier."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, 1, 1, groups=2),  # "2": 2 groups of 8 -> 16 channels
        nn.BatchNorm2d(32),
        nn.ReLU(),
        *_dw_separable(32, 32, 1),  # "5" depthwise, "8" pointwise
        *_dw_separable(32, 64, 2),  # "11" depthwise (stride 2), "14" pointwise
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    net.train()
    with torch.no_grad():  # batch-norm statistics of the inputs (realistic activation scales)
        net(x)
    return net.eval()


GROUPED = {"2": 2, "5": 32, "11": 32}


@pytest.fixture(scope="module")
def compiled():
    net = _net()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    return net, x, aimc.compile(net, example_input=x)


def _hand_expanded(conv: nn.Conv2d) -> torch.Tensor:
    """The dense ``(out_channels, in_channels·kh·kw)`` matrix of a grouped conv, built one output channel at a time:
    channel o of group o // (out/groups) has its weights at its group's input channels, zero elsewhere."""
    w = conv.weight.detach()
    out_c, per_group, kh, kw = w.shape
    per_out = out_c // conv.groups
    dense = torch.zeros(out_c, conv.in_channels, kh, kw)
    for o in range(out_c):
        g = o // per_out
        dense[o, g * per_group : (g + 1) * per_group] = w[o]
    return dense.reshape(out_c, -1)


def test_grouped_and_depthwise_layers_hold_the_block_diagonal_dense_matrix(compiled):
    net, x, _ = compiled
    mapping = aimc.compile(net, calibration=x, column_scaling=False)  # the weights as they are, columns unscaled
    assert {name: layer.groups for name, layer in mapping.layers.items() if layer.groups > 1} == GROUPED
    for name, groups in GROUPED.items():
        conv, layer = net[int(name)], mapping.layers[name]
        assert layer.kind == "conv2d" and layer.geometry["groups"] == groups
        assert layer.shape == (conv.in_channels * 9, conv.out_channels)
        expected = _hand_expanded(conv)
        assert torch.equal(layer.weight, expected)
        # zeros outside each group's block: a depthwise channel keeps only its own 3x3 kernel
        assert int((layer.weight != 0).sum()) <= layer.weight_count == conv.weight.numel()
        # the dense matrix computes the grouped convolution in the runtime's im2col order (layer_rows)
        a = torch.randn(2, conv.in_channels, 6, 6, generator=torch.Generator().manual_seed(3))
        ref = F.conv2d(a, conv.weight.detach(), None, conv.stride, conv.padding, groups=groups)
        assert torch.allclose(
            F.conv2d(a, expected.reshape(conv.out_channels, conv.in_channels, 3, 3), None, conv.stride, conv.padding),
            ref,
            atol=1e-5,
        )
        rows = layer_rows(layer, a) @ layer.weight.T  # (N·H·W, C_out), channels last
        assert torch.allclose(rows, ref.permute(0, 2, 3, 1).reshape(-1, conv.out_channels), atol=1e-5)
    assert mapping.layers["0"].groups == 1 and "groups" in mapping.layers["0"].geometry


def test_ideal_chip_computes_the_pytorch_model(compiled):
    """Without the converters the chip's ideal device is float arithmetic (max error 1e-4 of the output's largest
    value, as the other networks' conformance tests); with them every conversion rounds to an 8-bit grid.

    Tolerance with the converters: each conversion rounds to at most half a step of 1/127 of its full scale
    (0.39 %): the PWM input and INT8 output of each of the 7 layers and the INT8 partial sum of each extra row block
    (the two depthwise layers have 2), 16 conversions. If every rounding error lined up and the output filled its
    range, the output would be off by 16 x 0.39 % = 6.3 % of its norm; that is the bound (measured: 0.7 %).
    """
    net, x, mapping = compiled
    chip = aimc.program(mapping, "ideal", "tdp", seed=0)
    with torch.no_grad():
        ref = net(x)
    exact = chip.run(x, quantize=False)
    assert float((exact - ref).abs().max()) < 1e-4 * float(ref.abs().max()) + 1e-5
    conversions = sum(2 + layer.tiling.row_blocks - 1 for layer in mapping.layers.values())
    assert conversions == 16
    bound = conversions * 0.5 / 127
    out = chip.run(x)
    assert float((out - ref).norm() / ref.norm()) < bound
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.9


def test_cores_whose_block_is_all_zero_program_and_run():
    """A grouped conv over several column blocks leaves cores that hold only zeros (here 2 of its 6): they program
    (w_max of an empty block is 1) and add exact zeros to their column chains."""
    torch.manual_seed(4)
    conv = nn.Conv2d(64, 512, 3, padding=1, groups=2)
    x = torch.randn(4, 64, 4, 4, generator=torch.Generator().manual_seed(5))
    mapping = aimc.compile(nn.Sequential(conv), example_input=x)
    layer = mapping.layers["0"]
    t = layer.tiling
    assert (t.row_blocks, t.col_blocks) == (3, 2)
    w = layer.weight.reshape(t.col_blocks, t.block_outputs, t.row_blocks, t.block_inputs)
    assert int((w.abs().amax(dim=(1, 3)) == 0).sum()) == 2
    assert layer.utilization == pytest.approx(layer.tiling.utilization / 2)
    chip = aimc.program(mapping, "ideal", "tdp", seed=0)
    with torch.no_grad():
        ref = conv(x)
    assert float((chip.run(x, quantize=False) - ref).abs().max()) < 1e-4 * float(ref.abs().max()) + 1e-5


def test_utilisation_counts_only_the_weights_in_the_groups_blocks(compiled):
    _, _, mapping = compiled
    dw = mapping.layers["5"]  # depthwise 3x3 over 32 channels: a 288 x 32 matrix on 2 cores of 144 x 32
    assert dw.tiling.cores == 2
    assert dw.weight_count == 32 * 9
    assert dw.utilization == pytest.approx(32 * 9 / (2 * CELLS))  # 0.22 %
    assert dw.tiling.utilization == pytest.approx(288 * 32 / (2 * CELLS))  # the occupied area, zeros included
    assert dw.utilization == pytest.approx(dw.tiling.utilization / 32)  # 1 / in_channels of the matrix
    g2 = mapping.layers["2"]
    assert g2.utilization == pytest.approx(g2.tiling.utilization / 2)
    for name, layer in mapping.layers.items():  # ungrouped layers: the occupied share, as before
        if name not in GROUPED:
            assert layer.utilization == pytest.approx(layer.tiling.utilization, rel=1e-12)
    described = {row["name"]: row for row in mapping.describe()["layers"]}
    assert described["5"]["utilization"] == pytest.approx(dw.utilization)
    assert described["5"]["weights"] == 288 and described["5"]["occupied"] == pytest.approx(dw.tiling.utilization)
    summary = mapping.summary()
    row = next(line for line in summary.splitlines() if line.startswith("5 "))
    assert row.split()[-2] == f"{100 * dw.utilization:.1f}%" == "0.2%"
    assert "5: groups=32, 288 of the 9,216 matrix entries are weights" in summary


def test_grouped_mapping_saves_loads_and_validates(compiled, tmp_path):
    _, x, mapping = compiled
    chip = aimc.program(mapping, "ideal", "tdp", seed=0)
    chip.save(tmp_path / "chip.safetensors")
    loaded = aimc.load(tmp_path / "chip.safetensors")
    assert loaded.mapping.layers["5"].groups == 32
    assert torch.equal(loaded.run(x[:4], quantize=False), chip.run(x[:4], quantize=False))
    loaded.mapping.layers["5"].geometry["groups"] = 5  # does not divide 32 channels
    with pytest.raises(ValidationError, match="groups"):
        check_mapping(loaded.mapping)
