"""Character-level Penn Treebank: bits per character (BPC) of the char-LSTM (the chip paper's Fig. 4c kind) and of
the char-transformer (not in the chip paper), in software and on the simulated chip.

The test stream is read as ``n_streams`` parallel windows so that the chip runs a batch: window s predicts
characters ``s·L+1 … (s+1)·L`` of the stream (L = (N − 1) // n_streams) and first reads the ``warmup`` characters
before them without scoring, so every scored character has context, and every character is scored once. Window 0
has no earlier text; its warm-up is end-of-line symbols (a sentence boundary). Software and chip use the same
windows, so their difference is the chip's alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aimc.data.ptb import EOL, VOCAB, ptb_chars
from aimc.errors import ValidationError
from aimc.models import example_input, get_model
from aimc.tasks.base import Task, TaskData

#: Our choice: characters the char-LSTM reads before each window's scored part (≈ a sentence and a half of context).
WARMUP = 100
#: Our choice: parallel windows of the char-LSTM's test text (the chip simulation's batch).
STREAMS = 256
#: Our choice: the char-LSTM's calibration windows, each of this many validation characters (20,000 characters in
#: 64 windows by default).
LSTM_CALIBRATION_WINDOW = 312
#: Our choice: characters each char-transformer window reads before its scored part (half its 128-character
#: context; the other half is scored, so every scored character has at least this much context).
TRANSFORMER_WARMUP = 64


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


class _CharacterTask(Task):
    """Bits per character of a character-level PTB network (lower is better)."""

    metric = "bpc"
    metric_label = "bits per character"
    display_scale = 1.0
    higher_is_better = False

    def architecture(self) -> torch.nn.Module:
        return get_model(self.name)

    def example_input(self) -> torch.Tensor:
        return example_input(self.name, batch=2)  # type: ignore[return-value]

    def scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """BPC of the logits of every window on its scored characters, and their number."""
        return {self.metric: bpc_from_logits(outputs, targets), "characters": int(targets.numel())}


class CharLSTMPtb(_CharacterTask):
    """The char-LSTM on PTB (``"char-lstm"``): all :data:`STREAMS` windows of the test text in one run, with
    :data:`WARMUP` characters of context each."""

    name = "char-lstm"
    default_weights = "char_lstm_hwa"
    batch_size = None
    calibration_inputs = 64

    def load_data(
        self, samples: int | None, data_dir: str | None, *, calibration: int | None = None, streams: int = STREAMS
    ) -> TaskData:
        """``samples`` characters of the PTB test text (all when None) read as ``streams`` windows (fewer for a short
        text: at least 2 characters each), and ``calibration`` validation windows (default 64)."""
        test = ptb_chars("test", data_dir)
        if samples is not None:
            test = test[: samples + 1]
        x, y = windows(test, min(streams, max(1, (test.numel() - 1) // 2)))
        n_cal = calibration or self.calibration_inputs
        cal, _ = windows(ptb_chars("valid", data_dir)[: n_cal * LSTM_CALIBRATION_WINDOW + 1], n_cal)
        return TaskData(self.name, x, y, cal)

    def run_seed(self, read_seed: int, start: int) -> int:
        """The read seed itself: the windows are read in one run."""
        return read_seed


class CharTransformerPtb(_CharacterTask):
    """The char-transformer on PTB (``"char-transformer"``; not in the chip paper): windows of its 128-character
    context, the first :data:`TRANSFORMER_WARMUP` characters read and the rest scored, 64 windows per run."""

    name = "char-transformer"
    default_weights = "char_transformer_hwa"
    batch_size = 64
    calibration_inputs = 128

    def load_data(self, samples: int | None, data_dir: str | None, *, calibration: int | None = None) -> TaskData:
        """``samples`` characters of the PTB test text (all when None) in windows of the context, and
        ``calibration`` validation windows (default 128)."""
        test = ptb_chars("test", data_dir)
        if samples is not None:
            test = test[: samples + 1]
        scored = TRANSFORMER_WARMUP
        n_windows = max(1, (test.numel() - 1) // scored)
        test = test[: n_windows * scored + 1]  # whole windows: each scores exactly ``scored`` characters
        x, y = windows(test, n_windows, TRANSFORMER_WARMUP)
        n_cal = calibration or self.calibration_inputs
        cal, _ = windows(ptb_chars("valid", data_dir)[: n_cal * scored + 1], n_cal, TRANSFORMER_WARMUP)
        return TaskData(self.name, x, y, cal)


__all__ = [
    "LSTM_CALIBRATION_WINDOW",
    "STREAMS",
    "TRANSFORMER_WARMUP",
    "WARMUP",
    "CharLSTMPtb",
    "CharTransformerPtb",
    "bpc_from_logits",
    "windows",
]
