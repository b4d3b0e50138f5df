"""Design-space exploration (aimc.dse): validation before any work, the Pareto front against brute force, the
variant chips of ADC designs; a tiny space end to end (a small CNN, 2 tile sizes x 2 ADC resolutions x 2 seeds, 32
images): every point has accuracy and energy, the report's fronts are the brute-force ones, a run interrupted midway
resumes without recomputing; and ResNet-9 at the paper's design (16 CIFAR-10 images): perf equals `aimc perf` and
accuracy equals `aimc eval` for the same seeds.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import random
from types import SimpleNamespace

import pytest
import torch

from aimc import dse
from aimc.cli import main
from aimc.dse.pareto import dominates, pareto_front
from aimc.dse.space import DesignSpaceError, design_chip
from aimc.perf.model import integration_time_ns, mvm_time_ns
from aimc.spec import ChipSpec
from aimc.sweep.errors import StoreError, SweepInterruptedError
from aimc.sweep.store import ResultStore
from aimc.tasks import Task, get_task, register_task

from conftest import needs_cifar10, small_cnn


class TinyCnn(Task):
    """A small CNN on synthetic 16x16 images labelled by the float model itself (software accuracy 100%): the
    tiny space's network, fast enough for a test (ResNet-9's runs are in the paper-design tests below)."""

    name = "tiny-cnn"
    metric = "accuracy"

    def architecture(self) -> torch.nn.Module:
        return small_cnn(2)  # 16x16 images

    def example_input(self) -> torch.Tensor:
        return torch.zeros(2, 3, 16, 16)

    def load_model(self, weights: str | None) -> torch.nn.Module:
        return self.architecture()

    def load_data(self, samples: int | None, data_dir: str | None) -> SimpleNamespace:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(samples or 32, 3, 16, 16, generator=g)
        with torch.no_grad():
            y = self.architecture()(x).argmax(1)
        return SimpleNamespace(x=x, y=y, x_cal=torch.randn(16, 3, 16, 16, generator=g))

    def software(self, model: torch.nn.Module, data: SimpleNamespace) -> float:
        with torch.no_grad():
            return float((model(data.x).argmax(1) == data.y).float().mean())

    def score(self, chip, data: SimpleNamespace, t_seconds: float, mode: str, read_seed: int) -> float:
        out = chip.run(data.x, t=t_seconds, mode=mode, seed=read_seed)
        return float((out.argmax(1) == data.y).float().mean())


register_task(TinyCnn(), replace=True)


@pytest.fixture(scope="module", autouse=True)
def _fixed_kernels():
    """The MVM kernels fixed (the reference ones) rather than measured: the end-to-end runs below do not wait for a
    measurement, and every run in this module, `aimc eval`'s included, uses the same ones."""
    mp = pytest.MonkeyPatch()
    mp.setenv(
        "AIMC_KERNELS", "pos_neg_product=float32,aux_product=float32,mvm_tail=numba,mvm_threads=pools,ldpu_chain=numba"
    )
    yield
    mp.undo()


#: 2 tile sizes x 2 ADC resolutions (the chip's, 8 bits: a coarser count in the same time) x 2 seeds = 8 points.
TINY = {
    "name": "tiny",
    "networks": [{"network": "tiny-cnn", "samples": 32, "calibration_samples": 16}],
    "design": {"tile_size": [32, 256], "adc_bits": ["chip", 8]},
    "grid": {"seeds": 2, "times": ["1d"]},
    "report": {"max_loss": 50},
}
#: ResNet-9 at the paper's design, evaluated as `aimc eval` evaluates it (16 test images).
PAPER = {
    "name": "paper",
    "networks": [{"network": "resnet9", "samples": 16, "calibration_samples": 16}],
    "design": {"tile_size": [256]},
    "grid": {"seeds": [0, 1], "times": ["1d"]},
}


def _space(**changes: object) -> dict:
    space = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            space[section][name] = value
        else:
            space[section] = value
    return space


# --- bad input: clear errors before any work --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"design.adc_bits": ["chip", 21]}, ["design.adc_bits[1]", "[1, 20]", "perf model"]),
        ({"design.tile_size": [8]}, ["design.tile_size[0]", "[16, 4096]"]),
        ({"design.pwm_bits": [1]}, ["design.pwm_bits[0]", "[2, 16]"]),
        ({"design.read_voltage_V": [0.5]}, ["design.read_voltage_V[0]", "[0.1, 0.4] V"]),
        ({"design.g_max_uS": ["default", 80]}, ["design.g_max_uS[1]", "[2, 50] uS"]),
        ({"design.modes": ["two-phase"]}, ["design.modes[0]", "'one-phase', 'four-phase'"]),
        ({"design.tile": [256]}, ["unknown key 'tile'", "did you mean"]),
        ({"networks": [{"network": "vgg"}]}, ["networks[0].network", "'resnet9', 'char-lstm'"]),
        ({"networks": [{"network": "resnet9", "weights": "x.pt"}]}, ["networks[0].weights", ".safetensors"]),
        ({"report": {"time": "1h"}}, ["report.time", "grid.times"]),
    ],
)
def test_a_malformed_space_names_the_key_and_the_allowed_values(changes, words):
    with pytest.raises(DesignSpaceError) as err:
        dse.parse_space(_space(**changes))
    for w in words:
        assert w in str(err.value)


def test_a_tile_that_cannot_hold_the_network_is_refused_before_any_work(tmp_path):
    space = _space(**{"design.tile_size": [16, 256]}, networks=[{"network": "resnet9"}], max_chips=4)
    with pytest.raises(DesignSpaceError) as err:
        dse.run(space, out=tmp_path / "out", progress=False)
    text = str(err.value)
    assert "design.tile_size 16x16" in text and "max_chips = 4" in text and "resnet9 needs 7" in text
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


def test_aimc_dse_prints_the_error_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("networks: [resnet9]\ndesign: {adc_bits: [24]}\ngrid: {seeds: 1, times: [1d]}\n")
    assert main(["dse", str(bad), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "design.adc_bits[0]" in err and "[1, 20]" in err and "Traceback" not in err


# --- the Pareto front -------------------------------------------------------------------------------------------------


def _brute_force(points):
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_equals_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    # few distinct values: many ties in either objective and equal points
    points = [(rng.randint(0, 6), rng.randint(0, 6)) for _ in range(n)]
    assert pareto_front(points) == _brute_force(points)
    points3 = [(rng.random(), rng.random(), rng.random()) for _ in range(n)]
    assert pareto_front(points3) == _brute_force(points3)


def test_pareto_front_small_cases():
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 2.0), (1.0, 2.0)]) == [0, 1]  # equal points do not dominate each other
    assert pareto_front([(1.0, 3.0), (2.0, 1.0), (2.0, 2.0), (3.0, 3.0)]) == [0, 1]


# --- the chips of designs ---------------------------------------------------------------------------------------------


def test_the_paper_design_is_the_hermes_chip():
    assert design_chip(256, 256, 64, 8, None) == ChipSpec.hermes()


@pytest.mark.parametrize("bits", [6, 8, 10, 12, 14])
def test_an_adc_design_gives_its_counts_at_saturation_in_the_perf_models_time(bits):
    chip = ChipSpec.hermes()
    spec = design_chip(256, 256, 64, 8, bits)
    # the simulated window is the perf model's integration time for that resolution
    assert spec.integration_time_ns == pytest.approx(integration_time_ns(chip, bits))
    assert mvm_time_ns(spec, "four-phase") == pytest.approx(mvm_time_ns(chip, "four-phase", bits))
    # a saturated counter collects ~2^bits counts (the CCO's top rate at 100 uA is 1.05 x 1/300 ps)
    counts = spec.cco_gain_MHz_per_uA * spec.adc_saturation_uA * spec.integration_time_ns * 1e-3
    assert counts == pytest.approx(1.05 * 2.0**bits)
    assert spec.adc_bits == bits


def test_area_proxy_of_the_paper_chip_is_its_cores():
    area = dse.area_mm2(ChipSpec.hermes(), chips=1)
    assert area["core_mm2"] == pytest.approx(ChipSpec.hermes().core_area_mm2)
    assert area["area_mm2"] == pytest.approx(64 * 1.392)
    assert area["adcs"] == 64 * 256


# --- a tiny space end to end ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
    """The tiny space run once with a Ctrl-C after its third stored point, then again to the end (its progress
    lines kept)."""
    out = tmp_path_factory.mktemp("dse") / "tiny"
    seen = []

    def stop_after_three(result):
        seen.append(result.key)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(SweepInterruptedError) as err:
        dse.run(TINY, out=out, progress=False, on_result=stop_after_three)
    assert err.value.done == 3 and err.value.total == 8
    with ResultStore(out, None, create=False) as store:
        first = {r.key: (r.value, r.finished_utc) for r in store.results()}
    resumed = []
    log = io.StringIO()
    result = dse.run(TINY, out=out, progress=log, on_result=lambda r: resumed.append(r.key))
    return out, first, resumed, result, log.getvalue()


def test_a_run_interrupted_midway_resumes_without_recomputing(interrupted_then_resumed):
    out, first, resumed, result, log = interrupted_then_resumed
    assert (result.total, result.done_before, result.computed) == (8, 3, 5)
    lines = log.splitlines()
    assert lines[0].startswith("dse tiny: 8 points, 3 already stored, 5 to run on ")
    assert any(line.startswith("dse tiny: 8/8 points done | ") for line in lines)
    assert not any(line.startswith("sweep ") for line in lines)
    assert not set(resumed) & set(first)  # the three stored points were not run again
    with ResultStore(out, None, create=False) as store:
        rows = store.results()
        assert len(rows) == 8 and len({r.key for r in rows}) == 8
        assert all(first[r.key] == (r.value, r.finished_utc) for r in rows if r.key in first)
    again = dse.run(TINY, out=out, progress=False)
    assert (again.done_before, again.computed) == (8, 0)


def test_a_folder_of_other_data_for_a_network_is_refused(interrupted_then_resumed):
    out = interrupted_then_resumed[0]
    other = _space(networks=[{"network": "tiny-cnn", "samples": 16, "calibration_samples": 16}])
    with pytest.raises(StoreError) as err:
        dse.run(other, out=out, progress=False)
    assert "samples: stored 32, now 16" in str(err.value)


def test_every_point_has_accuracy_and_energy(interrupted_then_resumed):
    out = interrupted_then_resumed[0]
    with ResultStore(out, None, create=False) as store:
        rows = store.results()
    designs = {(r.details["design"]["tile_rows"], r.details["design"]["adc_bits"]) for r in rows}
    assert designs == set(itertools.product([32, 256], [None, 8]))
    assert sorted({r.seed for r in rows}) == [0, 1]
    for r in rows:
        assert r.metric == "accuracy" and 0.5 <= r.value <= 1.0
        assert r.details["perf"]["energy_uj"] > 0 and r.details["perf"]["tops_per_w"] > 0
        assert r.details["perf"]["area_mm2"] > 0
        assert r.provenance["torch"] and r.read_seed == 1_000_003 * r.seed  # seed, versions recorded
    # a chip programmed once per (design, seed); 32x32 tiles take more cores than 256x256
    assert sum(not r.chip_reused for r in rows) == 8
    perf = {(r.details["design"]["tile_rows"], r.details["design"]["adc_bits"]): r.details["perf"] for r in rows}
    assert perf[32, None]["cores_used"] > perf[256, None]["cores_used"]
    # an 8-bit ADC counts within the 128 ns PWM window: the same time and energy as the chip's, a smaller area
    assert perf[256, 8]["mvm_time_ns"] == perf[256, None]["mvm_time_ns"]
    assert perf[256, 8]["energy_uj"] == perf[256, None]["energy_uj"]
    assert perf[256, 8]["area_mm2"] < perf[256, None]["area_mm2"]


def test_the_report_fronts_equal_brute_force_and_mark_the_paper_chip(interrupted_then_resumed):
    out = interrupted_then_resumed[0]
    paths = dse.write_report(out, html_report=True)
    names = {p.name for p in paths}
    assert {"dse_report.md", "dse_report.html", "dse.json", "points.csv", "tiny-cnn_pareto.png"} <= names
    report = json.loads((out / "dse.json").read_text())
    rows = report["networks"]["tiny-cnn"]
    assert len(rows) == 4
    for flag, key in (("energy_front", "energy_uj"), ("latency_front", "latency_us")):
        pts = [(r["perf"][key], r["loss"]) for r in rows]
        assert [i for i, r in enumerate(rows) if r[flag]] == _brute_force(pts)
    ref = [r for r in rows if r["reference"]]
    assert len(ref) == 1 and ref[0]["design"]["tile_rows"] == 256 and ref[0]["design"]["adc_bits"] is None
    for r in rows:  # the loss is the software accuracy minus the chip's, in points
        assert r["loss"] == pytest.approx(100.0 * (report["software"]["tiny-cnn"]["value"] - r["mean"]))
    md = (out / "dse_report.md").read_text()
    assert "★ paper" in md and "Best TOPS/W" in md
    assert "dominated" in (out / "dse_report.html").read_text()
    # `aimc report` knows a design-space folder
    assert main(["report", str(out), "--time", "1d", "--max-loss", "2", "--no-figures"]) == 0


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """ResNet-9 at the paper's design, 2 seeds: the folder and {seed: row}."""
    out = tmp_path_factory.mktemp("dse") / "paper"
    dse.run(PAPER, out=out, progress=False)
    with ResultStore(out, None, create=False) as store:
        return out, {r.seed: r for r in store.results()}


@needs_cifar10
def test_at_the_paper_design_perf_equals_aimc_perf(paper_run, capsys):
    perf = paper_run[1][0].details["perf"]
    assert main(["perf", "resnet9", "--mode", "four-phase", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)[0]
    assert perf["energy_uj"] == pytest.approx(ours["energy_uj"], rel=1e-12)
    assert perf["latency_us"] == pytest.approx(ours["latency_ns"] * 1e-3, rel=1e-12)
    assert perf["tops_per_w"] == pytest.approx(ours["tops_per_w"], rel=1e-12)
    assert perf["throughput_per_s"] == pytest.approx(ours["throughput_per_s"], rel=1e-12)
    assert perf["cores_used"] == ours["cores"] and perf["chips"] == 1


@needs_cifar10
def test_at_the_paper_design_accuracy_equals_aimc_eval(paper_run):
    from aimc.compiler import compile as compile_network
    from aimc.experiments import evaluate as ev

    rows = paper_run[1]
    model = get_task("resnet9").load_model()
    data = get_task("resnet9").load_data(16, None)
    mapping = compile_network(model, calibration=data.x_cal[:16], name="resnet9", progress=False)
    (point,) = ev.metric_over_time(mapping, data, times=[86400.0], seeds=[0, 1], progress=False)
    assert point.per_seed == [rows[0].value, rows[1].value]


def test_design_labels_and_keys_are_stable():
    space = dse.parse_space(TINY)
    designs = space.designs()
    assert len(designs) == 4 and len({d.key for d in designs}) == 4
    paper = next(d for d in designs if d.is_paper_chip)
    assert paper.label() == "256x256 64c pwm8 adc=chip 4ph TDP"
    assert dataclasses.replace(paper, mode="one-phase").chip_key == paper.chip_key  # one mapping for both modes
    assert "g_max_uS" not in paper.as_dict()  # unset: the keys of designs without it stay as they were
    wide = dataclasses.replace(paper, g_max_uS=15.0)
    assert wide.key != paper.key and wide.device_model().g_max_uS == 15.0 and not wide.is_paper_chip
    assert space.programmed_chip_id(wide) != space.programmed_chip_id(paper)
