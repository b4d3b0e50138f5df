"""Two CIFAR-10 CNNs trained without aimc, the way outside code often trains them.

These are networks trained without aimc, with common habits (BatchNorm after ReLU, unnormalised inputs), to measure
how aimc's calibration and hardware-aware fine-tuning keep a foreign network's accuracy. They are trained in plain
PyTorch (of aimc only its plain crop-and-flip augmentation, :func:`aimc.train.batches.random_crop_flip`; no noise
injection, no weight clipping, no hardware-aware tricks):

* :func:`vgg_style`: 6 Conv2d (3x3, padding 1) + 3 Linear, each conv ``Conv2d -> ReLU -> BatchNorm2d`` (BatchNorm
  *after* the ReLU), max-pooling after every second conv, ``Linear -> ReLU -> BatchNorm1d`` in the classifier and
  plain logits. Its inputs are raw pixel floats in 0-255 (no normalisation, none inside the model either).
* :func:`mobilenet_style`: MobileNet-v1 style: a 3x3 conv, then six depthwise-separable blocks (depthwise 3x3 conv
  with ``groups=channels`` -> BatchNorm -> ReLU, pointwise 1x1 conv -> BatchNorm -> ReLU, two of them with stride
  2), global average pooling and one Linear. Its inputs are pixel floats scaled to [0, 1] (no mean/std
  normalisation).

Both use only Conv2d, Linear, ReLU, BatchNorm2d/1d, MaxPool2d, Flatten, Dropout, AdaptiveAvgPool2d and Sequential.
:func:`to_input` turns uint8 CIFAR-10 images (N, 32, 32, 3) into each net's input.

The shipped weights are ``benchmarks/weights/<net>.safetensors`` (all float32), with a JSON sidecar
``<net>.json`` (seed, epochs, test accuracy on the 10,000 test images, torch version, training wall time).
:func:`load` returns a net with its shipped weights, in eval mode.

Usage::

    python benchmarks/user_cnns.py --net vgg --epochs N [--out PATH]      # train, save weights + sidecar
    python benchmarks/user_cnns.py --net mobilenet --time-steps 50        # time training steps only
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aimc.train.batches import random_crop_flip

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
NETS = ("vgg", "mobilenet")
SEED = 0


def vgg_style(num_classes: int = 10) -> nn.Sequential:
    """VGG-style CNN for raw 0-255 pixel inputs (N, 3, 32, 32): conv -> ReLU -> BatchNorm, plain logits."""

    def conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout)]

    return nn.Sequential(
        *conv(3, 32), *conv(32, 32), nn.MaxPool2d(2),  # 16x16
        *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2),  # 8x8
        *conv(64, 128), *conv(128, 128), nn.MaxPool2d(2),  # 4x4
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.BatchNorm1d(256),
        nn.Linear(256, 128), nn.ReLU(), nn.BatchNorm1d(128),
        nn.Linear(128, num_classes),
    )  # fmt: skip


def mobilenet_style(num_classes: int = 10) -> nn.Sequential:
    """MobileNet-v1-style CNN for [0, 1] pixel inputs (N, 3, 32, 32): depthwise-separable blocks, global pooling."""

    def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]

    def separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return conv_bn(cin, cin, 3, stride, groups=cin) + conv_bn(cin, cout, 1, 1)

    return nn.Sequential(
        *conv_bn(3, 32, 3, 1),  # 32x32
        *separable(32, 64, 1),
        *separable(64, 128, 2),  # 16x16
        *separable(128, 128, 1),
        *separable(128, 256, 2),  # 8x8
        *separable(256, 256, 1),
        *separable(256, 256, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, num_classes),
    )


BUILDERS = {"vgg": vgg_style, "mobilenet": mobilenet_style}
#: Input scale of each net: the uint8 pixels are multiplied by it (VGG: raw 0-255, MobileNet: 0-1).
INPUT_SCALE = {"vgg": 1.0, "mobilenet": 1.0 / 255.0}


def to_input(images: np.ndarray | torch.Tensor, net: str) -> torch.Tensor:
    """uint8 images (N, 32, 32, 3) as float32 inputs (N, 3, 32, 32) of ``net`` (0-255 for vgg, 0-1 for mobilenet)."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float()
    return x.mul_(INPUT_SCALE[net]).contiguous()


def load(net: str) -> nn.Module:
    """``net`` ("vgg" or "mobilenet") with the shipped weights of benchmarks/weights/, in eval mode."""
    if net not in BUILDERS:
        raise ValueError(f"net must be one of {NETS}, got {net!r}")
    return _load_file(net, WEIGHTS_DIR / f"{net}.safetensors")


def _load_file(net: str, path: Path) -> nn.Module:
    from safetensors.torch import load_file

    model = BUILDERS[net]()
    own = model.state_dict()
    # every tensor is stored as float32; BatchNorm's num_batches_tracked goes back to the module's int64
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.eval()


# --- training ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int = 500,
    bf16: bool = False,
    channels_last: bool = False,
) -> float:
    """Top-1 accuracy (%) of ``model`` in eval mode on inputs ``x`` and labels ``y`` (float32 unless ``bf16``)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(xb)
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    model.train(was_training)
    return 100.0 * correct / len(x)


def _setup(net: str, epochs: int, steps_per_epoch: int, lr: float):
    torch.manual_seed(SEED)
    # channels_last: oneDNN's faster convolutions on CPU (1.3-1.6x here); the weights are saved contiguous
    model = BUILDERS[net]().to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on biases and BatchNorm
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, momentum=0.9, nesterov=True,
    )  # fmt: skip
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25,
        div_factor=10.0, final_div_factor=100.0,
    )  # fmt: skip
    return model, opt, sched


def _step(model, opt, sched, loss_fn, xb, yb, bf16: bool) -> float:
    xb = xb.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn(model(xb), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def time_steps(net: str, steps: int, data_dir: str | None, batch: int = 128) -> None:
    """Print the wall time per training step of ``net`` in float32 and with bf16 autocast."""
    from aimc.data import load_cifar10

    images, labels = load_cifar10("train", data_dir, batch * steps)
    x, y = to_input(images, net), torch.as_tensor(labels).long()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    for bf16 in (False, True):
        model, opt, sched = _setup(net, 1, steps + 5, 0.05)
        model.train()
        gen = torch.Generator().manual_seed(SEED)
        for i in range(3):  # warm-up
            _step(model, opt, sched, loss_fn, random_crop_flip(x[i * batch : (i + 1) * batch], gen), y[:batch], bf16)
        t0 = time.perf_counter()
        for i in range(steps):
            sl = slice(i * batch, (i + 1) * batch)
            _step(model, opt, sched, loss_fn, random_crop_flip(x[sl], gen), y[sl], bf16)
        dt = (time.perf_counter() - t0) / steps
        n_train = 50000
        print(
            f"{net} {'bf16' if bf16 else 'fp32'}: {1000 * dt:.1f} ms/step, "
            f"{dt * math.ceil(n_train / batch):.0f} s per epoch of {n_train} images",
            flush=True,
        )


def train(net: str, epochs: int, out: Path, data_dir: str | None, lr: float, bf16: bool, batch: int = 128) -> None:
    """Train ``net`` for ``epochs`` on the CIFAR-10 training set; save float32 weights to ``out`` + a JSON sidecar."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from aimc.data import load_cifar10

    tr_images, tr_labels = load_cifar10("train", data_dir)
    te_images, te_labels = load_cifar10("test", data_dir)
    x_tr, y_tr = to_input(tr_images, net), torch.as_tensor(tr_labels).long()
    x_te, y_te = to_input(te_images, net), torch.as_tensor(te_labels).long()
    steps = len(x_tr) // batch  # the last partial batch is dropped
    model, opt, sched = _setup(net, epochs, steps, lr)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{net}: {n_params} parameters, {epochs} epochs of {steps} steps, lr {lr}, bf16 {bf16}", flush=True)
    gen = torch.Generator().manual_seed(SEED)
    t_start = time.perf_counter()
    acc = float("nan")
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        t0 = time.perf_counter()
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{epochs}", mininterval=10.0, ncols=100)
        loss_sum = 0.0
        for i in bar:
            idx = perm[i * batch : (i + 1) * batch]
            loss_sum += _step(model, opt, sched, loss_fn, random_crop_flip(x_tr[idx], gen), y_tr[idx], bf16)
            if i % 20 == 19:
                bar.set_postfix(loss=f"{loss_sum / (i + 1):.3f}")
        bar.close()
        t_train = time.perf_counter() - t0
        acc = evaluate(model, x_te, y_te, bf16=bf16, channels_last=True)
        print(
            f"epoch {epoch + 1}/{epochs}: train loss {loss_sum / steps:.4f}, test accuracy {acc:.2f}%, "
            f"{t_train:.0f} s training, {time.perf_counter() - t_start:.0f} s total",
            flush=True,
        )
    wall = time.perf_counter() - t_start
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"net": net, "input": "raw 0-255" if net == "vgg" else "0-1"})
    # the accuracy recorded is that of the saved float32 weights, read back, with float32 NCHW inference
    acc_fp32 = evaluate(_load_file(net, out), x_te, y_te)
    print(f"final test accuracy (saved weights, float32 inference): {acc_fp32:.2f}%", flush=True)
    sidecar = {
        "net": net,
        "seed": SEED,
        "epochs": epochs,
        "batch": batch,
        "max_lr": lr,
        "bf16_autocast": bf16,
        "parameters": n_params,
        "test_accuracy": round(acc_fp32, 2),
        "test_images": len(x_te),
        "input": "raw pixel floats 0-255, NCHW" if net == "vgg" else "pixel floats 0-1, NCHW",
        "torch": torch.__version__,
        "train_wall_s": round(wall, 1),
    }
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {out.with_suffix('.json')}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", choices=NETS, required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="weights file (default benchmarks/weights/<net>.…)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--fp32", action="store_true", help="train in float32 (default: bf16 autocast)")
    parser.add_argument("--time-steps", type=int, default=0, help="only time this many steps (fp32 and bf16)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.time_steps:
        time_steps(args.net, args.time_steps, args.data_dir)
        return
    out = args.out or WEIGHTS_DIR / f"{args.net}.safetensors"
    lr = args.lr if args.lr is not None else {"vgg": 0.1, "mobilenet": 0.2}[args.net]
    train(args.net, args.epochs, out, args.data_dir, lr, bf16=not args.fp32)


if __name__ == "__main__":
    main()
