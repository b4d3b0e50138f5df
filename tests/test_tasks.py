"""Tasks by name (aimc.tasks): one registry for aimc eval, reproduce, sweeps and design spaces, and the registry type
that device models, reference networks and tasks share."""

from __future__ import annotations

import pytest
import torch

from aimc import dse, sweep
from aimc._registry import Registry
from aimc.data.ptb import ptb_chars
from aimc.devices import get as get_device
from aimc.errors import UnknownNameError, ValidationError
from aimc.models import get_model
from aimc.tasks import CharLSTMPtb, ResNet9Cifar10, available_tasks, get_task, register_task
from aimc.tasks.base import _TASKS
from aimc.tasks.language import windows


def test_the_built_in_tasks_and_their_metrics():
    assert available_tasks()[:3] == ["resnet9", "char-lstm", "char-transformer"]
    assert [get_task(n).metric for n in available_tasks()[:3]] == ["accuracy", "bpc", "bpc"]
    assert get_task("char-lstm").higher_is_better is False and get_task("resnet9").default_weights == "resnet9_hwa"


@pytest.mark.parametrize(
    ("lookup", "kind"),
    [(get_task, "task"), (get_model, "model"), (get_device, "device model")],
)
def test_an_unknown_name_gives_one_error_naming_the_available_ones(lookup, kind):
    with pytest.raises(UnknownNameError, match=rf"^unknown {kind} name 'gpt2'; available: '[a-z]"):
        lookup("gpt2")


def test_registry_protects_built_in_entries_and_refuses_silent_replacement():
    reg: Registry[int] = Registry("thing", {"one": 1})
    reg.register("two", 2)
    assert reg.available() == ["one", "two"] and reg.get("two") == 2 and "two" in reg
    with pytest.raises(ValidationError, match="built-in thing"):
        reg.register("one", 3)
    with pytest.raises(ValidationError, match="already registered"):
        reg.register("two", 3)
    reg.register("two", 3, replace=True)
    assert reg.get("two") == 3
    reg.unregister("two")
    with pytest.raises(UnknownNameError, match="unknown thing name 'two'; available: 'one'"):
        reg.get("two")


def test_a_registered_task_is_known_to_sweeps_and_design_spaces():
    class Copy(ResNet9Cifar10):
        name = "resnet9-copy"

    register_task(Copy())
    try:
        with pytest.raises(ValidationError, match="already registered"):
            register_task(Copy())
        spec = sweep.parse_spec({"network": "resnet9-copy", "grid": {"seeds": 1, "times": [60]}})
        assert spec.weights == "resnet9_hwa"
        space = dse.parse_space(
            {"networks": ["resnet9-copy"], "design": {"tile_size": [256]}, "grid": {"seeds": 1, "times": [60]}}
        )
        assert space.networks[0].network == "resnet9-copy"
    finally:
        _TASKS.unregister("resnet9-copy")


def test_char_lstm_calibration_windows_are_those_of_the_first_20000_validation_characters():
    data = CharLSTMPtb().load_data(400, None)
    expected, _ = windows(ptb_chars("valid")[:20_001], 64)
    assert torch.equal(data.x_cal, expected)
    assert data.x.shape[0] == 200 and data.size == 400  # 400 characters in windows of 2 scored characters
