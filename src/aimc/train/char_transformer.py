"""Training the character-level PTB transformer (:class:`aimc.models.transformer.CharTransformer`) and measuring its
bits per character (BPC) on the char-LSTM's data, split and vocabulary (:mod:`aimc.data.ptb`).

Recipe (our choice for a short CPU schedule; the optimiser settings are GPT-2-style): AdamW (betas 0.9/0.95, weight
decay 0.1 on the matrices only), a linear warm-up over the first :data:`WARMUP_STEPS` steps then cosine decay to 0,
gradient-norm clip 1, dropout 0.1. Each step reads ``batch_size`` windows of ``context + 1`` characters at random
offsets of the training stream (a seeded generator) and predicts every character of each window from the ones before.
On CPUs whose bfloat16 path measures faster (``train_precision`` kernel) the training passes run under bfloat16
autocast; evaluation runs in float32.

Every ``checkpoint_every`` steps ``last.safetensors`` (weights, optimiser and generator state) and a line of
``log.jsonl`` are written; ``resume=True`` continues from the last checkpoint with the same sequence of batches.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aimc._progress import progress as _progress
from aimc._provenance import provenance
from aimc.data.ptb import VOCAB, ptb_chars
from aimc.models.transformer import CharTransformer
from aimc.train.checkpoint import load_checkpoint, save_checkpoint
from aimc.train.cifar import _autocast

#: Our choices for the CPU schedule: peak learning rate, warm-up steps, batch of windows, weight decay, gradient clip.
PEAK_LR = 1e-3
WARMUP_STEPS = 200
BATCH = 32
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
#: Training steps of the default schedule (the shipped weights: 4,600, see src/aimc/weights/README.md).
STEPS = 6000
#: Steps between checkpoints and validation measurements.
CHECKPOINT_EVERY = 500
#: Characters of validation text measured at each checkpoint (the full split is measured at the end).
VALID_CHARS = 100_000

LN2 = math.log(2.0)


def windows_bpc(
    predict: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, context: int, batch: int = 64
) -> float:
    """Bits per character of a next-character model on a token stream ``tokens`` (N,).

    The stream is read in windows of ``context`` characters that overlap by half: each character after the first is
    predicted exactly once, with at least ``context / 2`` characters before it (except in the first window).
    ``predict`` maps tokens (B, context) to logits (B, context, vocab).
    """
    half = context // 2
    starts = list(range(0, max(1, len(tokens) - context), half))
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(starts), batch):
            chunk = starts[i : i + batch]
            x = torch.stack([tokens[s : s + context] for s in chunk])
            y = torch.stack([tokens[s + 1 : s + context + 1] for s in chunk])
            logits = predict(x).float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
            loss = loss.view(len(chunk), context)
            for row, s in zip(loss, chunk, strict=True):
                first = 0 if s == 0 else context - half
                nll += float(row[first:].sum())
                count += context - first
    return nll / count / LN2


def bits_per_character(model: CharTransformer, tokens: torch.Tensor) -> float:
    """BPC of ``model`` (float32, eval mode) on ``tokens`` (N,) (:func:`windows_bpc`)."""
    model.eval()
    return windows_bpc(model, tokens, model.context)


def train_char_transformer(
    out_dir: str,
    *,
    steps: int = STEPS,
    batch_size: int = BATCH,
    peak_lr: float = PEAK_LR,
    seed: int = 0,
    data_dir: str | None = None,
    resume: bool = False,
    init: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the char-transformer on PTB; returns the final record. Files go to ``out_dir``; the weights to
    ``char_transformer_float.safetensors``.

    ``init`` (a weights file) starts from trained weights with a fresh optimiser and a new warm-up + cosine schedule
    of ``steps`` steps (a warm restart, to train a finished model longer); ``resume`` continues a run in ``out_dir``
    from its last checkpoint."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = ptb_chars("train", data_dir)
    valid = ptb_chars("valid", data_dir)
    model = CharTransformer(seed=seed, **(model_kwargs or {}))
    if init is not None:
        from aimc.weights.io import load_weights_file

        load_weights_file(init, model)
    model = model.to(device)
    context = model.context
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and n != "position"]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and n != "position")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
        lr=peak_lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(seed)
    start = 0
    ckpt = out / "last.safetensors"
    if resume and ckpt.is_file():
        meta = load_checkpoint(ckpt, model, opt, gen)
        start = int(meta["step"])
        log(f"resumed from {ckpt} after step {start}")
    settings = {
        "steps": steps,
        "batch_size": batch_size,
        "context": context,
        "peak_lr": peak_lr,
        "seed": seed,
        "init": None if init is None else Path(init).name,
        "model": model_kwargs or {},
        "warmup_steps": WARMUP_STEPS,
        "weight_decay": WEIGHT_DECAY,
        "grad_clip": GRAD_CLIP,
    }
    record: dict[str, Any] = {}
    model.train()
    t0, loss_sum, n = time.time(), 0.0, 0
    bar = _progress(total=steps, initial=start, desc="train char-transformer", unit="steps", enabled=progress, every=50)
    for step in range(start, steps):
        if step < WARMUP_STEPS:
            lr = peak_lr * (step + 1) / WARMUP_STEPS
        else:
            lr = 0.5 * peak_lr * (1 + math.cos(math.pi * (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)))
        for group in opt.param_groups:
            group["lr"] = lr
        offsets = torch.randint(0, len(train) - context - 1, (batch_size,), generator=gen)
        idx = offsets[:, None] + torch.arange(context + 1)
        chunk = train[idx].to(device)
        opt.zero_grad(set_to_none=True)
        with _autocast(device):
            logits = model(chunk[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, len(VOCAB)).float(), chunk[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        loss_sum, n = loss_sum + float(loss.detach()), n + 1
        bar.set_postfix_str(f"bpc {loss_sum / n / LN2:.3f}", refresh=False)
        bar.update(1)
        if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == steps:
            record = {
                "step": step + 1,
                "train_bpc": loss_sum / n / LN2,
                "valid_bpc": bits_per_character(model, valid[:VALID_CHARS]),
                "seconds": round(time.time() - t0, 1),
            }
            model.train()
            log(json.dumps(record))
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            save_checkpoint(ckpt, model, opt, {**record, "settings": settings}, gen)
            t0, loss_sum, n = time.time(), 0.0, 0
    bar.close()
    model.eval()
    record["valid_bpc"] = bits_per_character(model, valid)
    record["test_bpc"] = bits_per_character(model, ptb_chars("test", data_dir))
    final = {**record, "settings": settings, "provenance": provenance()}
    log(json.dumps({"valid_bpc": record["valid_bpc"], "test_bpc": record["test_bpc"]}))
    from aimc.weights.io import save_weights

    save_weights(
        out / "char_transformer_float.safetensors",
        model.to("cpu"),
        {"aimc_model": "char-transformer", "training": json.dumps(final)},
    )
    return final


#: Our choices for hardware-aware fine-tuning of the char-transformer: steps (batches of :data:`BATCH` windows) and
#: AdamW's peak learning rate (the noise scales are :func:`aimc.train.finetune.hwa_finetune`'s unless given).
HWA_STEPS = 400
HWA_LR = 1e-4


def hwa_char_transformer(
    init: str,
    out_dir: str,
    *,
    steps: int = HWA_STEPS,
    batch_size: int = BATCH,
    lr: float = HWA_LR,
    seed: int = 0,
    data_dir: str | None = None,
    noise_scale: float | None = None,
    output_noise: float | None = None,
    model_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune trained char-transformer weights ``init`` hardware-aware (:func:`aimc.train.finetune.hwa_finetune`:
    hermes-2dev programming noise, 8-bit inputs and output noise on every Linear layer, per output channel) on
    ``steps`` batches of random training windows; resumable from ``out_dir/hwa.safetensors``. Writes
    ``char_transformer_hwa.safetensors`` and returns the final record."""
    from aimc.train import finetune
    from aimc.weights.io import load_weights_file, save_weights

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = CharTransformer(seed=seed, **(model_kwargs or {}))
    load_weights_file(init, model)
    train = ptb_chars("train", data_dir)
    context = model.context
    gen = torch.Generator().manual_seed(seed + 1)
    offsets = torch.randint(0, len(train) - context - 1, (steps, batch_size), generator=gen)
    windows = train[offsets[..., None] + torch.arange(context + 1)]  # (steps, B, context + 1)
    loader = [(w[:, :-1], w[:, 1:]) for w in windows]

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))

    extra: dict[str, Any] = {}
    if noise_scale is not None:
        extra["noise_scale"] = noise_scale
    if output_noise is not None:
        extra["output_noise"] = output_noise
    finetune.hwa_finetune(
        model,
        loader,
        lr=lr,
        loss_fn=loss_fn,
        seed=seed,
        checkpoint=out / "hwa.safetensors",
        progress=progress,
        **extra,
    )
    valid = ptb_chars("valid", data_dir)
    record = {
        "valid_bpc": bits_per_character(model, valid),
        "test_bpc": bits_per_character(model, ptb_chars("test", data_dir)),
        "settings": {
            "init": Path(init).name,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            **extra,
        },
        "provenance": provenance(),
    }
    log(json.dumps({k: record[k] for k in ("valid_bpc", "test_bpc")}))
    save_weights(
        out / "char_transformer_hwa.safetensors",
        model,
        {"aimc_model": "char-transformer", "training": json.dumps(record)},
    )
    return record
