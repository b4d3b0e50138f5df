"""Bits per character (BPC) of the char-LSTM in software and on the simulated chip (the chip paper's Fig. 4c kind).

The test stream is read as ``n_streams`` parallel windows so that the chip's LSTM step loop runs a batch: window s
predicts characters ``s·L+1 … (s+1)·L`` of the stream (L = (N − 1) // n_streams) and first reads the ``warmup``
characters before them without scoring, so every scored character has context, and every character is scored once.
Window 0 has no earlier text; its warm-up is end-of-line symbols (a sentence boundary). Software and chip use the
same windows, so their difference is the chip's alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aimc.data.ptb import EOL, VOCAB
from aimc.errors import ValidationError

#: Our choice: characters read before each window's scored part (≈ a sentence and a half of context).
WARMUP = 100
#: Our choice: parallel windows (the chip simulation's batch).
STREAMS = 256


def windows(tokens: torch.Tensor, n_streams: int = STREAMS, warmup: int = WARMUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (S, warmup + L) and targets (S, L) of ``n_streams`` windows over the stream ``tokens`` (N,)."""
    if tokens.ndim != 1 or tokens.dtype != torch.int64:
        raise ValidationError(f"tokens must be a 1-D int64 stream; got {tuple(tokens.shape)} {tokens.dtype}")
    length = (tokens.numel() - 1) // n_streams
    if length < 1:
        raise ValidationError(f"{tokens.numel()} characters are too few for {n_streams} windows")
    pad = torch.full((warmup,), VOCAB.index(EOL), dtype=torch.int64)
    padded = torch.cat([pad, tokens])
    starts = torch.arange(n_streams) * length  # first input position of each window in ``padded``
    idx = starts[:, None] + torch.arange(warmup + length)[None, :]
    inputs = padded[idx]
    targets = padded[idx[:, warmup:] + 1]
    return inputs, targets


def bpc_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Bits per character of logits (S, warmup + L, V) on targets (S, L) (the last L steps are scored)."""
    scored = logits[:, -targets.shape[1] :].reshape(-1, logits.shape[-1]).float()
    return float(F.cross_entropy(scored, targets.reshape(-1))) / math.log(2.0)


def software_bpc(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """BPC of the PyTorch model (float32) on the windows of :func:`windows`."""
    model.eval()
    with torch.no_grad():
        return bpc_from_logits(model(inputs), targets)
