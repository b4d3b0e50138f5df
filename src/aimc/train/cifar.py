"""Training ResNet-9 on CIFAR-10 (floating point; the hardware-aware fine-tuning builds on it).

Recipe chosen to fit a 2-core CPU (the chip paper used 300 + 200 epochs on a GPU, docs/physics.md §11): SGD with
Nesterov momentum 0.9, weight decay 5e-4, label smoothing 0.1, batch 256, a one-cycle learning rate (linear warm-up to
the peak over the first 15% of steps, cosine decay to 0), augmentation by random crop with 4-pixel reflect padding,
horizontal flip and 8 x 8 cutout. On the CPU the forward/backward pass runs under bfloat16 autocast where that is
measured faster than float32 on the machine at hand (kernel ``train_precision`` of :mod:`aimc.kernels`; 4x faster on
CPUs with AMX, much slower where bfloat16 is emulated); on CUDA under float16 autocast.

Every epoch writes ``last.safetensors`` (weights, optimizer state, RNG state) and appends a line to ``log.jsonl``;
``resume=True`` continues from it without redoing finished epochs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aimc import kernels
from aimc._progress import progress as _progress
from aimc._provenance import provenance
from aimc.data import cifar10_tensors
from aimc.models import resnet9
from aimc.train.checkpoint import load_checkpoint, save_checkpoint
from aimc.train.hwa import DRIFT_WINDOW_S, analog_io, clip_weights, noisy_weights
from aimc.weights.io import load_weights_file

#: Recipe constants (our choice for a short CPU schedule; docs/physics.md §11 gives the paper's longer one).
PEAK_LR = 0.2
WARMUP_FRACTION = 0.15
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
LABEL_SMOOTHING = 0.1
CUTOUT = 8


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (4-pixel reflect pad), horizontal flip and cutout of a normalised batch ``(B, 3, 32, 32)``."""
    b = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx = torch.randint(0, 9, (b,), generator=gen)
    dy = torch.randint(0, 9, (b,), generator=gen)
    idx = torch.arange(32)
    rows = (dy[:, None] + idx[None, :])[:, None, :, None].expand(b, 3, 32, 40)
    cols = (dx[:, None] + idx[None, :])[:, None, None, :].expand(b, 3, 32, 32)
    out = torch.gather(torch.gather(padded, 2, rows), 3, cols)
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    cy = torch.randint(0, 32, (b,), generator=gen)
    cx = torch.randint(0, 32, (b,), generator=gen)
    yy = idx[None, :, None]
    xx = idx[None, None, :]
    hole = ((yy - cy[:, None, None]).abs() <= CUTOUT // 2 - 1) & ((xx - cx[:, None, None]).abs() <= CUTOUT // 2 - 1)
    return out.masked_fill(hole[:, None], 0.0)


def lr_at(step: int, total: int, peak: float = PEAK_LR) -> float:
    """One-cycle learning rate at ``step`` of ``total``."""
    warm = max(1, int(WARMUP_FRACTION * total))
    if step < warm:
        return peak * (step + 1) / warm
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _autocast(device: torch.device) -> Any:
    """float16 autocast on CUDA; on the CPU bfloat16 autocast or none, as the ``train_precision`` kernel says."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if kernels.Backend().kernel("train_precision", device.type) == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _precision_workloads(after: Any, names: tuple[str, ...]) -> dict[str, kernels.Workload]:
    """Timed training steps (forward and backward) of a ResNet-9-sized conv block, channels last, per candidate of
    ``train_precision``: batch 64 of 128 x 16 x 16 maps (the probe: batch 2)."""
    gen = torch.Generator().manual_seed(0)
    block = torch.nn.Sequential(
        torch.nn.Conv2d(128, 128, 3, padding=1, bias=False), torch.nn.BatchNorm2d(128), torch.nn.ReLU()
    ).to(memory_format=torch.channels_last)

    def call(name: str, batch: int) -> Callable[[], None]:
        x = torch.randn(batch, 128, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last)

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bfloat16"):
                loss = block(x).float().square().mean()
            loss.backward()

        return step

    return {name: kernels.Workload(call(name, 2), call(name, 64)) for name in names}


kernels.register(
    kernels.Operation(
        name="train_precision",
        summary="the forward/backward pass of training on the CPU",
        candidates=(
            kernels.Candidate("float32", "float32", "the reference"),
            kernels.Candidate(
                "bfloat16",
                "bfloat16 autocast (float32 weights and optimizer)",
                "activations and products in bfloat16 (8-bit mantissa); a different training trajectory, "
                "similar accuracy",
                lambda device_type: device_type == "cpu",
            ),
        ),
        workloads=_precision_workloads,
    )
)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``(x, y)``."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad(), _autocast(device):
        for i in range(0, len(x), batch):
            out = model(x[i : i + batch].to(device).contiguous(memory_format=torch.channels_last))
            correct += int((out.argmax(1).cpu() == y[i : i + batch]).sum())
    return correct / len(x)


def train_resnet9(
    out_dir: str,
    *,
    epochs: int = 20,
    batch_size: int = 256,
    seed: int = 0,
    data_dir: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    init: str | None = None,
    hwa: bool = False,
    peak_lr: float = PEAK_LR,
    tag: str = "float",
    io_aware: bool = False,
    drift_aware: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ResNet-9 on CIFAR-10; returns the final log record. Files go to ``out_dir``.

    Args:
        epochs, batch_size, seed: the schedule and its randomness.
        resume: continue from ``out_dir/last.safetensors`` if it exists.
        init: start from these weights (a checkpoint or weights file of ResNet-9), e.g. the float model for HWA.
        hwa: hardware-aware training: programming-noise injection (2x the HERMES model) and weight clipping
            (:mod:`aimc.train.hwa`).
        peak_lr: peak of the one-cycle schedule (the chip paper fine-tunes HWA at 0.05).
        io_aware: with ``hwa``, also 8-bit inputs and additive output noise in every analog layer
            (:func:`aimc.train.hwa.analog_io`, docs/physics.md §11).
        drift_aware: with ``hwa``, the noisy weights also drift to a random read time with global compensation
            (:func:`aimc.train.hwa.drift_factors`, window :data:`aimc.train.hwa.DRIFT_WINDOW_S`).
        tag: name of the final weights file ``resnet9_{tag}.safetensors``.
        progress: show the batches of each epoch on stderr (a live bar on a terminal, a line every 50 batches
            otherwise); ``log`` still receives each epoch's record.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x_train, y_train = cifar10_tensors("train", data_dir=data_dir)
    x_test, y_test = cifar10_tensors("test", data_dir=data_dir)
    model = resnet9(seed=seed).to(device).to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=PEAK_LR,
        momentum=MOMENTUM,
        nesterov=True,
    )
    gen = torch.Generator().manual_seed(seed)
    start_epoch = 0
    ckpt = out / "last.safetensors"
    if resume and ckpt.is_file():
        meta = load_checkpoint(ckpt, model, opt, gen)
        start_epoch = int(meta["epoch"]) + 1
        log(f"resumed from {ckpt} after epoch {meta['epoch']}")
    elif init is not None:
        load_weights_file(init, model)
    steps_per_epoch = len(x_train) // batch_size
    total = epochs * steps_per_epoch
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "peak_lr": peak_lr,
        "tag": tag,
        "hwa": hwa,
        "io_aware": io_aware,
        "drift_aware": drift_aware,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "label_smoothing": LABEL_SMOOTHING,
    }
    record: dict[str, Any] = {}
    for epoch in range(start_epoch, epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(x_train), generator=gen)
        loss_sum, correct = 0.0, 0
        bar = _progress(
            total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", unit="batches", enabled=progress, every=50
        )
        for b in range(steps_per_epoch):
            step = epoch * steps_per_epoch + b
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, peak_lr)
            idx = perm[b * batch_size : (b + 1) * batch_size]
            xb = augment(x_train[idx], gen).to(device).contiguous(memory_format=torch.channels_last)
            yb = y_train[idx].to(device)
            opt.zero_grad(set_to_none=True)
            with (
                noisy_weights(model, gen, drift_window=DRIFT_WINDOW_S if drift_aware else None)
                if hwa
                else nullcontext(),
                analog_io(model, gen) if hwa and io_aware else nullcontext(),
                _autocast(device),
            ):
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=LABEL_SMOOTHING)
                loss.backward()  # gradient at the noisy weights, applied to the clean ones
            opt.step()
            if hwa:
                clip_weights(model)
            loss_sum += float(loss.detach())
            correct += int((logits.argmax(1) == yb).sum())
            bar.set_postfix_str(f"loss {loss_sum / (b + 1):.3f}", refresh=False)
            bar.update(1)
        bar.close()
        acc = evaluate(model, x_test, y_test)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / steps_per_epoch,
            "train_acc": correct / (steps_per_epoch * batch_size),
            "test_acc": acc,
            "seconds": round(time.time() - t0, 1),
        }
        log(json.dumps(record))
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        save_checkpoint(ckpt, model, opt, {**record, "settings": settings}, gen)
    final = {**record, "settings": settings, "provenance": provenance()}
    model_cpu = model.to("cpu").to(memory_format=torch.contiguous_format)
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in model_cpu.state_dict().items()},
        str(out / f"resnet9_{tag}.safetensors"),
        metadata={"aimc_model": "resnet9", "training": json.dumps(final)},
    )
    return final
