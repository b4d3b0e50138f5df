"""Character-level Penn Treebank and the BPC windows."""

from __future__ import annotations

import math

import pytest
import torch

from aimc.data.ptb import EOL, PAPER_TEST_CHARS, VOCAB, decode, ptb_chars, streams, to_characters
from aimc.errors import UnknownNameError, ValidationError
from aimc.tasks.language import bpc_from_logits, windows


def test_character_test_set_is_the_papers():
    test = ptb_chars("test")
    assert test.numel() == PAPER_TEST_CHARS  # the chip paper: 442,423 characters
    assert len(VOCAB) == 50
    assert int(test.max()) < 50 and int(test.min()) >= 0
    assert decode(test[:12]) == "no_it_was_n'"


def test_to_characters_format():
    assert to_characters(" a b \n\n c\n") == "a_b" + EOL + "c" + EOL


def test_user_folder_takes_precedence(tmp_path):
    folder = tmp_path / "ptb"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"ptb.{split}.txt").write_text(" the cat \n sat\n")
    assert ptb_chars("test", tmp_path).numel() == len("the_cat\nsat\n")
    with pytest.raises(UnknownNameError, match="split"):
        ptb_chars("dev")
    (folder / "ptb.valid.txt").unlink()
    with pytest.raises(ValidationError, match=r"ptb\.valid\.txt"):
        ptb_chars("valid", tmp_path)


def test_windows_score_every_character_once_with_context():
    tokens = torch.arange(1, 1002) % 50
    inputs, targets = windows(tokens, n_streams=10, warmup=7)
    length = 1000 // 10
    assert inputs.shape == (10, 7 + length) and targets.shape == (10, length)
    assert torch.equal(targets.reshape(-1), tokens[1 : 1 + 10 * length])
    # each input step predicts the next character of the stream
    assert torch.equal(inputs[3, 7:], tokens[3 * length : 4 * length])
    assert torch.equal(inputs[3, :7], tokens[3 * length - 7 : 3 * length])
    assert (inputs[0, :7] == VOCAB.index(EOL)).all()
    with pytest.raises(ValidationError):
        windows(tokens.float())
    with pytest.raises(ValidationError):
        streams(tokens, 1000)


def test_bpc_of_uniform_prediction_is_log2_vocab():
    targets = torch.randint(0, 50, (4, 30), generator=torch.Generator().manual_seed(0))
    logits = torch.zeros(4, 35, 50)
    assert bpc_from_logits(logits, targets) == pytest.approx(math.log2(50), rel=1e-6)
