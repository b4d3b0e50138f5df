"""Hardware-aware (HWA) fine-tuning of any PyTorch model for the chip.

:func:`hwa_finetune` takes a trained model and a data loader and fine-tunes the model so that it keeps its accuracy on
the analog chip: every training step runs the forward pass with

- programming-like noise on every Conv2d/Linear weight (:func:`aimc.train.hwa.noisy_weights`: the device model's
  programming error at each weight's conductance, scaled by ``noise_scale``; optionally drift to a random read time
  with global compensation),
- the chip's 8-bit input conversion and additive output noise in every Conv2d/Linear layer
  (:func:`aimc.train.hwa.analog_io`), both in units of the layer's input range, chosen at the start of each epoch as
  the compiler chooses a PWM range (:func:`aimc.train.hwa.input_ranges` on the first
  :data:`~aimc.train.hwa.CALIBRATION_BATCHES` batches),

takes the gradient at the noisy weights (the quantisation passes it straight through), applies it to the clean
weights and then clips each layer's weights (:func:`aimc.train.hwa.clip_weights`), so that a few outliers do not set
the largest conductance of a whole layer.

Example::

    from torch.utils.data import DataLoader, TensorDataset
    from aimc.train import hwa_finetune

    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    model = hwa_finetune(model, loader, epochs=2, checkpoint="ft.safetensors")

With ``checkpoint`` the run is resumable: calling it again with the same arguments continues where the file says it
stopped and ends with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aimc import kernels
from aimc._progress import progress as _progress
from aimc._tensorfile import read_header
from aimc._validation import SeedLike, check_choice, check_number, make_generator
from aimc.core.analog import polarity_g_max
from aimc.devices.base import DeviceModel
from aimc.devices.registry import get as get_device
from aimc.errors import ArgumentTypeError, CorruptFileError, ValidationError
from aimc.train.checkpoint import load_checkpoint, save_checkpoint
from aimc.train.hwa import (
    CALIBRATION_BATCHES,
    CLIP_SIGMA,
    OUTPUT_NOISE,
    RESNET9_NOISE_SCALE,
    analog_io,
    analog_layers,
    clip_weights,
    input_ranges,
    on_digital_unit,
)
from aimc.train.hwa import noisy_weights as _noisy_weights
from aimc.weights.io import MAX_WEIGHTS_BYTES

__all__ = ["CHECKPOINT_EVERY", "DEFAULT_LR", "DISTILL_TEMPERATURE", "WARMUP_FRACTION", "hwa_finetune", "lr_factor"]

#: Our choice: AdamW's learning rate (a common fine-tuning rate; see :func:`hwa_finetune` for why AdamW).
DEFAULT_LR = 1e-4
#: Our choice: the learning rate rises linearly over this fraction of the steps, then decays to 0 on a cosine.
WARMUP_FRACTION = 0.05
#: Our choice: steps between two checkpoints (one is also written at the end and where ``max_steps`` stops).
CHECKPOINT_EVERY = 200
#: Our choice: the softmax temperature of the distillation loss (Hinton, Vinyals & Dean, "Distilling the Knowledge in
#: a Neural Network", 2015, use 1-20; 2 keeps most of the weight on the teacher's leading classes).
DISTILL_TEMPERATURE = 2.0
#: Kind of file written by :func:`hwa_finetune` (the ``kind`` of its checkpoint's meta).
CHECKPOINT_KIND = "aimc-hwa-finetune"


def lr_factor(step: int, total: int, warmup_fraction: float = WARMUP_FRACTION) -> float:
    """Learning rate of ``step`` (0-based) of ``total`` as a fraction of the peak: linear warm-up, cosine to 0."""
    warm = max(1, int(warmup_fraction * total))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _autocast(device: torch.device, enabled: bool) -> AbstractContextManager[Any]:
    """bfloat16 autocast where it helps: on a CUDA GPU that has it, on a CPU where the ``train_precision`` kernel
    measured it faster (e.g. with AMX); else none."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and device.type == "cpu":
        import aimc.train.cifar  # noqa: F401  (registers the train_precision kernel)

        if kernels.Backend().kernel("train_precision", "cpu") == "bfloat16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Knowledge-distillation loss (Hinton et al. 2015): ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``,
    averaged over every position of the logits' leading dimensions.

    Args:
        student, teacher: logits of the same shape ``(..., C)``; the classes are the last dimension.
        temperature: ``T`` > 0.
    """
    if not isinstance(student, torch.Tensor) or not isinstance(teacher, torch.Tensor) or student.shape != teacher.shape:
        raise ValidationError(
            "distillation needs the model to return one logits tensor (..., classes); got "
            f"{type(student).__name__} of shape {tuple(getattr(student, 'shape', ()))} from the model being tuned and "
            f"{tuple(getattr(teacher, 'shape', ()))} from the teacher"
        )
    s = F.log_softmax(student.float().flatten(0, -2) / temperature, dim=-1)
    t = F.log_softmax(teacher.float().flatten(0, -2) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def _split_batch(batch: object, step: int) -> tuple[torch.Tensor, Any]:
    """``(inputs, targets)`` of a batch, or a clear error."""
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        what = f"a {type(batch).__name__}" + (f" of {len(batch)} items" if isinstance(batch, tuple | list) else "")
        raise ValidationError(
            f"train_loader must yield (inputs, targets) pairs; batch {step} is {what} (e.g. wrap tensors x, y in "
            "DataLoader(TensorDataset(x, y), ...))"
        )
    x, y = batch
    if not isinstance(x, torch.Tensor) or x.is_complex() or x.dtype == torch.bool:
        raise ArgumentTypeError(
            f"the inputs of batch {step} must be a floating-point or integer (token ids) torch.Tensor, got "
            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    return x, y


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device) for v in value)
    return value


def _loader_generator(loader: Iterable[Any]) -> torch.Generator | None:
    """The generator a ``DataLoader`` shuffles with (saved in checkpoints so that a resumed run sees the same
    batches), or None."""
    gen = getattr(loader, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def _input_ranges(
    model: nn.Module, loader: Iterable[Any], loader_gen: torch.Generator | None, device: torch.device
) -> list[float]:
    """:func:`aimc.train.hwa.input_ranges` on the first :data:`CALIBRATION_BATCHES` batches of ``loader``, leaving
    the loader's shuffling state as it was (so that training sees the batches it would have seen without this)."""
    state = loader_gen.get_state() if loader_gen is not None else None
    try:
        batches = []
        for step, batch in enumerate(loader):
            if step >= CALIBRATION_BATCHES:
                break
            x = _to(_split_batch(batch, step)[0], device)
            if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise ValidationError(f"batch {step + 1} of train_loader holds NaN or Inf inputs")
            batches.append(x)
        return input_ranges(model, batches)
    finally:
        if loader_gen is not None and state is not None:
            loader_gen.set_state(state)


def _teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in eval mode: the distillation teacher."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Raise a clear error if the checkpoint ``path`` was written by a run with other ``settings``."""
    _, header = read_header(path, max_bytes=MAX_WEIGHTS_BYTES, what="checkpoint")
    try:
        saved = json.loads(header["meta"]).get("settings", {})
    except (KeyError, ValueError, AttributeError, RecursionError):
        raise CorruptFileError(f"{str(path)!r} is not a checkpoint of aimc's HWA fine-tuning") from None
    if not isinstance(saved, dict) or saved.get("kind") != CHECKPOINT_KIND:
        raise CorruptFileError(f"{str(path)!r} is not a checkpoint of aimc's HWA fine-tuning")
    changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
    if changed:
        what = ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in changed.items())
        raise ValidationError(
            f"checkpoint {str(path)!r} was written by a run with other settings: {what}; pass the same settings to "
            "continue it, or another checkpoint path to start afresh"
        )


def hwa_finetune(
    model: nn.Module,
    train_loader: Iterable[Any],
    *,
    device: str | DeviceModel = "hermes-2dev",
    strategy: str = "tdp",
    epochs: int = 1,
    lr: float = DEFAULT_LR,
    weight_decay: float = 0.0,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    seed: SeedLike = 0,
    noise_scale: float = RESNET9_NOISE_SCALE,
    output_noise: float = OUTPUT_NOISE,
    drift_window: tuple[float, float] | None = None,
    clip_sigma: float = CLIP_SIGMA,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    max_steps: int | None = None,
    autocast: bool = False,
    batchnorm: str = "update",
    per_channel: bool = True,
    progress: bool = True,
    digital_layers: Sequence[str] | str = (),
    distill: float = 0.0,
    distill_temperature: float = DISTILL_TEMPERATURE,
) -> nn.Module:
    """Fine-tune ``model`` hardware-aware on ``train_loader``, in place; returns it in eval mode.

    Each step: fresh programming-like noise on every Conv2d/Linear weight and, in every such layer, 8-bit inputs
    and additive output noise in the forward pass (module docstring); the loss's gradient at the noisy weights
    (straight through the quantisation) updates the clean weights; then each layer's weights are clipped to
    ``clip_sigma`` standard deviations. The model trains in train mode (dropout is on; batch norms as ``batchnorm``
    says); it runs wherever its parameters are (CPU or GPU).

    Why AdamW with a small learning rate: the model comes from a recipe we do not know, and Adam's step size does
    not depend on the scale of the loss or of a layer's gradients, so one default fits models of any depth,
    parametrisation and loss; 1e-4 moves trained weights by at most about 1e-4 per step, enough to adapt them to
    the noise over a few epochs without undoing the training. The rate rises linearly over the first
    :data:`WARMUP_FRACTION` of the steps (so that the first noisy gradients do not jolt the trained weights) and
    decays to 0 on a cosine (:func:`lr_factor`). No weight decay by default: the clipping already bounds the
    weights, and decay would pull a trained model away from its optimum. Measured once on the shipped float ResNet-9
    (SGD-trained; 50 steps of 128 CIFAR-10 training images; accuracy on 1,000 test images under this noise, mean of
    3 draws): 65.5% before, 89.8% after at lr 1e-4 (92.7% -> 92.1% without noise), 85.8% at lr 1e-3 (88.5%
    without noise).

    Args:
        model: any ``nn.Module``; its Conv2d and Linear layers are the ones the chip computes and get the noise
            (other layers, e.g. an LSTM's, are trained without it).
        train_loader: yields ``(inputs, targets)`` pairs and has a ``len()`` (a ``DataLoader``, a list of pairs).
            For a run resumed from ``checkpoint`` to match an uninterrupted one it must yield the same batches in
            each epoch: no shuffling, or a ``DataLoader`` shuffling with its own seeded ``generator`` (whose state
            the checkpoint holds).
        device: device model preset (``aimc.devices.available()``) or a device model whose programming noise is
            injected.
        strategy: ``"tdp"`` or ``"odp"``: sets the largest conductance of a weight (two or one devices).
        epochs: passes over ``train_loader``.
        lr: peak learning rate of AdamW (see above).
        weight_decay: AdamW's decoupled weight decay.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``; default cross-entropy (classification with
            integer class targets).
        batchnorm: ``"update"`` (default): batch statistics in each step, running statistics that follow the noisy
            network; ``"frozen"``: batch norms normalise with their running statistics, which stay as trained (their
            scale and shift still learn). "update" trains networks with batch norm before the ReLU (ResNet-9) and
            after it (the VGG-style net of docs/validation.md: 81.45% -> 81.50% in software after 3 epochs).
        per_channel: the weight noise, output noise and clipping of each output channel in units of its own largest
            weight (True, the default), as ``aimc.compile``'s column scaling maps every column to the full
            conductance range; False: of the layer's (the chip paper's per-core mapping, as ResNet-9 was trained).
            With one scale per layer, a depthwise convolution's channels of small weights get noise far larger than
            the chip gives them, and the clipping cuts its channels of large weights: the MobileNet-style net of
            docs/validation.md fell from 83% to 53% in software after 3 epochs.
        seed: an int or a ``torch.Generator``: the noise, and the random state of the model's own random layers
            (dropout), which is drawn from it for each step and leaves the global RNG of the caller unchanged.
        noise_scale: weight noise in units of the device model's programming error (default 2, the chip paper's
            ResNet-9 recipe).
        output_noise: additive output noise per layer in units of max|W|·max|x| per 256-row tile (default 0.1, the
            chip paper's 10%); 0 keeps only the 8-bit inputs.
        drift_window: ``(t_min, t_max)`` in seconds: the noisy weights also drift to a read time drawn
            log-uniformly from it, with global drift compensation (e.g.
            :data:`aimc.train.hwa.DRIFT_WINDOW_S`, 1 min-1 day); None: no drift.
        clip_sigma: per-layer weight clipping after each step, in standard deviations of the layer's weights.
        checkpoint: a ``.safetensors`` file: if it exists the run continues from it (model, optimizer, schedule,
            step and random states; the model's weights are replaced by the file's), and it is (re)written every
            ``checkpoint_every`` steps, where ``max_steps`` stops the run and at the end. Written with
            :func:`aimc.train.checkpoint.save_checkpoint` (safetensors + JSON, no pickle). A finished run's
            checkpoint returns the fine-tuned model at once.
        checkpoint_every: steps between checkpoints.
        max_steps: stop after this step of the schedule (counted from the start of the run, also across a resume);
            the schedule stays that of ``epochs``, so a later call with the same checkpoint continues it. None: run
            to the end.
        autocast: run the forward and backward pass under bfloat16 autocast where that is faster (CUDA GPUs with
            bfloat16; CPUs where aimc measured it faster, e.g. with AMX). Off by default: it changes the numbers
            and not every model trains well in bfloat16.
        progress: a progress bar on stderr (steps of the whole run, the loss, the time left).
        digital_layers: the weight layers that ``aimc.compile(..., digital_layers=...)`` runs on the digital unit
            (module names, or ``"depthwise"``, or both): they train without device noise, input quantisation or
            output noise. A name that is no Conv/Linear layer of the model is refused.
        distill: weight of knowledge distillation from the model as passed in (Hinton et al. 2015): the loss is
            ``(1 - distill) · loss_fn + distill · T² · KL(teacher ‖ tuned)`` on the logits' last dimension, the
            teacher being a frozen, noise-free copy of ``model`` in eval mode (one more forward pass per step).
            The tuned network then learns to give the float network's outputs under the chip's noise, rather than
            to refit the labels, which keeps more of its accuracy without noise. 0 (default): no teacher. A
            resumed run makes its teacher from the ``model`` passed to that call, so pass the same starting
            weights.
        distill_temperature: the distillation's softmax temperature ``T``.

    Returns:
        ``model``, fine-tuned, in eval mode.

    Raises:
        ValidationError: a bad argument (epochs < 1, lr <= 0, ...), a loader that does not yield ``(inputs,
            targets)``, a loss that is not finite (the message names the step), or a checkpoint written by a run
            with other settings.
        UnknownNameError: an unknown device preset or strategy.
        CorruptFileError: ``checkpoint`` exists but is not a valid checkpoint of this model.
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    with on_digital_unit(model, digital_layers) as marked:
        return _hwa_finetune(
            model,
            train_loader,
            device=device,
            strategy=strategy,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            loss_fn=loss_fn,
            seed=seed,
            noise_scale=noise_scale,
            output_noise=output_noise,
            drift_window=drift_window,
            clip_sigma=clip_sigma,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            max_steps=max_steps,
            autocast=autocast,
            batchnorm=batchnorm,
            per_channel=per_channel,
            progress=progress,
            digital=sorted(marked),
            distill=distill,
            distill_temperature=distill_temperature,
        )


def _hwa_finetune(
    model: nn.Module,
    train_loader: Iterable[Any],
    *,
    device: str | DeviceModel,
    strategy: str,
    epochs: int,
    lr: float,
    weight_decay: float,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    seed: SeedLike,
    noise_scale: float,
    output_noise: float,
    drift_window: tuple[float, float] | None,
    clip_sigma: float,
    checkpoint: str | os.PathLike[str] | None,
    checkpoint_every: int,
    max_steps: int | None,
    autocast: bool,
    batchnorm: str,
    per_channel: bool,
    progress: bool,
    digital: list[str],
    distill: float,
    distill_temperature: float,
) -> nn.Module:
    """The body of :func:`hwa_finetune` (its arguments); ``digital``: the layers marked as on the digital unit."""
    layers = analog_layers(model)
    if not layers:
        raise ValidationError("model has no Conv2d or Linear layer: nothing of it runs on the chip")
    check_number(epochs, "epochs", low=1, integer=True)
    check_number(lr, "lr", low=0.0, low_inclusive=False)
    check_number(weight_decay, "weight_decay", low=0.0)
    check_number(noise_scale, "noise_scale", low=0.0)
    check_number(output_noise, "output_noise", low=0.0)
    check_number(clip_sigma, "clip_sigma", low=0.0, low_inclusive=False)
    check_number(distill, "distill", low=0.0, high=1.0)
    check_number(distill_temperature, "distill_temperature", low=0.0, low_inclusive=False)
    check_number(checkpoint_every, "checkpoint_every", low=1, integer=True)
    if max_steps is not None:
        check_number(max_steps, "max_steps", low=1, integer=True)
    if drift_window is not None:
        if not isinstance(drift_window, tuple | list) or len(drift_window) != 2:
            raise ValidationError(f"drift_window must be a pair (t_min, t_max) in seconds, got {drift_window!r}")
        lo = check_number(drift_window[0], "drift_window[0]", low=0.0, low_inclusive=False)
        check_number(drift_window[1], "drift_window[1]", low=lo)
        drift_window = (float(drift_window[0]), float(drift_window[1]))
    check_choice(strategy, "strategy", ("tdp", "odp"))
    check_choice(batchnorm, "batchnorm", ("frozen", "update"))
    device_model = get_device(device) if isinstance(device, str) else device
    if not isinstance(device_model, DeviceModel):
        raise ArgumentTypeError(f"device must be a preset name or a DeviceModel, got {type(device).__name__}")
    polarity_g_max(device_model, strategy)  # a strategy the device model cannot do raises here
    if loss_fn is not None and not callable(loss_fn):
        raise ArgumentTypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise ArgumentTypeError(
            f"train_loader must have a len() (a DataLoader or a list of (inputs, targets) pairs), got "
            f"{type(train_loader).__name__}"
        ) from None
    if steps_per_epoch < 1:
        raise ValidationError("train_loader is empty")
    gen = make_generator(seed)
    total = epochs * steps_per_epoch
    stop = total if max_steps is None else min(total, max_steps)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValidationError("model has no trainable parameters (requires_grad is False everywhere)")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total))
    loader_gen = _loader_generator(train_loader)
    settings = {
        "kind": CHECKPOINT_KIND,
        "device": device_model.name,
        "strategy": strategy,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "lr": lr,
        "weight_decay": weight_decay,
        "noise_scale": noise_scale,
        "output_noise": output_noise,
        "drift_window": list(drift_window) if drift_window is not None else None,
        "clip_sigma": clip_sigma,
        "batchnorm": batchnorm,
        "per_channel": per_channel,
        "seed": seed if isinstance(seed, int) else "generator",
    }
    if digital:
        settings["digital_layers"] = digital
    if distill > 0:
        settings["distill"] = distill
        settings["distill_temperature"] = distill_temperature
    teacher = _teacher(model) if distill > 0 else None
    extra = {"loader": loader_gen} if loader_gen is not None else None
    step = 0
    ranges: list[float] | None = None
    torch_device = next(iter(params)).device
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        _check_settings(path, settings)  # before anything of the model changes
        meta = load_checkpoint(path, model, opt, gen, extra_generators=extra)
        try:
            sched.load_state_dict(meta["scheduler"])
            step = int(meta["step"])
            ranges = [float(r) for r in meta["input_ranges"]]
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptFileError(f"checkpoint {str(path)!r} holds no valid schedule state: {err}") from None
        if not 0 <= step <= total:
            raise CorruptFileError(f"checkpoint {str(path)!r} holds step {step}, outside 0-{total}")
        if len(ranges) != len(layers) or not all(math.isfinite(r) and r > 0 for r in ranges):
            raise CorruptFileError(
                f"checkpoint {str(path)!r} holds {len(ranges)} input ranges for a model with {len(layers)} "
                "Conv2d/Linear layers, or ranges that are not positive"
            )

    def save(done: int) -> None:
        if path is not None:
            meta = {
                "settings": settings,
                "step": done,
                "total_steps": total,
                "scheduler": sched.state_dict(),
                "input_ranges": ranges,
            }
            save_checkpoint(path, model, opt, meta, gen, extra_generators=extra)

    fork_devices = [torch_device.index or 0] if torch_device.type == "cuda" else []
    model.train()
    if batchnorm == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    bar = _progress(
        total=total, desc="HWA fine-tuning", unit="steps", enabled=progress, initial=step, every=max(1, total // 100)
    )
    smoothed: float | None = None
    with bar:
        for epoch in range(step // steps_per_epoch, epochs):
            if step >= stop:
                break
            if step == epoch * steps_per_epoch or ranges is None:
                # each epoch's input ranges from the model as it starts the epoch (a resumed run within an epoch
                # keeps the checkpoint's)
                ranges = _input_ranges(model, train_loader, loader_gen, torch_device)
            # the loader's shuffling state at the start of this epoch: what a checkpoint saved within it holds
            epoch_state = loader_gen.get_state() if loader_gen is not None else None
            first = step - epoch * steps_per_epoch  # batches of this epoch done before a resume
            seen = 0
            for b, batch in enumerate(train_loader):
                seen = b + 1
                if b < first:
                    continue
                if step >= stop or b >= steps_per_epoch:
                    break
                x, y = _split_batch(batch, step)
                x, y = _to(x, torch_device), _to(y, torch_device)
                step_seed = int(torch.randint(0, 2**62, (), generator=gen))
                opt.zero_grad(set_to_none=True)
                with torch.random.fork_rng(devices=fork_devices):
                    torch.manual_seed(step_seed)  # the model's own random layers (dropout), from ``seed``
                    with (
                        _noisy_weights(model, gen, device_model, strategy, noise_scale, drift_window, per_channel),
                        analog_io(model, gen, output_noise, ranges=ranges, per_channel=per_channel),
                        _autocast(torch_device, autocast),
                    ):
                        out = model(x)
                        loss = loss_fn(out, y)
                        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                            raise ValidationError(f"loss_fn must return a scalar tensor, got {loss!r:.80}")
                        if teacher is not None:
                            with torch.no_grad():
                                target = teacher(x)
                            kd = distillation_loss(out, target, distill_temperature)
                            loss = (1.0 - distill) * loss + distill * kd
                        value = float(loss.detach())
                        if not math.isfinite(value):
                            raise ValidationError(
                                f"the loss is {value} at step {step} (epoch {epoch + 1}, batch {b + 1}); check "
                                "the inputs and targets of that batch, or lower lr"
                            )
                        loss.backward()  # gradient at the noisy weights, applied to the clean ones
                opt.step()
                sched.step()
                clip_weights(model, clip_sigma, per_channel)
                step += 1
                smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
                bar.set_postfix_str(f"loss {smoothed:.4f}", refresh=False)
                bar.update(1)
                ends_epoch = step % steps_per_epoch == 0
                if not ends_epoch and (step % checkpoint_every == 0 or step >= stop):
                    # within an epoch: the loader restarts this epoch from its starting state and skips the
                    # batches done
                    if loader_gen is not None and epoch_state is not None:
                        after = loader_gen.get_state()
                        loader_gen.set_state(epoch_state)
                        save(step)
                        loader_gen.set_state(after)
                    else:
                        save(step)
            if step == (epoch + 1) * steps_per_epoch:
                if step % checkpoint_every == 0 or step >= stop:
                    save(step)  # the loader's state is now that of the next epoch's start
            elif step < stop:
                raise ValidationError(
                    f"train_loader yielded {seen} batches in epoch {epoch + 1}, fewer than its len() "
                    f"({steps_per_epoch})"
                )
    return model.eval()
