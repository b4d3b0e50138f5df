"""aimc eval and aimc reproduce on a few test images: structure, resume, errors (numbers: docs/validation.md)."""

from __future__ import annotations

import json

import pytest

from aimc._provenance import code_fingerprint
from aimc.cli import main
from aimc.errors import ValidationError
from aimc.experiments.reproduce import Settings, _Store, format_tables, reproduce

from conftest import needs_cifar10

TINY = Settings(images=40, chars=600, streams=8, seeds=1, adabs_inputs=24)


@needs_cifar10
def test_reproduce_resnet9_writes_report_and_resumes(tmp_path):
    logs: list[str] = []
    first = reproduce(str(tmp_path), settings=TINY, tasks=("resnet9",), log=logs.append)
    r = first["tasks"]["resnet9"]
    assert r["test_size"] == 40
    # the shipped HWA weights classify most of these images, in software and on the chip
    assert r["software"] >= 0.8 and r["quantisation"] >= 0.75
    assert [p["t_seconds"] for p in r["tdp"]] == [60.0, 3600.0, 86400.0, 31_536_000.0]
    assert all(0.5 <= p["mean"] <= 1.0 for p in r["tdp"] + r["odp"] + r["tdp_adabs"])
    report = (tmp_path / "report.md").read_text()
    assert "| chip TDP, four-phase, 1 h |" in report and "92.81%" in report
    assert (tmp_path / "resnet9.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["images"] == 40
    # a second run takes every block from the store and gives the same numbers
    logs.clear()
    second = reproduce(str(tmp_path), settings=TINY, tasks=("resnet9",), log=logs.append)
    assert sum("from points.json" in line for line in logs) == 5
    assert second["tasks"]["resnet9"]["tdp"] == r["tdp"]
    assert "change vs our software" in format_tables(second)
    # other settings never overwrite the stored points
    with pytest.raises(ValidationError, match="other settings"):
        reproduce(str(tmp_path), settings=Settings(images=41, seeds=1), tasks=("resnet9",), log=logs.append)


def test_reproduce_store_of_other_code_is_kept_aside_not_reused(tmp_path):
    """Blocks computed by other aimc code (another fingerprint of the package's sources and weights) are not taken:
    the file is moved aside, nothing is lost, and the run starts afresh."""
    path = tmp_path / "points.json"
    path.write_text(json.dumps({"settings": TINY.__dict__, "code": "0123abcd", "blocks": {"resnet9/software": 0.9}}))
    logs: list[str] = []
    store = _Store(path, TINY, logs.append)
    assert store.get("resnet9/software") is None and not path.exists()
    assert json.loads((tmp_path / "points.0123abcd.json").read_text())["blocks"] == {"resnet9/software": 0.9}
    assert "other aimc code" in logs[0]
    store.put("resnet9/software", 0.8)  # the same code then reuses its own blocks
    assert json.loads(path.read_text())["code"] == code_fingerprint() == store.code
    assert _Store(path, TINY, logs.append).get("resnet9/software") == 0.8


def test_reproduce_rejects_unknown_task(tmp_path):
    with pytest.raises(ValidationError, match="task must be one of"):
        reproduce(str(tmp_path), settings=TINY, tasks=("gpt2",))


@needs_cifar10
def test_eval_cli_json(tmp_path, capsys):
    out = tmp_path / "e.json"
    code = main(["eval", "resnet9", "--n", "30", "--seeds", "1", "--times", "60", "--json", "--json-out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["task"] == "resnet9" and result["metric"] == "accuracy" and result["test_size"] == 30
    assert len(result["runs"]) == 1 and result["runs"][0]["points"][0]["t_seconds"] == 60.0
    assert json.loads(capsys.readouterr().out)["software"] == result["software"]


def test_eval_cli_errors(capsys):
    assert main(["eval", "gpt2"]) != 0
    assert "MODEL must be one of" in capsys.readouterr().err
    assert main(["eval", "resnet9", "--weights", "nope"]) != 0
    assert "shipped name" in capsys.readouterr().err
    assert main(["eval", "resnet9", "--seeds", "0"]) != 0
    assert "--seeds" in capsys.readouterr().err


def test_reproduce_skips_a_task_whose_data_set_is_missing_and_says_how_to_get_it(tmp_path, monkeypatch):
    """No CIFAR-10 and no download: the ResNet-9 blocks are skipped with the command that fetches the data set;
    the run still writes its report (and runs the other tasks)."""
    monkeypatch.setenv("AIMC_NO_DOWNLOAD", "1")
    empty = tmp_path / "no-data"
    empty.mkdir()
    logs: list[str] = []
    results = reproduce(str(tmp_path / "out"), settings=TINY, data_dir=str(empty), tasks=("resnet9",), log=logs.append)
    assert results["tasks"] == {}
    assert "aimc data fetch cifar10" in results["skipped"]["resnet9"]
    assert any("resnet9: skipped" in line for line in logs)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "### resnet9 — skipped" in report and "aimc data fetch cifar10" in report
