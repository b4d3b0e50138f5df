"""The ``aimc`` command: mvm-error output formats and error reporting."""

from __future__ import annotations

import json

import pytest

from aimc.cli import main

from conftest import needs_cifar10


def test_mvm_error_prints_json_with_settings_and_versions(capsys, tmp_path):
    out_json = tmp_path / "r.json"
    plot = tmp_path / "r.png"
    code = main(
        [
            "mvm-error",
            "--cores",
            "1",
            "--inputs",
            "512",
            "--times",
            "60,86400",
            "--modes",
            "four-phase",
            "--json",
            "--json-out",
            str(out_json),
            "--plot",
            str(plot),
        ]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload == json.loads(out_json.read_text()) | {"elapsed_s": payload["elapsed_s"]}
    assert {r["strategy"] for r in payload["rows"]} == {"odp", "tdp"}
    assert len(payload["rows"]) == 4
    assert payload["provenance"]["torch"] and payload["settings"]["seed"] == 0
    for r in payload["rows"]:
        assert 0 < r["eps_residual"] <= r["eps_total"]  # least squares: ε_total² = ε_linear² + ε_residual²
    assert plot.stat().st_size > 10_000


def test_mvm_error_table_on_screen(capsys):
    assert main(["mvm-error", "--cores", "1", "--inputs", "256", "--times", "3600", "--strategies", "tdp"]) == 0
    text = capsys.readouterr().out
    assert "hermes-2dev" in text and "four-phase" in text and "1.94%" in text


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["mvm-error", "--times", "-5"], "times must be in"),
        (["mvm-error", "--times", "abc"], "comma-separated list of numbers"),
        (["mvm-error", "--modes", "two-phase"], "mode must be one of"),
        (["mvm-error", "--device", "nope"], "nope"),
        (["mvm-error", "--cores", "65"], "cores must be in"),
        (["mvm-error", "--strategies", "odp", "--device", "hermes-2dev"], "ODP needs a one-device model"),
    ],
)
def test_bad_arguments_print_a_clear_error_without_traceback(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_debug_flag_shows_the_traceback():
    from aimc.errors import ValidationError

    with pytest.raises(ValidationError):
        main(["--debug", "mvm-error", "--times", "-5"])


def test_map_prints_the_placement_and_draws_the_core_map(capsys, tmp_path):
    png = tmp_path / "map.png"
    assert main(["map", "resnet9", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "40 cores" in out and "conv7" in out and "2016x224" in out
    assert png.stat().st_size > 20_000
    assert main(["map", "char-lstm", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["cores_used"] == 26
    assert {layer["name"]: sum(len(row) for row in layer["cores"]) for layer in payload["layers"]} == {
        "lstm": 24,
        "fc": 2,
    }


def test_map_reads_a_safetensors_state_dict(capsys, tmp_path):
    from safetensors.torch import save_file

    from aimc.models import resnet9

    path = tmp_path / "weights.safetensors"
    save_file(resnet9(seed=1).state_dict(), str(path), metadata={"aimc_model": "resnet9"})
    assert main(["map", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cores_used"] == 40
    pickled = tmp_path / "weights.pt"
    pickled.write_bytes(b"not read")
    assert main(["map", str(pickled)]) == 2
    assert "never pickle" in capsys.readouterr().err
    assert main(["map", "vgg16"]) == 2


@needs_cifar10
def test_eval_reports_chip_accuracy_per_time_with_software_baseline(capsys, tmp_path):
    from safetensors.torch import save_file

    from aimc.models import resnet9

    weights = tmp_path / "r9.safetensors"
    save_file({k: v.contiguous() for k, v in resnet9(seed=0).state_dict().items()}, str(weights))
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "resnet9",
                "--weights",
                str(weights),
                "--images",
                "40",
                "--seeds",
                "2",
                "--times",
                "60,3600",
                "--json",
                "--json-out",
                str(out),
            ]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert 0.0 <= payload["software"] <= 1.0
    assert payload["settings"]["adc_calibration"] == "operating"  # recorded with the results
    points = payload["runs"][0]["points"]
    assert [p["t_seconds"] for p in points] == [60.0, 3600.0]
    assert all(len(p["per_seed"]) == 2 and 0.0 <= p["mean"] <= 1.0 for p in points)
    assert main(["eval", "resnet9", "--weights", "resnet9_huge"]) == 2
    assert "shipped name" in capsys.readouterr().err
