"""Char-LSTM training on a slice of PTB: it learns, checkpoints every epoch and resumes without redoing epochs."""

from __future__ import annotations

import json

import pytest

import aimc.train.ptb as ptb_train
from aimc.cli import main
from aimc.data import ptb


@pytest.fixture
def small_ptb(monkeypatch):
    original = ptb.ptb_chars

    def sliced(split: str, data_dir=None):
        tokens = original(split, data_dir)
        return tokens[:24_000] if split == "train" else tokens[:3_000]

    monkeypatch.setattr(ptb_train, "ptb_chars", sliced)


def test_train_learns_and_resumes(tmp_path, small_ptb):
    out = tmp_path / "run"
    first = ptb_train.train_char_lstm(str(out), epochs=1, batch_size=16, seq_len=50, peak_lr=1e-2, seed=0)
    assert first["valid_bpc"] < 4.5  # uniform guessing over 50 symbols: 5.64 bits
    # a longer schedule resumed from the checkpoint starts at epoch 2 and improves
    second = ptb_train.train_char_lstm(
        str(out), epochs=2, batch_size=16, seq_len=50, peak_lr=1e-2, seed=0, resume=True, log=lambda s: None
    )
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    assert second["valid_bpc"] < first["valid_bpc"]
    assert (out / "char_lstm_float.safetensors").is_file()
    # HWA fine-tuning from it runs and records its settings
    hwa = ptb_train.train_char_lstm(
        str(tmp_path / "hwa"),
        epochs=1,
        batch_size=16,
        seq_len=50,
        peak_lr=1e-3,
        hwa=True,
        init=str(out / "char_lstm_float.safetensors"),
        tag="hwa",
        log=lambda s: None,
    )
    assert hwa["settings"]["hwa"] is True and hwa["valid_bpc"] < first["valid_bpc"] + 0.5


def test_train_cli_rejects_bad_arguments(capsys):
    assert main(["train", "gpt2", "--out", "x"]) != 0
    assert "MODEL must be one of" in capsys.readouterr().err
    assert main(["train", "char-lstm", "--out", "x", "--io-aware"]) != 0
    assert "resnet9 only" in capsys.readouterr().err
