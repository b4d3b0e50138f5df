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


def test_char_transformer_trains_resumes_and_restarts_from_weights(tmp_path, monkeypatch):
    """A tiny char-transformer on a PTB slice: it learns, resumes its schedule, warm-restarts from weights with a
    fresh schedule, and HWA fine-tunes."""
    import aimc.train.char_transformer as ct

    original = ptb.ptb_chars
    monkeypatch.setattr(ct, "ptb_chars", lambda split, data_dir=None: original(split, data_dir)[:20_000])
    monkeypatch.setattr(ct, "CHECKPOINT_EVERY", 20)
    monkeypatch.setattr(ct, "VALID_CHARS", 2_000)
    monkeypatch.setattr(ct, "WARMUP_STEPS", 5)
    tiny = {"d_model": 32, "layers": 1, "heads": 2, "ff": 64, "context": 32}
    quiet = {"model_kwargs": tiny, "batch_size": 8, "peak_lr": 3e-3, "log": lambda s: None, "progress": False}
    first = ct.train_char_transformer(str(tmp_path / "a"), steps=40, **quiet)
    assert first["valid_bpc"] < 4.5  # uniform guessing over 50 symbols: 5.64 bits
    resumed = ct.train_char_transformer(str(tmp_path / "a"), steps=60, resume=True, **quiet)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [20, 40, 60]
    weights = str(tmp_path / "a" / "char_transformer_float.safetensors")
    restart = ct.train_char_transformer(str(tmp_path / "b"), steps=40, init=weights, **quiet)
    assert restart["settings"]["init"] == "char_transformer_float.safetensors"
    assert restart["valid_bpc"] < first["valid_bpc"]  # it starts from the trained weights, not from scratch
    assert resumed["valid_bpc"] < first["valid_bpc"]
