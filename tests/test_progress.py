"""Progress of long steps: plain lines off a terminal, a tqdm bar on one, nothing when disabled."""

from __future__ import annotations

import io

import pytest
import torch
from tqdm import tqdm

import aimc
from aimc._progress import LineProgress, duration, paused_bars, progress
from aimc.experiments.evaluate import metric_over_time
from aimc.sweep.progress import Progress
from aimc.sweep.store import PointResult
from aimc.tasks import TaskData


class Terminal(io.StringIO):
    """A stream that says it is an interactive terminal."""

    def isatty(self) -> bool:
        return True


def test_plain_lines_one_per_step_and_a_final_line():
    out = io.StringIO()
    items = list(progress(range(3), desc="eval resnet9 tdp", unit="chip reads", stream=out))
    assert items == [0, 1, 2]
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    for k, line in enumerate(lines[:3], start=1):
        assert line.startswith(f"eval resnet9 tdp: {k}/3 chip reads, ") and "elapsed" in line
    assert "ETA" in lines[0] and "ETA" not in lines[2]  # nothing left after the last step
    assert lines[3].startswith("eval resnet9 tdp: done, 3 chip reads in ")
    assert "\r" not in out.getvalue()


def test_plain_lines_by_update_with_postfix_every_and_an_early_stop():
    out = io.StringIO()
    with progress(total=5, desc="epoch 1/2", unit="batches", stream=out, every=2) as bar:
        assert isinstance(bar, LineProgress)
        for b in range(5):
            bar.set_postfix_str(f"loss {b}.000")
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines[:3]] == [
        "epoch 1/2: 2/5 batches",
        "epoch 1/2: 4/5 batches",
        "epoch 1/2: 5/5 batches",
    ]
    assert lines[0].endswith(", loss 1.000") and lines[2].endswith(", loss 4.000")
    assert len(lines) == 4 and "done" in lines[3]

    out = io.StringIO()
    for k in progress(range(3), desc="sweep", unit="points", stream=out):
        if k == 1:
            break
    assert out.getvalue().splitlines()[-1].startswith("sweep: stopped at 1/3 points after ")


def test_disabled_prints_nothing(capsys):
    out = io.StringIO()
    for stream in (out, Terminal(), None):
        with progress(total=3, desc="x", unit="steps", enabled=False, stream=stream) as bar:
            for _ in range(3):
                bar.set_postfix_str("y")
                bar.update(1)
        assert list(progress([1, 2], desc="x", enabled=False, stream=stream)) == [1, 2]
    assert out.getvalue() == ""
    assert capsys.readouterr() == ("", "")


def test_default_stream_is_stderr(capsys):
    with progress(total=2, desc="mvm-error", unit="points") as bar:
        bar.update(2)
    captured = capsys.readouterr()
    assert captured.out == "" and "mvm-error: 2/2 points" in captured.err


def test_terminal_gets_a_tqdm_bar():
    term = Terminal()
    with progress(total=4, desc="eval resnet9 tdp", unit="chip reads", stream=term) as bar:
        assert isinstance(bar, tqdm)
        for seed in range(4):
            bar.set_postfix_str(f"seed {seed}", refresh=False)
            bar.update(1)
    text = term.getvalue()
    assert "\r" in text and "eval resnet9 tdp" in text
    assert "4/4" in text and "100%" in text and "seed 3" in text
    with paused_bars():  # printing around bars works with or without a bar on screen
        pass


def test_duration():
    assert duration(12.4) == "12 s"
    assert duration(185) == "3 min 05 s"
    assert duration(7620) == "2 h 07 min"


def _point(seed: int) -> PointResult:
    return PointResult(
        key=f"k{seed}",
        seed=seed,
        device="hermes-2dev",
        strategy="tdp",
        t_seconds=60.0,
        mode="four-phase",
        drift_compensation=True,
        read=0,
        metric="accuracy",
        value=0.9,
        details={},
        read_seed=seed,
        program_s=0.0,
        run_s=1.0,
        cpu_s=1.0,
        chip_reused=False,
        worker="host:1",
        provenance={},
        finished_utc="2026-01-01T00:00:00Z",
    )


def test_sweep_progress_terminal_bar_and_plain_lines():
    term = Terminal()
    prog = Progress("tiny", total=4, done_before=1, stream=term)
    prog.header("this process")
    prog.begin()
    prog.update(_point(0), True)
    prog.update(_point(1), True)
    prog.finish()
    text = term.getvalue()
    assert "sweep tiny: 4 points, 1 already stored, 3 to run on this process" in text
    assert "3/4" in text and "last: tdp four-phase t=60s seed 1" in text
    assert prog.computed == 2

    out = io.StringIO()
    prog = Progress("tiny", total=4, done_before=1, stream=out)
    prog.header("this process")
    prog.begin()
    prog.update(_point(0), True)
    prog.update(_point(1), False)
    prog.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[1].startswith("sweep tiny: 2/4 points done | ")
    assert prog.computed == 1 and prog.duplicates == 1


@pytest.fixture(scope="module")
def tiny_task():
    """A one-layer classifier compiled for the chip and a few labelled inputs (ResNet-9's task kind)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 4))
    x = torch.rand(12, 16) * 2 - 1
    y = model(x).argmax(1)
    mapping = aimc.compile(model, example_input=x, name="tiny")
    return mapping, TaskData("resnet9", x, y, x)


def test_metric_over_time_progress_off_prints_nothing_and_on_a_line_per_read(tiny_task, capsys):
    mapping, data = tiny_task
    quiet = metric_over_time(mapping, data, times=(60.0, 3600.0), seeds=(0,), progress=False)
    assert capsys.readouterr() == ("", "")
    shown = metric_over_time(mapping, data, times=(60.0, 3600.0), seeds=(0,))
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("eval resnet9 tdp four-phase: 1/2 chip reads, ")
    assert lines[1].startswith("eval resnet9 tdp four-phase: 2/2 chip reads, ")
    assert [p.mean for p in shown] == [p.mean for p in quiet]
