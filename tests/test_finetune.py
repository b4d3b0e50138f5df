"""Hardware-aware fine-tuning of any model (``aimc.train.hwa_finetune``, ``aimc finetune``): it learns under the chip's
noise, a resumed run ends with the weights of an uninterrupted one, bad input gets a clear error, and a grouped
convolution's output noise counts the row tiles of its block-diagonal matrix."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aimc.cli import main
from aimc.errors import ArgumentTypeError, CorruptFileError, UnknownNameError, ValidationError
from aimc.train import hwa_finetune
from aimc.train.checkpoint import load_checkpoint
from aimc.train.finetune import DEFAULT_LR, distillation_loss, lr_factor
from aimc.train.hwa import (
    CLIP_SIGMA,
    DRIFT_WINDOW_S,
    TILE_ROWS,
    _row_tiles,
    _rows,
    analog_io,
    input_ranges,
    noisy_weights,
)
from aimc.weights.io import save_weights


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread (two threads' synchronisation costs more than the work on a shared machine)."""
    torch.set_num_threads(1)
    yield


def _task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes, each a fixed random 3x8x8 pattern under Gaussian noise of 1.5x its scale."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, 4, (n,), generator=g)
    return templates[y] + 1.5 * torch.randn(n, 3, 8, 8, generator=g), y


def _cnn(dropout: float = 0.0) -> nn.Module:
    """A small CNN with batch norm, a depthwise convolution and (optionally) dropout."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 4),
    )


def _noisy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy over 5 draws of the chip's weight, input and output noise (per channel, as
    hwa_finetune injects them by default)."""
    model.eval()
    g = torch.Generator().manual_seed(7)
    total = 0.0
    with torch.no_grad():
        for _ in range(5):
            with noisy_weights(model, g, per_channel=True), analog_io(model, g, per_channel=True):
                total += float(F.cross_entropy(model(x), y))
    return total / 5


def test_finetuning_lowers_the_loss_under_the_chips_noise():
    x, y = _task(2048, 0)
    x_test, y_test = _task(512, 1)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    model = _cnn()
    before = _noisy_loss(model, x_test, y_test)
    out = hwa_finetune(model, batches, epochs=5, lr=3e-3, progress=False)  # 320 steps
    after = _noisy_loss(model, x_test, y_test)
    assert out is model and not model.training
    assert after < 0.3 * before, (before, after)  # ln 4 = 1.39 at the start; about 0.2 after
    for layer in (model[8],):  # each step ends with each output channel of >= 64 weights clipped at its RMS
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        assert bool((w.abs().amax(dim=1) <= CLIP_SIGMA * w.pow(2).mean(dim=1).sqrt() * 1.05).all())
    assert float(model[4].weight.detach().abs().amax(dim=(1, 2, 3)).min()) > 1e-3  # 9-weight channels: not clipped


def _loader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("stops", [(21,), (32,), (5, 40)], ids=["mid-epoch", "epoch-end", "twice"])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, stops):
    """Shuffled batches, dropout, batch norm and drift: interrupted via max_steps and continued from the checkpoint,
    the run ends bit for bit where the uninterrupted one does (3 epochs of 16 steps)."""
    x, y = _task(256, 2)
    kwargs = {"epochs": 3, "lr": 3e-3, "drift_window": DRIFT_WINDOW_S, "seed": 3, "progress": False}
    rng_before = torch.get_rng_state()
    whole = hwa_finetune(_cnn(dropout=0.2), _loader(x, y), **kwargs)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's global random state is left alone
    ckpt = tmp_path / "ft.safetensors"
    for stop in stops:  # a fresh process: new model, new loader, the same arguments
        hwa_finetune(_cnn(dropout=0.2), _loader(x, y), checkpoint=ckpt, max_steps=stop, checkpoint_every=7, **kwargs)
        assert load_checkpoint(ckpt, _cnn())["step"] == stop
    resumed = hwa_finetune(_cnn(dropout=0.2), _loader(x, y), checkpoint=ckpt, checkpoint_every=7, **kwargs)
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    # a finished run's checkpoint gives the fine-tuned model at once
    again = hwa_finetune(_cnn(dropout=0.2), _loader(x, y), checkpoint=ckpt, **kwargs)
    assert torch.equal(again[8].weight, whole[8].weight) and not again.training


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    x, y = _task(64, 3)
    ckpt = tmp_path / "ft.safetensors"
    hwa_finetune(_cnn(), _loader(x, y), epochs=2, checkpoint=ckpt, max_steps=2, progress=False)
    model = _cnn()
    with pytest.raises(ValidationError, match=r"other settings: epochs=2 \(now 3\)"):
        hwa_finetune(model, _loader(x, y), epochs=3, checkpoint=ckpt, progress=False)
    assert torch.equal(model[8].weight, _cnn()[8].weight)  # the model is left as it was
    weights = tmp_path / "w.safetensors"
    save_weights(weights, _cnn())
    with pytest.raises(CorruptFileError, match="not a checkpoint of aimc's HWA fine-tuning"):
        hwa_finetune(_cnn(), _loader(x, y), epochs=2, checkpoint=weights, progress=False)
    ckpt.write_bytes(ckpt.read_bytes()[:-10])
    with pytest.raises(CorruptFileError):
        hwa_finetune(_cnn(), _loader(x, y), epochs=2, checkpoint=ckpt, progress=False)


def test_distillation_loss_is_the_tempered_kl_divergence():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    p = F.softmax(teacher / 3.0, dim=-1)
    expected = 9.0 * float((p * (p.log() - F.log_softmax(student / 3.0, dim=-1))).sum(-1).mean())
    assert float(distillation_loss(student, teacher, 3.0)) == pytest.approx(expected, rel=1e-5)
    assert float(distillation_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValidationError, match="one logits tensor"):
        distillation_loss(student, teacher[:, :4], 2.0)


def test_distillation_keeps_the_tuned_network_near_its_teacher():
    """Fine-tuned on wrong labels (each class renamed as the next), a network tuned without a teacher learns the
    wrong names; with distill=1 it learns from its own float outputs and keeps its task (accuracy on the true
    labels of 512 images)."""
    x, y = _task(1024, 0)
    x_test, y_test = _task(512, 1)
    model = _cnn()
    hwa_finetune(
        model, [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)], epochs=4, lr=3e-3, progress=False
    )
    with torch.no_grad():
        start = float((model(x_test).argmax(1) == y_test).float().mean())
    wrong = (y + 1) % 4
    batches = [(x[i : i + 32], wrong[i : i + 32]) for i in range(0, len(x), 32)]
    accuracy = {}
    for distill in (0.0, 1.0):
        tuned = hwa_finetune(copy.deepcopy(model), batches, epochs=3, lr=3e-3, distill=distill, progress=False)
        with torch.no_grad():
            accuracy[distill] = float((tuned(x_test).argmax(1) == y_test).float().mean())
    assert start > 0.9, start
    assert accuracy[1.0] > start - 0.05 and accuracy[0.0] < 0.5, (start, accuracy)


def test_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0, 100) == pytest.approx(0.2) and lr_factor(4, 100) == pytest.approx(1.0)
    assert lr_factor(99, 100) < 1e-3
    from aimc.cli import build_parser

    args = build_parser().parse_args(["finetune", "net.py", "w.safetensors", "--out", "o.safetensors"])
    assert args.lr == DEFAULT_LR and args.batch == 128 and args.epochs == 1 and args.factory == "model"


def _batches(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _task(16 * n, 4)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(x), 16)]


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"epochs": 0}, ValidationError, "epochs must be in"),
        ({"epochs": 1.5}, ArgumentTypeError, "epochs must be an int"),
        ({"lr": 0.0}, ValidationError, "lr must be in"),
        ({"lr": -1e-3}, ValidationError, "lr must be in"),
        ({"lr": float("nan")}, ValidationError, "lr must be finite"),
        ({"device": "nope"}, UnknownNameError, "unknown device model name 'nope'"),
        ({"strategy": "xdp"}, UnknownNameError, "strategy must be one of"),
        ({"strategy": "odp"}, ValidationError, "ODP needs a one-device model"),
        ({"drift_window": (100.0, 10.0)}, ValidationError, "drift_window"),
        ({"max_steps": 0}, ValidationError, "max_steps"),
        ({"seed": -1}, ValidationError, "seed"),
        ({"loss_fn": "mse"}, ArgumentTypeError, "loss_fn must be callable"),
        ({"loss_fn": lambda out, y: out.sum(1)}, ValidationError, "scalar tensor"),
        ({"distill": 1.5}, ValidationError, "distill must be in"),
        ({"distill": 0.5, "distill_temperature": 0.0}, ValidationError, "distill_temperature must be in"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs, error, words):
    with pytest.raises(error, match=words):
        hwa_finetune(_cnn(), _batches(), progress=False, **kwargs)


def test_bad_loaders_and_models_get_clear_errors():
    x, y = _task(32, 5)
    with pytest.raises(ValidationError, match=r"\(inputs, targets\) pairs; batch 0 is a dict"):
        hwa_finetune(_cnn(), [{"x": x, "y": y}], progress=False)
    with pytest.raises(ValidationError, match="batch 0 is a tuple of 3 items"):
        hwa_finetune(_cnn(), [(x, y, y)], progress=False)
    with pytest.raises(ArgumentTypeError, match="inputs of batch 0 must be a floating-point or integer"):
        hwa_finetune(_cnn(), [(y > 0, y)], progress=False)
    with pytest.raises(ArgumentTypeError, match="must have a len"):
        hwa_finetune(_cnn(), ((x, y) for _ in range(2)), progress=False)
    with pytest.raises(ValidationError, match="empty"):
        hwa_finetune(_cnn(), [], progress=False)
    with pytest.raises(ValidationError, match="no Conv2d or Linear"):
        hwa_finetune(nn.Sequential(nn.ReLU()), [(x, y)], progress=False)
    with pytest.raises(ArgumentTypeError, match=r"torch\.nn\.Module"):
        hwa_finetune("resnet9", [(x, y)], progress=False)


class _Short:
    """A loader whose len() promises more batches than it yields."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches) + 1

    def __iter__(self):
        return iter(self.batches)


def test_non_finite_loss_names_the_step_and_short_loaders_are_caught():
    batches = _batches()
    bad = batches[2][0].clone()
    bad[0, 0, 0, 0] = float("nan")
    batches[2] = (bad, batches[2][1])
    with pytest.raises(ValidationError, match="batch 3 of train_loader holds NaN or Inf inputs"):
        hwa_finetune(_cnn(), batches, progress=False)  # caught where the input ranges are calibrated
    calls = []

    def nan_at_step_2(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return F.cross_entropy(out, y) * (float("nan") if len(calls) == 3 else 1.0)

    with pytest.raises(ValidationError, match=r"loss is nan at step 2 \(epoch 1, batch 3\)"):
        hwa_finetune(_cnn(), _batches(), loss_fn=nan_at_step_2, progress=False)
    with pytest.raises(ValidationError, match="yielded 4 batches in epoch 1, fewer than its len"):
        hwa_finetune(_cnn(), _Short(_batches()), progress=False)


def test_grouped_conv_counts_the_row_tiles_of_its_block_diagonal_matrix():
    """A depthwise 3x3 conv of 64 channels is a 576-row matrix on the chip (3 tiles of 256 rows), not 9 rows, split
    at channel boundaries: each output sums the partial sums of 1 tile. An ungrouped 300-row layer sums 2."""
    depthwise = nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)
    assert _rows(depthwise) == 576 and math.ceil(_rows(depthwise) / TILE_ROWS) == 3 and _row_tiles(depthwise) == 1
    assert _rows(nn.Conv2d(8, 16, 3, groups=2)) == 72 == _rows(nn.Conv2d(8, 16, 3))
    assert _rows(nn.Linear(300, 10)) == 300 and _row_tiles(nn.Linear(300, 10)) == 2
    assert _row_tiles(nn.Conv2d(128, 128, 3, groups=2)) == 5  # a group's 576 rows do not fit in a tile
    # the output noise has std 0.1 · sqrt(1 tile) · max|W| · max|x|
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 16, 16, generator=g)
    with torch.no_grad():
        clean = depthwise(x)
        with analog_io(depthwise, g, bits=16):
            noisy = depthwise(x)
    expected = 0.1 * float(depthwise.weight.detach().abs().max()) * float(x.abs().max())
    assert float((noisy - clean).std()) == pytest.approx(expected, rel=0.05)


def test_mapping_rows_of_a_grouped_conv_match():
    """The compiled layer's matrix has the rows the output noise counts."""
    import aimc

    net = nn.Sequential(nn.Conv2d(40, 40, 3, padding=1, groups=40, bias=False), nn.ReLU()).eval()
    mapping = aimc.compile(net, example_input=torch.randn(4, 40, 6, 6, generator=torch.Generator().manual_seed(0)))
    assert mapping.layers["0"].weight.shape[1] == _rows(net[0]) == 360


MODEL_FILE = """
from torch import nn


def model():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 10)
    )


def other():
    return "not a module"
"""


def _fake_cifar(root, n: int = 64) -> None:
    """A CIFAR-10 training file of ``n`` random images where the data folder is looked for."""
    g = np.random.default_rng(0)
    (root / "cifar10").mkdir(parents=True)
    np.savez_compressed(
        root / "cifar10" / "cifar10-train.npz",
        images=g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        labels=g.integers(0, 10, n, dtype=np.uint8),
    )


def test_cli_finetunes_a_model_file_and_resumes(tmp_path, capsys):
    model_py = tmp_path / "net.py"
    model_py.write_text(MODEL_FILE)
    torch.manual_seed(0)
    start = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 10)
    )
    weights = tmp_path / "w.safetensors"
    save_weights(weights, start)
    _fake_cifar(tmp_path / "data")
    common = [
        "finetune",
        str(model_py),
        str(weights),
        "--data-dir",
        str(tmp_path / "data"),
        "--epochs",
        "2",
        "--batch",
        "16",
        "--lr",
        "1e-3",
        "--distill",
        "0.5",
        "--quiet",
    ]
    whole, part = tmp_path / "whole.safetensors", tmp_path / "part.safetensors"
    assert main([*common, "--out", str(whole)]) == 0
    ckpt = str(tmp_path / "ck.safetensors")
    assert main([*common, "--out", str(part), "--checkpoint", ckpt, "--max-steps", "3"]) == 0
    assert "stopped at step 3 of 8" in capsys.readouterr().out
    assert main([*common, "--out", str(part), "--checkpoint", ckpt]) == 0
    assert "8 steps of HWA fine-tuning (hermes-2dev, TDP)" in capsys.readouterr().out
    with safe_open(str(whole), "pt") as a, safe_open(str(part), "pt") as b:
        record = json.loads(b.metadata()["aimc_hwa_finetune"])
        for key in a.keys():  # noqa: SIM118 (a safetensors file, not a dict)
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
        assert not torch.equal(a.get_tensor("4.weight"), start[4].weight.detach())
    assert record["seed"] == 0 and record["device"] == "hermes-2dev" and record["epochs"] == 2
    assert record["distill"] == 0.5
    assert record["pixels"] == "normalised" and record["images"] == 64 and record["aimc_version"]


def test_cli_recipe_options_reach_the_fine_tuning(tmp_path):
    """--noise-scale, --output-noise, --batchnorm, --drift, --augment and --digital-layers are the settings the run
    trains with (its checkpoint's) and are recorded in the output file."""
    from aimc.cli import _user_model

    model_py = tmp_path / "net.py"
    model_py.write_text(MODEL_FILE)
    torch.manual_seed(0)
    start = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 10)
    )
    weights, out, ckpt = (tmp_path / f"{n}.safetensors" for n in ("w", "o", "ck"))
    save_weights(weights, start)
    _fake_cifar(tmp_path / "data")
    recipe = ["--noise-scale", "1", "--output-noise", "0.05", "--batchnorm", "frozen", "--drift", "--augment"]
    argv = ["finetune", str(model_py), str(weights), "--data-dir", str(tmp_path / "data"), "--batch", "16"]
    argv += [*recipe, "--digital-layers", "0", "--quiet", "--out", str(out), "--checkpoint", str(ckpt)]
    assert main(argv) == 0
    settings = load_checkpoint(ckpt, _user_model(str(model_py), "model"))["settings"]
    assert settings["noise_scale"] == 1.0 and settings["output_noise"] == 0.05
    assert settings["batchnorm"] == "frozen" and settings["digital_layers"] == ["0"]
    assert tuple(settings["drift_window"]) == DRIFT_WINDOW_S
    with safe_open(str(out), "pt") as f:
        record = json.loads(f.metadata()["aimc_hwa_finetune"])
    assert record["noise_scale"] == 1.0 and record["output_noise"] == 0.05 and record["batchnorm"] == "frozen"
    assert record["augment"] is True and record["digital_layers"] == ["0"]
    assert tuple(record["drift_window"]) == DRIFT_WINDOW_S
    assert record["steps"] == 4  # 64 images in batches of 16, the last one kept


def test_cli_help_states_the_defaults_of_hwa_finetune(capsys):
    from aimc.train.hwa import OUTPUT_NOISE, RESNET9_NOISE_SCALE

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"programming error (default {RESNET9_NOISE_SCALE:g}," in text
    assert f"full scale (default {OUTPUT_NOISE:g})" in text


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--digital-layers", "conv1"], "conv1"),
        (["--noise-scale", "-1"], "--noise-scale must be in"),
        (["--factory", "nope"], "defines no function nope()"),
        (["--factory", "other"], "returned a str, not a torch.nn.Module"),
        (["--epochs", "0"], "--epochs must be in"),
        (["--lr", "-1"], "--lr must be in"),
        (["--device", "nope"], "unknown device model name"),
        (["--batch", "100"], "--batch 100 is larger than the 64 training images"),
        (["--distill", "2"], "--distill must be in"),
    ],
)
def test_cli_bad_arguments(tmp_path, capsys, extra, words):
    from aimc.cli import _user_model

    model_py = tmp_path / "net.py"
    model_py.write_text(MODEL_FILE)
    weights = tmp_path / "w.safetensors"
    save_weights(weights, _user_model(str(model_py), "model"))
    _fake_cifar(tmp_path / "data")
    argv = ["finetune", str(model_py), str(weights), "--data-dir", str(tmp_path / "data")]
    assert main([*argv, "--out", str(tmp_path / "o.safetensors"), "--quiet", *extra]) == 2
    assert words in capsys.readouterr().err


def test_cli_pixel_scales(tmp_path):
    from argparse import Namespace

    from aimc.cli import _finetune_data

    _fake_cifar(tmp_path)
    args = Namespace(data_dir=str(tmp_path), images=8, raw_pixels=False, unit_pixels=False)
    normalised, labels = _finetune_data(args)
    raw, _ = _finetune_data(Namespace(**{**vars(args), "raw_pixels": True}))
    unit, _ = _finetune_data(Namespace(**{**vars(args), "unit_pixels": True}))
    assert raw.shape == (8, 3, 32, 32) and labels.dtype == torch.int64
    assert float(raw.max()) > 200 and float(unit.max()) <= 1.0 and float(normalised.min()) < -1.0
    torch.testing.assert_close(unit * 255.0, raw)


def test_input_ranges_are_the_compilers_and_set_the_output_noise():
    """The fixed input ranges of HWA fine-tuning are the PWM full scales the compiler chooses on the same data, and
    the output noise is in their units, so that one outlier activation does not set a layer's noise: a batch with an
    input 1000x the others gets the same noise as without it."""
    import aimc

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).eval()
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ranges = input_ranges(net, [x[:32], x[32:]])
    mapping = aimc.compile(net, calibration=x, progress=False)
    assert ranges == pytest.approx([mapping.layers["0"].x_range, mapping.layers["3"].x_range], rel=1e-6)
    linear = nn.Linear(16, 16)
    inputs = torch.zeros(2, 16)
    outlier = inputs.clone()
    outlier[1, 0] = 1000.0
    with torch.no_grad():
        draws = {}
        for name, batch in (("plain", inputs), ("outlier", outlier)):
            g = torch.Generator().manual_seed(1)
            with analog_io(linear, g, ranges=[2.0]):
                draws[name] = linear(batch)[0] - linear.bias  # row 0 is all zeros: its output is the noise
    assert torch.equal(draws["plain"], draws["outlier"])
    expected = 0.1 * float(linear.weight.detach().abs().max()) * 2.0
    assert float(draws["plain"].std()) == pytest.approx(expected, rel=0.5)  # 16 draws
    with (
        pytest.raises(ValidationError, match="ranges has 2 entries; the model has 1 Conv2d/Linear layers"),
        analog_io(linear, torch.Generator(), ranges=[1.0, 2.0]),
    ):
        pass


def test_per_channel_noise_and_clipping_follow_each_channels_own_scale():
    """With ``per_channel`` (hwa_finetune's default, as the compiler's column scaling maps each column to the full
    conductance range) a channel of weights 100x smaller gets 100x less weight noise, and clipping leaves a channel
    of large weights as it is; with one scale per layer the small channel's noise is the large one's and the large
    channel is clipped."""
    from aimc.devices.registry import get as get_device
    from aimc.train.hwa import clip_weights, weight_noise_std

    device = get_device("hermes-2dev")
    w = torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.01, -0.005, 0.0025, 0.0]])
    per_channel = weight_noise_std(w, device, "tdp", 2.0, per_channel=True)
    per_layer = weight_noise_std(w, device, "tdp", 2.0)
    assert torch.allclose(per_channel[1], per_channel[0] / 100)
    assert torch.allclose(per_channel[0], per_layer[0])
    assert float(per_layer[1].min()) > float(per_channel[1].max())
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.01, -0.01, 0.01, -0.01]]))
    big = nn.Linear(64, 2, bias=False)
    with torch.no_grad():
        big.weight.copy_(torch.tensor([1.0, -1.0] * 32).repeat(2, 1) * torch.tensor([[1.0], [0.01]]))
        big.weight[1, 0] = 1.0  # one outlier in the small row
    clip_weights(big, 2.5, per_channel=True)  # row 0: |w| = its RMS, kept; row 1's outlier clipped to 2.5 x RMS
    assert float(big.weight.detach()[0].abs().min()) == 1.0
    assert float(big.weight.detach()[1, 0]) == pytest.approx(2.5 * math.sqrt((1.0 + 63 * 1e-4) / 64), rel=1e-5)
    clip_weights(layer, 1.0, per_channel=True)  # 4 weights per channel: too few to clip
    assert float(layer.weight.detach()[0].abs().min()) == 1.0
    clip_weights(layer, 1.0)  # the layer's std (0.756) clips the large row
    assert float(layer.weight.detach()[0].abs().max()) == pytest.approx(0.756, abs=1e-3)


def test_a_token_model_with_linear_layers_on_sequences_fine_tunes():
    """Integer token inputs and Linear layers on (B, T, D) activations (a language model): per-channel output noise
    is added along the last dimension, and the loss goes down on a task the model can learn."""
    from aimc.models.transformer import CharTransformer

    torch.manual_seed(0)
    model = CharTransformer(vocab_size=8, d_model=16, layers=1, heads=2, ff=32, context=8, dropout=0.0, seed=0)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 8, (64, 9), generator=g)
    tokens[:, 1:] = (tokens[:, :-1] + 1) % 8  # next token = this one + 1
    loader = [(tokens[i : i + 16, :-1], tokens[i : i + 16, 1:]) for i in range(0, 64, 16)]

    def loss_fn(logits, targets):
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 8), targets.reshape(-1))

    with torch.no_grad():
        before = float(loss_fn(model(tokens[:, :-1]), tokens[:, 1:]))
    hwa_finetune(model, loader, epochs=20, lr=1e-2, loss_fn=loss_fn, progress=False)
    with torch.no_grad():
        after = float(loss_fn(model(tokens[:, :-1]), tokens[:, 1:]))
    assert after < 0.9 * before  # 2.08 -> 1.59 as measured (seed 0); no learning would stay at 2.08


def test_layers_on_the_digital_unit_get_no_analog_noise():
    """With ``digital_layers="depthwise"`` the depthwise convolution is no analog layer while fine-tuning (no noise
    is injected into it), and it is analog again afterwards."""
    from aimc.train.hwa import analog_layers, on_digital_unit

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Flatten(), torch.nn.LazyLinear(4)
    )
    model(torch.zeros(1, 3, 8, 8))
    with on_digital_unit(model, "depthwise") as marked:
        assert marked == ["1"] and model[1] not in analog_layers(model)
    assert model[1] in analog_layers(model)
    with pytest.raises(ValidationError, match="'depthwise' or a list of layer names"):
        hwa_finetune(model, [(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))], digital_layers="dw")
    with on_digital_unit(model, ["depthwise", "0"]) as marked:
        assert marked == ["0", "1"] and analog_layers(model) == [model[3]]
    with pytest.raises(ValidationError, match=r"names 'stem'.*'0', '1', '3'"):
        hwa_finetune(model, [(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))], digital_layers=["stem"])
