"""Training the character-level PTB LSTM (docs/physics.md §11) and measuring bits per character (BPC).

Recipe, shortened from the chip paper's 200 epochs (docs/physics.md §11) to fit a 2-core CPU: Adam with a one-cycle
learning rate (warm-up to ``peak_lr`` then cosine decay to 0), gradient-norm clip 5 and dropout 0.25 on the LSTM output
as in the chip paper, truncated back-propagation through time over ``seq_len`` = 150 characters (as in the paper) on
``batch_size`` contiguous streams whose state is carried from chunk to chunk. On CPUs with native bfloat16 (AMX) the
training passes run under bfloat16 autocast; every evaluation runs in float32.

Hardware-aware fine-tuning (``hwa=True``, docs/physics.md §11): Gaussian noise of std 0.075·(W_max − W_min) on each
on-chip matrix (input, hidden and output) at every step and the weights clipped to 2 standard deviations after each step
(:mod:`aimc.train.hwa`).

Every epoch writes ``last.safetensors`` (weights, optimizer and RNG state) and a line of ``log.jsonl``;
``resume=True`` continues after the last finished epoch.
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

from aimc._progress import progress as _progress
from aimc._provenance import provenance
from aimc.data.ptb import VOCAB, ptb_chars, streams
from aimc.models import char_lstm
from aimc.models.networks import CharLSTM
from aimc.train.checkpoint import load_checkpoint, save_checkpoint
from aimc.train.cifar import _autocast, lr_at
from aimc.train.hwa import LSTM_CLIP_SIGMA, clip_matrices, range_noise
from aimc.weights.io import load_weights_file

#: The chip paper's PTB LSTM recipe (docs/physics.md §11): sequence length, gradient-norm clip and dropout.
SEQ_LEN = 150
GRAD_CLIP = 5.0
DROPOUT = 0.25
#: Our choice for the short CPU schedule: Adam's peak learning rate and the batch of parallel streams.
PEAK_LR = 3e-3
BATCH = 128
#: Streams and chunk length of the BPC evaluation (state carried across chunks; a stream starts from zero state).
EVAL_STREAMS = 32
EVAL_CHUNK = 500

LN2 = math.log(2.0)


def _forward(model: CharLSTM, tokens: torch.Tensor, state: Any, dropout: float) -> tuple[torch.Tensor, Any]:
    x = model.embedding(tokens)
    out, state = model.lstm(x, state)
    return model.fc(F.dropout(out, dropout, model.training)), state


def bits_per_character(
    model: CharLSTM, tokens: torch.Tensor, n_streams: int = EVAL_STREAMS, chunk: int = EVAL_CHUNK
) -> float:
    """Bits per character of ``model`` (float32, eval mode) on a token stream (N,).

    The stream is cut into ``n_streams`` contiguous streams read in parallel, each from a zero state, its state
    carried across chunks of ``chunk`` characters; every character after the first of a stream is predicted once.
    """
    model.eval()
    data = streams(tokens, n_streams)
    state = None
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, data.shape[1] - 1, chunk):
            x = data[:, i : i + chunk]
            y = data[:, i + 1 : i + chunk + 1]
            x = x[:, : y.shape[1]]
            logits, state = _forward(model, x, state, 0.0)
            nll += float(F.cross_entropy(logits.reshape(-1, len(VOCAB)).float(), y.reshape(-1), reduction="sum"))
            count += y.numel()
    return nll / count / LN2


def train_char_lstm(
    out_dir: str,
    *,
    epochs: int = 20,
    batch_size: int = BATCH,
    seq_len: int = SEQ_LEN,
    peak_lr: float = PEAK_LR,
    seed: int = 0,
    data_dir: str | None = None,
    resume: bool = False,
    init: str | None = None,
    hwa: bool = False,
    tag: str = "float",
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the char-LSTM on PTB; returns the final log record. Files go to ``out_dir``.

    Args:
        epochs, batch_size, seq_len, peak_lr, seed: the schedule and its randomness.
        resume: continue from ``out_dir/last.safetensors`` if it exists.
        init: start from these weights (e.g. the float model, for HWA fine-tuning).
        hwa: hardware-aware fine-tuning (the chip paper's noise and clipping, docs/physics.md §11).
        tag: name of the final weights file ``char_lstm_{tag}.safetensors``.
        progress: show the batches of each epoch on stderr (a live bar on a terminal, a line every 20 batches
            otherwise); ``log`` still receives each epoch's record.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = streams(ptb_chars("train", data_dir), batch_size)
    valid = ptb_chars("valid", data_dir)
    model = char_lstm(seed=seed).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=peak_lr)
    gen = torch.Generator().manual_seed(seed)
    start_epoch = 0
    ckpt = out / "last.safetensors"
    if resume and ckpt.is_file():
        meta = load_checkpoint(ckpt, model, opt, gen)
        start_epoch = int(meta["epoch"]) + 1
        log(f"resumed from {ckpt} after epoch {meta['epoch']}")
    elif init is not None:
        load_char_lstm_weights(init, model)
    steps_per_epoch = (train.shape[1] - 1) // seq_len
    total = epochs * steps_per_epoch
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "peak_lr": peak_lr,
        "seed": seed,
        "hwa": hwa,
        "tag": tag,
        "grad_clip": GRAD_CLIP,
        "dropout": DROPOUT,
    }
    record: dict[str, Any] = {}
    for epoch in range(start_epoch, epochs):
        model.train()
        t0 = time.time()
        state = None
        loss_sum = 0.0
        # each epoch starts the streams at a random offset, so chunk boundaries move between epochs
        offset = int(torch.randint(0, seq_len, (1,), generator=gen))
        bar = _progress(
            total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", unit="batches", enabled=progress, every=20
        )
        for b in range(steps_per_epoch):
            step = epoch * steps_per_epoch + b
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, peak_lr)
            i = offset + b * seq_len
            x = train[:, i : i + seq_len].to(device)
            y = train[:, i + 1 : i + seq_len + 1].to(device)
            if y.shape[1] < x.shape[1]:
                bar.total = b  # the streams' end: this epoch's offset leaves no full chunk
                break
            opt.zero_grad(set_to_none=True)
            with range_noise(model, gen) if hwa else nullcontext(), _autocast(device):
                logits, state = _forward(model, x, state, DROPOUT)
                loss = F.cross_entropy(logits.reshape(-1, len(VOCAB)).float(), y.reshape(-1))
                loss.backward()  # gradient at the noisy weights, applied to the clean ones
            state = tuple(s.detach().float() for s in state)
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            opt.step()
            if hwa:
                clip_matrices(model, LSTM_CLIP_SIGMA)
            loss_sum += float(loss.detach())
            bar.set_postfix_str(f"bpc {loss_sum / (b + 1) / LN2:.3f}", refresh=False)
            bar.update(1)
        bar.close()
        valid_bpc = bits_per_character(model, valid)
        record = {
            "epoch": epoch,
            "train_bpc": loss_sum / steps_per_epoch / LN2,
            "valid_bpc": valid_bpc,
            "seconds": round(time.time() - t0, 1),
        }
        log(json.dumps(record))
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        save_checkpoint(ckpt, model, opt, {**record, "settings": settings}, gen)
    record["test_bpc"] = bits_per_character(model, ptb_chars("test", data_dir))
    final = {**record, "settings": settings, "provenance": provenance()}
    log(json.dumps({"test_bpc": record["test_bpc"]}))
    from safetensors.torch import save_file

    model_cpu = model.to("cpu")
    save_file(
        {k: v.contiguous() for k, v in model_cpu.state_dict().items()},
        str(out / f"char_lstm_{tag}.safetensors"),
        metadata={"aimc_model": "char-lstm", "training": json.dumps(final)},
    )
    return final


def load_char_lstm_weights(path: str, model: torch.nn.Module) -> None:
    """Load char-LSTM weights from a training checkpoint or a final weights file (safetensors, no pickle)."""
    load_weights_file(path, model)
