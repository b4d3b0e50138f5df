"""Grouped/depthwise convolutions split at group boundaries: every output column is finished by the core that holds it.

Checks that the split keeps the network's function (the ideal device without converters is the PyTorch model, with a
residual add after the depthwise block), that no column of such a layer sends partial sums (no INT8 partial-sum
rounding, no link transfers, no hops in the perf model), that the converters' error is smaller than with the equal
split and its partial-sum chain, and that the mapping saves, loads and validates.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aimc
from aimc.compiler.tiling import Tiling
from aimc.perf.workload import layer_work

CHIP = aimc.ChipSpec.hermes()


class _Residual(nn.Module):
    """A stem conv, a depthwise conv over 64 channels (576 rows: 3 cores), batch norm, a pointwise conv with a
    residual add, and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)
        self.bn = nn.BatchNorm2d(64)
        self.pw = nn.Conv2d(64, 64, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        y = torch.relu(self.bn(self.dw(h)))
        y = torch.relu(self.pw(y) + h)
        return self.fc(torch.flatten(self.pool(y), 1))


@pytest.fixture(scope="module")
def net_and_data():
    torch.manual_seed(0)
    net = _Residual()
    x = torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    net.train()
    with torch.no_grad():
        net(x)  # batch-norm statistics of the inputs
    return net.eval(), x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_depthwise_layer_is_split_at_channel_boundaries(net_and_data):
    net, x = net_and_data
    mapping = aimc.compile(net, calibration=x, progress=False)
    dw = mapping.layers["dw"]
    t = dw.tiling
    # 64 channels x 9 rows = 576 rows: 28 channels fit in 256 rows, so 3 blocks, filled evenly with 22 channels each
    assert (t.row_blocks, t.block_inputs) == (3, 22 * 9)
    assert dw.whole_columns and not dw.chained
    w = dw.weight
    for column in range(t.outputs):  # every column's weights lie in the row block of its channel
        blocks = {int(i) // t.block_inputs for i in torch.nonzero(w[column]).flatten()}
        assert blocks == {column // 22}
    assert not [link for link in mapping.links_used() if link["layer"] == "dw"]
    assert layer_work(dw, 1).hops == 0
    assert Tiling.split_groups(576, 64, 64, CHIP) == t
    assert Tiling.split_groups(576, 64, 1, CHIP) is None  # not grouped: the equal split
    assert Tiling.split_groups(16 * 300, 16, 16, CHIP) is None  # a group's 300 rows exceed a crossbar
    # ungrouped layers keep the equal split and their chains
    assert not mapping.layers["stem"].whole_columns and not mapping.layers["stem"].chained


def test_split_network_computes_the_pytorch_model(net_and_data):
    """Ideal device without converters: float arithmetic, within 1e-4 of the output's largest value; with the
    converters, within the rounding of the 8-bit grids (5 % of the norm; measured about 1 %)."""
    net, x = net_and_data
    chip = aimc.program(aimc.compile(net, calibration=x, progress=False), "ideal", "tdp", seed=0)
    with torch.no_grad():
        ref = net(x)
    exact = chip.run(x, quantize=False)
    assert float((exact - ref).abs().max()) < 1e-4 * float(ref.abs().max())
    assert _rel(chip.run(x, seed=0), ref) < 0.05


def test_no_partial_sums_means_less_rounding_than_the_chain(net_and_data, monkeypatch):
    """The same depthwise layer on the equal split (each core's share of a channel's column passed on as an INT8
    partial sum, then converted again at the end) loses more to the converters than on the group split (one
    conversion per output). Ideal device, no read noise, the depthwise layer's own output."""
    net, x = net_and_data
    dw = nn.Sequential(net.dw, net.bn)
    h = torch.relu(net.stem(x)).detach()
    with torch.no_grad():
        ref = dw(h)
    split = aimc.compile(dw, calibration=h, progress=False)
    errors = {"groups": _rel(aimc.program(split, "ideal", "tdp", seed=0).run(h, seed=0, read_noise=False), ref)}
    monkeypatch.setattr(Tiling, "split_groups", classmethod(lambda cls, *args: None))
    chained = aimc.compile(dw, calibration=h, progress=False)
    assert chained.layers["0"].chained
    errors["chain"] = _rel(aimc.program(chained, "ideal", "tdp", seed=0).run(h, seed=0, read_noise=False), ref)
    assert errors["groups"] < errors["chain"], errors


def test_split_mapping_saves_loads_and_validates(net_and_data, tmp_path):
    net, x = net_and_data
    chip = aimc.program(aimc.compile(net, calibration=x, progress=False), "hermes-2dev", "tdp", seed=0)
    chip.save(tmp_path / "chip.safetensors")
    loaded = aimc.load(tmp_path / "chip.safetensors")  # validates the tiling against the chip's split
    assert loaded.mapping.layers["dw"].whole_columns
    assert torch.equal(loaded.run(x[:4], t=3600.0, seed=5), chip.run(x[:4], t=3600.0, seed=5))
