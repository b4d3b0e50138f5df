"""The shipped weights are real trained networks, readable without pickle, with their training record."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from aimc.data import cifar10_tensors
from aimc.errors import UnknownNameError
from aimc.models import resnet9
from aimc.weights import available_weights, weights_path
from aimc.weights.io import load_weights_file

from conftest import needs_cifar10


@needs_cifar10
@pytest.mark.parametrize(("name", "recorded"), [("resnet9_float", 0.9266), ("resnet9_hwa", 0.9295)])
def test_shipped_resnet9_weights_classify_cifar10(name, recorded):
    path = weights_path(name)
    assert path.stat().st_size < 10 * 1024**2
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    record = json.loads(meta["training"])
    assert meta["aimc_model"] == "resnet9" and record["test_acc"] == pytest.approx(recorded)
    model = resnet9()
    load_weights_file(str(path), model)
    model.eval()
    x, y = cifar10_tensors("test", 1000)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    # the first 1,000 test images; the whole test set gave the recorded accuracy (bf16 autocast in training)
    assert acc > recorded - 0.03


def test_unknown_weights_name_lists_the_shipped_ones():
    assert {"resnet9_float", "resnet9_hwa"} <= set(available_weights())
    with pytest.raises(UnknownNameError, match="resnet9_hwa"):
        weights_path("resnet9_tiny")


@pytest.mark.parametrize("name", ["char_lstm_float", "char_lstm_hwa"])
def test_shipped_char_lstm_predicts_ptb(name):
    from aimc.data.ptb import ptb_chars
    from aimc.models import char_lstm
    from aimc.tasks import TaskData, get_task
    from aimc.tasks.language import windows

    path = weights_path(name)
    assert path.stat().st_size < 10 * 1024**2
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    record = json.loads(meta["training"])
    assert meta["aimc_model"] == "char-lstm" and record["test_bpc"] < 1.5
    model = char_lstm()
    load_weights_file(str(path), model)
    inputs, targets = windows(ptb_chars("test")[:20_001], n_streams=40)
    # 20,000 test characters; the whole test set gave the recorded BPC (uniform guessing: log2(50) = 5.64)
    data = TaskData("char-lstm", inputs, targets, inputs)
    assert get_task("char-lstm").software(model.eval(), data) < record["test_bpc"] + 0.1
