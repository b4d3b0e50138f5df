"""compile(): the chip paper's placements, layer matrices, fusion, user networks, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aimc
from aimc.compiler import UnsupportedLayerError
from aimc.compiler.topology import Topology
from aimc.errors import ArgumentTypeError, ValidationError
from aimc.models import example_input, get_model

SPEC = aimc.ChipSpec.hermes()


@pytest.fixture(scope="module")
def maps():
    return {
        name: aimc.compile(get_model(name), example_input=example_input(name), name=name)
        for name in ("resnet9", "char-lstm", "caption-lstm")
    }


def test_reference_networks_use_the_papers_core_counts(maps):
    assert maps["resnet9"].cores_used == 40
    assert maps["char-lstm"].cores_used == 26
    assert maps["caption-lstm"].cores_used == 64


def test_layer_matrices_equal_spec_section_3(maps):
    r9 = {name: layer.shape for name, layer in maps["resnet9"].layers.items()}
    assert r9 == {
        "conv0": (27, 56),
        "conv1": (504, 112),
        "conv2": (1008, 112),
        "conv3": (1008, 112),
        "conv4": (1008, 224),
        "conv5": (2016, 224),
        "conv6": (2016, 224),
        "conv7": (2016, 224),
        "fc": (224, 10),
    }
    # LSTMs: input and hidden matrices stacked (128+504 or 504+504 rows x 4·504 gates), then the output layer
    assert {n: layer.shape for n, layer in maps["char-lstm"].layers.items()} == {"lstm": (632, 2016), "fc": (504, 50)}
    assert {n: layer.shape for n, layer in maps["caption-lstm"].layers.items()} == {
        "lstm": (1008, 2016),
        "fc": (504, 4064),
    }
    t = maps["resnet9"].layers["conv7"].tiling
    assert (t.row_blocks, t.block_inputs, t.block_outputs) == (8, 252, 224)  # 2016x224 -> 8 x 252x224
    assert t.utilization == pytest.approx(0.861, abs=0.001)  # Table I: 86%
    assert maps["caption-lstm"].layers["lstm"].tiling.utilization == pytest.approx(0.969, abs=0.001)  # 97%


def test_resnet9_deep_layers_each_fill_a_core_row(maps):
    topo = Topology.of(SPEC)
    for name in ("conv5", "conv6", "conv7"):
        rows = {topo.position(c)[0] for c in maps["resnet9"].layers[name].core_list()}
        assert len(rows) == 1 and len(maps["resnet9"].layers[name].core_list()) == 8


def test_lstm_gates_sit_above_the_gdpus_and_aggregate_vertically(maps):
    topo = Topology.of(SPEC)
    for name, rows in (("char-lstm", [1, 2, 3]), ("caption-lstm", [0, 1, 2, 3])):
        cores = maps[name].layers["lstm"].cores
        assert [topo.position(row[0])[0] for row in cores] == rows  # rows 2-4 / 1-4 counting from 1
        for j in range(8):
            assert {topo.position(row[j])[1] for row in cores} == {j}  # one grid column per GDPU slice


def test_every_partial_sum_travels_over_a_direct_link(maps):
    for mapping in maps.values():
        links = mapping.links_used()
        assert links and all(link["kind"] == "on-chip" and link["hops"] == 1 for link in links)


def test_topology_has_at_most_six_neighbours_per_core():
    topo = Topology.of(SPEC)
    assert max(len(topo.neighbours(c)) for c in range(topo.cores)) == SPEC.max_neighbours
    assert all(topo.linked(b, a) for a, b in topo.links())


def test_ldpu_fusion_of_resnet9(maps):
    layers = maps["resnet9"].layers
    assert all(layers[f"conv{i}"].relu for i in (0, 1, 2, 4, 5, 6))
    # residual blocks: the skip is added at the head of the partial-sum chain, ReLU after the full sum
    pools = [op.name for op in maps["resnet9"].ops if op.kind == "maxpool2d"]  # pool1, pool4, pool5, pool7
    for name, skip in (("conv3", pools[0]), ("conv7", pools[2])):
        assert layers[name].add == skip and layers[name].add_at_chain_head and layers[name].relu2
    kinds = [op.kind for op in maps["resnet9"].ops]
    assert "affine" not in kinds and "relu" not in kinds and "add" not in kinds  # all folded into LDPUs


def test_a_network_too_large_for_one_chip_says_how_many_cores_it_needs():
    big = nn.Sequential(nn.Linear(2500, 2000), nn.ReLU(), nn.Linear(2000, 10))  # 5.02 M weights
    x = torch.randn(4, 2500)
    with pytest.raises(ValidationError, match=r"needs 88 cores .* chips=2"):
        aimc.compile(big, example_input=x)
    mapping = aimc.compile(big, example_input=x, chips=2)
    assert mapping.cores_used == 88 and mapping.chips == 2
    assert max(mapping.layers["0"].core_list()) >= SPEC.cores  # reaches onto chip 1
    links = mapping.links_used()
    inter = [lk for lk in links if lk["kind"] == "inter-chip"]
    assert len(inter) == 1 and mapping.chip_of(inter[0]["from"]) != mapping.chip_of(inter[0]["to"])
    assert all(lk["hops"] == 1 for lk in links if lk["kind"] == "on-chip")


@pytest.mark.parametrize(
    ("module", "what"),
    [
        (nn.Sequential(nn.ConvTranspose2d(4, 4, 3)), "transposed convolutions"),
        (nn.Sequential(nn.Conv3d(4, 4, 1)), "not mapped onto the chip's cores"),
    ],
)
def test_weight_layers_the_cores_do_not_take_are_named(module, what):
    x = torch.randn(2, 4, 4, 8, 8) if isinstance(module[0], nn.Conv3d) else torch.randn(2, 4, 8, 8)
    with pytest.raises(UnsupportedLayerError, match=what) as err:
        aimc.compile(module, example_input=x)
    assert "Linear, Conv1d/Conv2d" in str(err.value)


def test_padding_modes_gelu_and_layernorm_run_as_digital_ops():
    module = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.GELU(), nn.LayerNorm(8))
    mapping = aimc.compile(module, example_input=torch.randn(2, 4, 8, 8), progress=False)
    targets = {op.attrs["target"].split(".")[1] for op in mapping.ops if op.kind == "digital"}
    assert {"pad", "gelu", "layer_norm"} <= targets or {"reflection_pad2d", "gelu", "layer_norm"} <= targets


def test_compile_argument_errors():
    with pytest.raises(ArgumentTypeError, match="calibration data"):
        aimc.compile(nn.Linear(4, 4))
    with pytest.raises(ArgumentTypeError, match="model"):
        aimc.compile("resnet9", example_input=torch.randn(2, 4))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="finite"):
        aimc.compile(nn.Linear(4, 4), example_input=torch.full((2, 4), float("nan")))
    with pytest.raises(ValidationError, match="chips"):
        aimc.compile(nn.Linear(4, 4), example_input=torch.randn(2, 4), chips=0)
    with pytest.raises(ValidationError, match="avoid_cores"):
        aimc.compile(nn.Linear(4, 4), example_input=torch.randn(2, 4), avoid_cores=[64])


def test_avoided_cores_are_not_used():
    mapping = aimc.compile(get_model("resnet9"), example_input=example_input("resnet9"), avoid_cores=[0, 17])
    used = {c for layer in mapping.layers.values() for c in layer.core_list()}
    assert mapping.cores_used == 40 and not used & {0, 17}


def test_pooling_can_be_placed_in_the_ldpu():
    mapping = aimc.compile(get_model("resnet9"), example_input=example_input("resnet9"), pooling="ldpu")
    assert {op.attrs["where"] for op in mapping.ops if op.kind == "maxpool2d"} == {"ldpu"}
    with pytest.raises(aimc.errors.UnknownNameError, match="pooling"):
        aimc.compile(get_model("resnet9"), example_input=example_input("resnet9"), pooling="gpu")
