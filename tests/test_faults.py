"""Hardware faults (aimc.faults): stuck devices, dead ADC columns, dead cores and dead links."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import aimc
from aimc import ChipSpec
from aimc.errors import ArgumentTypeError, UnknownNameError, ValidationError
from aimc.faults import STUCK_RESET, STUCK_SET, Faults, parse_faults
from aimc.models import example_input, get_model

from conftest import needs_cifar10


@pytest.fixture(scope="module")
def resnet():
    return get_model("resnet9").eval(), example_input("resnet9")


@pytest.fixture(scope="module")
def healthy(resnet):
    model, x = resnet
    return aimc.compile(model, example_input=x)


def _small_chip_mapping(seed: int = 0, outputs: int = 48, inputs: int = 300):
    """A two-layer MLP of 3 cores (the first layer 2 row blocks) with fixed random weights."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(inputs, outputs), nn.ReLU(), nn.Linear(outputs, 10)).eval()
    x = torch.randn(64, inputs, generator=torch.Generator().manual_seed(seed))
    return net, x, aimc.compile(net, example_input=x)


# ---------------------------------------------------------------------------------------------- the Faults value
def test_parse_faults_reads_every_key_and_round_trips():
    f = parse_faults("stuck_set=0.01, stuck_reset=0.02,dead_core=12,dead_core=3,dead_link=4-3,dead_adc=5:17,seed=7")
    assert (f.stuck_set, f.stuck_reset, f.dead_cores, f.dead_links, f.dead_adc, f.seed) == (
        0.01,
        0.02,
        (3, 12),
        ((3, 4),),
        ((5, 17),),
        7,
    )
    assert parse_faults(f.to_text()).describe() == f.describe()
    half = parse_faults("stuck=0.04")
    assert half.stuck_set == pytest.approx(0.02) and half.stuck_reset == pytest.approx(0.02)
    assert parse_faults("").is_empty and not f.is_empty


@pytest.mark.parametrize(
    ("text", "error", "fragment"),
    [
        ("stuck_set=2", ValidationError, "[0, 1]"),
        ("stuck_set=nan", ValidationError, "[0, 1]"),
        ("stuck_set=0.7,stuck_reset=0.7", ValidationError, "<= 1"),
        ("dead_cor=3", UnknownNameError, "unknown --faults key"),
        ("dead_core", ValidationError, "key=value"),
        ("dead_core=-1", ValidationError, "non-negative integer"),
        ("dead_link=3", ValidationError, "A-B"),
        ("dead_link=3-3", ValidationError, "two different cores"),
        ("dead_adc=5-17", ValidationError, "CORE:COLUMN"),
        ("seed=x", ValidationError, "non-negative integer"),
    ],
)
def test_parse_faults_rejects_bad_text(text, error, fragment):
    with pytest.raises(error, match=fragment.replace("[", r"\[")):
        parse_faults(text)


def test_faults_validate_their_fields():
    with pytest.raises(ValidationError, match="stuck_reset"):
        Faults(stuck_reset=-0.1)
    with pytest.raises(ArgumentTypeError, match="dead_cores"):
        Faults(dead_cores="12")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="integer dtype"):
        Faults(device_map={0: torch.zeros(4, 256, 256)})
    with pytest.raises(ValidationError, match="codes must be 0"):
        Faults(device_map={0: torch.full((4, 256, 256), 3, dtype=torch.int8)})
    with pytest.raises(ValidationError, match="not a link"):
        Faults(dead_links=[(0, 9)]).check_spec(ChipSpec.hermes())  # (0,0) and (1,1) are not neighbours
    with pytest.raises(ValidationError, match=r"\[0, 63\]"):
        Faults(dead_cores=[64]).check_spec(ChipSpec.hermes())
    with pytest.raises(ValidationError, match="columns"):
        Faults(dead_adc=[(0, 256)]).check_spec(ChipSpec.hermes())


# ---------------------------------------------------------------------------------------------- dead cores
def test_resnet9_maps_around_a_dead_core_on_40_of_the_remaining_cores(resnet):
    model, x = resnet
    faults = parse_faults("dead_core=12")
    mapping = aimc.compile(model, example_input=x, **faults.compile_kwargs())
    used = [c for layer in mapping.layers.values() for c in layer.core_list()]
    assert mapping.cores_used == 40 and len(set(used)) == 40 and 12 not in used
    assert all(link["hops"] == 1 for link in mapping.links_used())  # every chain still on direct links
    chip = aimc.program(mapping, device="ideal", strategy="tdp", seed=0, faults=faults)
    assert torch.isfinite(chip.run(x[:2])).all()


def test_resnet9_uses_every_spare_core_and_fails_clearly_without_enough(resnet):
    model, x = resnet
    dead = list(range(40, 64))  # all 24 spare cores' worth: exactly 40 left
    mapping = aimc.compile(model, example_input=x, avoid_cores=dead)
    assert sorted(c for layer in mapping.layers.values() for c in layer.core_list()) == list(range(40))
    with pytest.raises(ValidationError, match="needs 40 cores but only 39"):
        aimc.compile(model, example_input=x, avoid_cores=[*dead, 0])


def test_program_and_run_refuse_a_mapping_on_a_dead_core(resnet, healthy):
    _, x = resnet
    mapping = healthy
    used = mapping.layers["conv4"].core_list()[0]
    with pytest.raises(ValidationError, match=f"dead core.*{used}.*avoid_cores"):
        aimc.program(mapping, device="ideal", faults=Faults(dead_cores=[used]))
    chip = aimc.program(mapping, device="ideal", faults=Faults(dead_cores=[63]))  # an unused core may be dead
    chip.faults = Faults(dead_cores=[used])  # the core dies after programming
    with pytest.raises(ValidationError, match="dead core"):
        chip.run(x[:1])


# ---------------------------------------------------------------------------------------------- dead links
def test_dead_links_are_avoided_by_the_placement(resnet, healthy):
    model, x = resnet
    row = healthy.layers["conv5"].core_list()  # a full core row, one chain along it
    dead = [(row[3], row[4]), (row[0], row[1])]
    mapping = aimc.compile(model, example_input=x, avoid_links=dead)
    dead_set = {(min(a, b), max(a, b)) for a, b in dead}
    links = mapping.links_used()
    assert not any((min(lk["from"], lk["to"]), max(lk["from"], lk["to"])) in dead_set for lk in links)
    assert all(lk["hops"] == 1 for lk in links) and mapping.cores_used == 40
    assert set(mapping.layers["conv5"].core_list()).isdisjoint(row)  # the chain moved to another row
    assert mapping.avoid_links == tuple(sorted(dead_set))


def test_a_chain_routes_around_a_dead_link_or_fails_clearly():
    spec = dataclasses.replace(ChipSpec.hermes(), cores=4, grid_rows=2, grid_cols=2)
    net, x = nn.Linear(600, 4), torch.randn(4, 600)  # 3 row blocks: one chain of 3 cores on a 4-core chip
    mapping = aimc.compile(net, spec, example_input=x, avoid_links=[(0, 1)])
    assert mapping.layers["0"].core_list() == [1, 3, 2] and all(lk["hops"] == 1 for lk in mapping.links_used())
    # only 1-3 is left alive: no 3-core chain can pass its partial sums
    with pytest.raises(ValidationError, match=r"no chain of 3 free cores.*live links"):
        aimc.compile(net, spec, example_input=x, avoid_links=[(0, 1), (1, 2), (0, 2), (2, 3)])
    with pytest.raises(ValidationError, match="not a link"):
        aimc.compile(net, spec, example_input=x, avoid_links=[(0, 3)])
    with pytest.raises(ArgumentTypeError, match="avoid_links"):
        aimc.compile(net, spec, example_input=x, avoid_links=[(0, "1")])


def test_program_refuses_chains_that_no_live_route_can_carry():
    spec = dataclasses.replace(ChipSpec.hermes(), cores=4, grid_rows=2, grid_cols=2)
    net, x = nn.Linear(600, 4), torch.randn(4, 600)
    mapping = aimc.compile(net, spec, example_input=x)  # chain 0 -> 1 -> 3
    # 0-1 dead but routable 0 -> 2 -> 1: accepted (routed around)
    aimc.program(mapping, "ideal", faults=Faults(dead_links=[(0, 1)]))
    with pytest.raises(ValidationError, match="no route of live links"):
        aimc.program(mapping, "ideal", faults=Faults(dead_links=[(0, 1), (0, 2)]))


# ---------------------------------------------------------------------------------------------- stuck devices
def test_stuck_units_sit_at_gmax_or_zero_at_the_requested_rates():
    _, _, mapping = _small_chip_mapping(outputs=256, inputs=512)
    faults = Faults(stuck_set=0.03, stuck_reset=0.05, seed=11)
    chip = aimc.program(mapping, "hermes-2dev", "tdp", seed=0, faults=faults)
    clean = aimc.program(mapping, "hermes-2dev", "tdp", seed=0)
    g_max = chip.device.g_max_uS
    n_units = n_set = n_reset = 0
    for name, core in chip.cores.items():
        st, ref = core.states, clean.cores[name].states
        is_set = st.stuck & (st.g_prog == g_max)
        is_reset = st.stuck & (st.g_prog == 0)
        assert bool((is_set | is_reset).eq(st.stuck).all())
        n_units, n_set, n_reset = n_units + st.stuck.numel(), n_set + int(is_set.sum()), n_reset + int(is_reset.sum())
        # the healthy units are programmed exactly as on the fault-free chip (same programming random numbers)
        assert torch.equal(st.g_prog[~st.stuck], ref.g_prog[~st.stuck])
    for count, rate in ((n_set, 0.03), (n_reset, 0.05)):  # binomial, 5 sigma
        assert count / n_units == pytest.approx(rate, abs=5 * (rate * (1 - rate) / n_units) ** 0.5)


def test_stuck_set_units_drift_like_set_devices():
    model = aimc.devices.get("hermes-2dev")
    _, _, mapping = _small_chip_mapping()
    chip = aimc.program(mapping, model, "tdp", seed=0, faults=Faults(stuck_set=0.5, seed=1))
    nus = torch.cat([c.states.nu[c.states.stuck].flatten() for c in chip.cores.values()])
    one = torch.ones(())
    # docs/physics.md §3.3: nu = |mu(1) + sigma(1) N| at the SET state; the folded-normal mean at g = 1
    from aimc.devices.base import folded_normal_mean

    expected = float(folded_normal_mean(model.drift_nu_mean(one), model.drift_nu_std(one)))
    assert float(nus.mean()) == pytest.approx(expected, rel=0.02)
    core = next(iter(chip.cores.values()))
    g_year = model.drift(core.states, 3.15e7)[core.states.stuck] / model.g_max_uS
    # (t_eff / t0)^-nu with t_eff / t0 = 1.05e5 and nu ~ 0.017 (physics.md §3.2 at g = 1): about 0.82 on average
    assert float(g_year.max()) < 1.0 and 0.7 < float(g_year.mean()) < 0.95


def test_stuck_maps_are_nested_across_rates_and_follow_the_programming_seed():
    _, _, mapping = _small_chip_mapping()

    def stuck(rate: float, seed: int, fseed: int | None = None) -> torch.Tensor:
        chip = aimc.program(mapping, "hermes-2dev", seed=seed, faults=Faults(stuck_set=rate, seed=fseed))
        return torch.cat([c.states.stuck.flatten() for c in chip.cores.values()])

    low, high = stuck(0.01, 0), stuck(0.05, 0)
    assert bool((low <= high).all()) and int(high.sum()) > 3 * int(low.sum())  # nested subsets
    assert not torch.equal(stuck(0.05, 1), high)  # another programming seed: another die
    assert torch.equal(stuck(0.05, 1, fseed=4), stuck(0.05, 2, fseed=4))  # the same die programmed twice


def test_an_explicit_device_map_sticks_exactly_those_units():
    _, _, mapping = _small_chip_mapping()
    core_id = mapping.layers["2"].core_list()[0]  # the output layer: one core, block (10 x 48)
    codes = torch.zeros(2, 256, 256, dtype=torch.int8)  # hermes-2dev TDP: 2 units (G+, G-) per weight
    codes[0, 3, 5], codes[1, 7, 1], codes[0, 200, 200] = STUCK_SET, STUCK_RESET, STUCK_SET  # the last is padding
    chip = aimc.program(mapping, "hermes-2dev", "tdp", seed=0, faults=Faults(device_map={core_id: codes}))
    st = chip.cores["2"].states
    assert int(st.stuck.sum()) == 2
    assert float(st.g_prog[0, 0, 0, 3, 5]) == pytest.approx(chip.device.g_max_uS)
    assert float(st.g_prog[0, 0, 1, 7, 1]) == 0
    with pytest.raises(ValidationError, match="has 2 units per weight; this device model and strategy use 4"):
        aimc.program(mapping, "hermes-1dev", "odp", seed=0, faults=Faults(device_map={core_id: codes}))


# ---------------------------------------------------------------------------------------------- dead ADC columns
def test_a_dead_adc_column_reads_zero_and_leaves_the_others_alone():
    net = nn.Linear(32, 16).eval()
    x = torch.rand(128, 32, generator=torch.Generator().manual_seed(0))
    mapping = aimc.compile(net, example_input=x)
    core = mapping.layers["0"].core_list()[0]
    faulty = aimc.program(mapping, "ideal", "tdp", seed=0, faults=Faults(dead_adc=[(core, 5)]))
    clean = aimc.program(mapping, "ideal", "tdp", seed=0)
    assert float(faulty.cores["0"].adc.inv_alpha[0, 0, :, 5].abs().max()) == 0.0
    y_f, y_c = faulty.run(x, read_noise=False), clean.run(x, read_noise=False)
    # the MVM output of column 5 is zero; the LDPU then adds the layer's bias (INT8-rounded) as for any output
    layer = mapping.layers["0"]
    step = layer.out_range / 127
    assert torch.allclose(y_f[:, 5], layer.bias[5].expand(128), atol=step / 2 + 1e-6)
    keep = [i for i in range(16) if i != 5]
    assert torch.equal(y_f[:, keep], y_c[:, keep])
    assert float((y_c[:, 5] - layer.bias[5]).abs().max()) > 10 * step  # the column did carry signal before


# ---------------------------------------------------------------------------------------------- accuracy
@needs_cifar10
def test_stuck_devices_lower_accuracy_monotonically():
    """ResNet-9 (shipped float weights), 64 CIFAR-10 test images, TDP four-phase at 1 h, two dies per rate.

    Half of the stuck units at SET, half at RESET. docs/validation.md (500 images x 2 seeds): 78.0% at 0%, 8.8% at
    5%. Required: each rate's mean accuracy at least 5 points below the previous rate's (binomial std of one
    64-image accuracy is about 6 points; the drops here are 20-40 points).
    """
    from aimc.data import cifar10_tensors
    from aimc.weights import weights_path
    from aimc.weights.io import load_weights_file

    x, y = cifar10_tensors("test", 64)
    x_cal, _ = cifar10_tensors("train", 128)
    model = get_model("resnet9")
    load_weights_file(str(weights_path("resnet9_float")), model)
    mapping = aimc.compile(model.eval(), example_input=x_cal)
    means = []
    for rate in (0.0, 0.01, 0.05):
        accs = []
        for seed in (0, 1):
            chip = aimc.program(mapping, "hermes-2dev", "tdp", seed=seed, faults=Faults(rate / 2, rate / 2))
            accs.append(float((chip.run(x, 3600.0, seed=seed).argmax(1) == y).float().mean()))
        means.append(sum(accs) / len(accs))
    assert means[0] > 0.6, means
    assert means[0] - means[1] > 0.05 and means[1] - means[2] > 0.05, means
