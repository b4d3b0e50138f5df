"""Sweep files: strict validation with messages that say where and what, expansion into points, point identity."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from aimc import sweep
from aimc.cli import main
from aimc.errors import AimcError
from aimc.sweep.errors import BackendError, SweepSpecError
from aimc.sweep.executors import check_address
from aimc.sweep.points import Point, point_key, read_seed, work_units

from conftest import needs_cifar10

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sweep_resnet9.yaml"


def _spec(**changes):
    doc = {
        "name": "t",
        "network": "resnet9",
        "data": {"samples": 16, "calibration_samples": 16, "batch_size": 16},
        "grid": {"seeds": [0, 1], "times": [60, 86400], "modes": ["four-phase"], "strategies": ["tdp"]},
    }
    for k, v in changes.items():
        if k.startswith("grid."):
            doc["grid"][k[5:]] = v
        elif k.startswith("data."):
            doc["data"][k[5:]] = v
        else:
            doc[k] = v
    return doc


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"netwrk": "resnet9"}, ["unknown key 'netwrk'", "did you mean 'network'"]),
        ({"grid.time": [1]}, ["unknown key 'time' in grid", "did you mean 'times'"]),
        ({"data.images": 5}, ["unknown key 'images' in data", "allowed keys"]),
        ({"network": "resnet10"}, ["network must be one of", "'resnet9'", "'resnet10'"]),
        ({"grid.seeds": "3"}, ["grid.seeds must be a list", "str '3'"]),
        ({"grid.seeds": [0, -1]}, ["grid.seeds[1] must be an integer >= 0", "-1"]),
        ({"grid.seeds": [0, 0]}, ["grid.seeds lists 0 twice"]),
        ({"grid.times": []}, ["grid.times must not be empty"]),
        ({"grid.times": [60, "soon"]}, ["grid.times[1]", "'soon'", "unit"]),
        ({"grid.times": [-1]}, ["grid.times[0] must be a finite time >= 0"]),
        ({"grid.times": [True]}, ["grid.times[0]", "bool"]),
        ({"grid.modes": ["two-phase"]}, ["grid.modes[0] must be one of", "'one-phase'", "'two-phase'"]),
        ({"grid.strategies": ["xdp"]}, ["grid.strategies[0] must be one of", "'odp'"]),
        ({"grid.devices": ["hermes-3dev"]}, ["grid.devices[0] must be one of", "'hermes-2dev'"]),
        ({"grid.drift_compensation": ["on"]}, ["grid.drift_compensation[0] must be true or false"]),
        ({"grid.reads": 0}, ["grid.reads must be an integer >= 1"]),
        ({"data.batch_size": 2.5}, ["data.batch_size must be an integer", "float 2.5"]),
        ({"weights": "/nonexistent/w.safetensors"}, ["weights file", "/nonexistent/w.safetensors", "does not exist"]),
        ({"weights": "resnet9_best"}, ["weights must be a shipped name", "resnet9_hwa"]),
        ({"grid": [1, 2]}, ["grid must be a mapping"]),
    ],
)
def test_malformed_sweeps_raise_a_spec_error_naming_the_place(changes, words):
    with pytest.raises(SweepSpecError) as err:
        sweep.parse_spec(_spec(**changes))
    for w in words:
        assert w in str(err.value)
    assert isinstance(err.value, AimcError) and isinstance(err.value, ValueError)


def test_missing_required_keys_and_empty_or_broken_files(tmp_path):
    with pytest.raises(SweepSpecError, match="missing required key 'grid'"):
        sweep.parse_spec({"network": "resnet9"})
    with pytest.raises(SweepSpecError, match=r"missing required key 'grid.times'"):
        sweep.parse_spec(_spec(grid={"seeds": [0]}))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(SweepSpecError, match="empty"):
        sweep.load_spec(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("network: resnet9\ngrid: [seeds: 1\n")
    with pytest.raises(SweepSpecError, match="not valid YAML"):
        sweep.load_spec(broken)
    with pytest.raises(SweepSpecError, match="does not exist"):
        sweep.load_spec(tmp_path / "nope.yaml")
    objects = tmp_path / "objects.yaml"
    objects.write_text("network: !!python/object/apply:os.system ['echo hi']\ngrid: {seeds: 1, times: [1]}\n")
    with pytest.raises(SweepSpecError, match="not valid YAML"):  # safe_load never builds objects
        sweep.load_spec(objects)


def test_times_take_units_and_equal_times_are_the_same_point():
    s = sweep.parse_spec(_spec(**{"grid.times": [60, "1h", "1e3", "1 d", "1y", "2min"]}))
    assert s.grid.times == (60.0, 3600.0, 1000.0, 86400.0, 365 * 86400.0, 120.0)
    a = sweep.parse_spec(_spec(**{"grid.times": [3600]}))
    b = sweep.parse_spec(_spec(**{"grid.times": ["1h"]}))
    assert [a.key(p) for p in a.points()] == [b.key(p) for p in b.points()]
    with pytest.raises(SweepSpecError, match=r"lists 3600\.0 twice"):
        sweep.parse_spec(_spec(**{"grid.times": [3600, "1h"]}))


def test_grid_expands_to_the_cross_product_with_default_devices_per_strategy():
    s = sweep.parse_spec(
        _spec(
            **{
                "grid.seeds": 3,
                "grid.strategies": ["odp", "tdp"],
                "grid.modes": ["one-phase", "four-phase"],
                "grid.drift_compensation": [True, False],
                "grid.reads": 2,
            }
        )
    )
    pts = s.points()
    assert len(pts) == 3 * 2 * 2 * 2 * 2 * 2
    assert {p.device for p in pts if p.strategy == "odp"} == {"hermes-1dev"}
    assert {p.device for p in pts if p.strategy == "tdp"} == {"hermes-2dev"}
    keys = {s.key(p) for p in pts}
    assert len(keys) == len(pts)  # every point has its own key
    # devices [default, hermes-2dev] name the same TDP chip twice: one point, not two
    s2 = sweep.parse_spec(_spec(**{"grid.devices": ["default", "hermes-2dev"]}))
    assert len(s2.points()) == 4


def test_point_keys_depend_on_the_context_and_read_seeds_on_the_key_only():
    p = Point(0, "hermes-2dev", "tdp", 60.0, "four-phase", True, 0)
    ctx = {"network": "resnet9", "weights_sha256": "ab", "samples": 16, "calibration_samples": 16, "batch_size": 16}
    k = point_key(ctx, p)
    assert k == point_key(dict(ctx), Point(0, "hermes-2dev", "tdp", 60, "four-phase", True, 0))
    assert k != point_key(ctx | {"batch_size": 8}, p)
    assert k != point_key(ctx | {"weights_sha256": "cd"}, p)
    assert k != point_key(ctx, Point(1, "hermes-2dev", "tdp", 60.0, "four-phase", True, 0))
    assert 0 <= read_seed(k) < 2**63 and read_seed(k) == read_seed(k)


def test_work_units_program_each_chip_once_and_split_only_to_feed_idle_workers():
    pts = [Point(s, "hermes-2dev", "tdp", float(t), "four-phase", True) for s in range(3) for t in range(4)]
    units = work_units(pts, 2)
    assert [len(u) for u in units] == [4, 4, 4]
    assert all(len({p.chip for p in u}) == 1 for u in units)
    one_chip = [p for p in pts if p.seed == 0]
    split = work_units(one_chip, 3)
    assert sorted(len(u) for u in split) == [1, 1, 2]
    assert [p for u in split for p in u] == one_chip  # halves keep the order; nothing lost or repeated


def test_shipped_example_file_is_valid():
    s = sweep.load_spec(EXAMPLE)
    assert s.network == "resnet9" and len(s.points()) >= 8
    assert s.weights_path.is_file()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@needs_cifar10
def test_an_unreachable_ray_address_fails_before_any_work(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(BackendError, match="cannot reach a Ray cluster at") as err:
        sweep.run(_spec(), out=tmp_path / "out", backend="ray", address=address, progress=False)
    assert "ray start --head" in str(err.value)
    assert not (tmp_path / "out").exists()
    for bad in ("localhost", "host:port", "h:99999", ""):
        with pytest.raises(BackendError, match="HOST:PORT"):
            check_address(bad)


@needs_cifar10
def test_missing_ray_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as without the package
    with pytest.raises(BackendError, match=r"pip install 'aimc\[ray\]'"):
        sweep.run(_spec(), out=tmp_path / "out", backend="ray", progress=False)
    assert not (tmp_path / "out").exists()


@needs_cifar10
def test_bad_run_arguments(tmp_path):
    with pytest.raises(AimcError, match="backend must be one of"):
        sweep.run(_spec(), out=tmp_path, backend="dask", progress=False)
    with pytest.raises(AimcError, match="only used with backend 'ray'"):
        sweep.run(_spec(), out=tmp_path, address="127.0.0.1:6379", progress=False)
    with pytest.raises(AimcError, match="workers must be"):
        sweep.run(_spec(), out=tmp_path, backend="ray", workers=0, progress=False)
    with pytest.raises(AimcError, match="spec must be a SweepSpec"):
        sweep.run(42, out=tmp_path, progress=False)  # type: ignore[arg-type]


def test_cli_prints_the_spec_error_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: resnet9\nweights: missing.safetensors\ngrid: {seeds: 1, times: [1h]}\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "aimc: error:" in err and "missing.safetensors" in err and "does not exist" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
