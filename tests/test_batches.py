"""Augmented training batches: each output is a crop of the zero-padded image, flipped or not; one seed, one order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aimc.errors import ValidationError
from aimc.train.batches import CROP_PADDING, AugmentedBatches, random_crop_flip


def _crops(image: torch.Tensor) -> list[torch.Tensor]:
    """Every crop of the zero-padded image and its mirror image: (2 * (2p+1)^2) tensors (C, H, W)."""
    p, (_, h, w) = CROP_PADDING, image.shape
    padded = F.pad(image, (p, p, p, p))
    out = [padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
    return out + [c.flip(2) for c in out]


def test_every_output_is_a_crop_or_its_mirror_and_both_kinds_occur():
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255.0
    out = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    which = []
    for image, crop in zip(x, out, strict=True):
        matches = [i for i, c in enumerate(_crops(image)) if torch.equal(c, crop)]
        assert matches, "an output is no crop of its zero-padded input"
        which.append(matches[0])
    flipped = sum(i >= (2 * CROP_PADDING + 1) ** 2 for i in which)
    # 64 fair coin flips: fewer than 16 or more than 48 heads has probability < 1e-4
    assert 16 <= flipped <= 48
    assert len(set(which)) > 20  # offsets vary (81 crops x 2)


def test_batches_cover_each_image_once_per_epoch_and_repeat_with_the_seed():
    x = torch.arange(50, dtype=torch.float32).reshape(50, 1, 1, 1).expand(50, 1, 4, 4).contiguous()
    y = torch.arange(50)
    batches = AugmentedBatches(x, y, batch=16, seed=3)
    assert len(batches) == 4
    epoch1, epoch2 = list(batches), list(batches)
    assert [len(b[1]) for b in epoch1] == [16, 16, 16, 2]
    assert sorted(torch.cat([b[1] for b in epoch1]).tolist()) == list(range(50))
    assert not torch.equal(torch.cat([b[1] for b in epoch1]), torch.cat([b[1] for b in epoch2]))
    again = list(AugmentedBatches(x, y, batch=16, seed=3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch1, again, strict=True))
    for images, labels in epoch1:  # the label travels with its image: every non-zero pixel is the label's value
        for image, label in zip(images, labels, strict=True):
            assert set(image.unique().tolist()) <= {0.0, float(label)}


@pytest.mark.parametrize(
    ("x", "y", "batch"),
    [
        (torch.zeros(4, 3, 8), torch.zeros(4), 2),  # not (N, C, H, W)
        (torch.zeros(4, 3, 8, 8), torch.zeros(3), 2),  # labels do not match
        (torch.zeros(0, 3, 8, 8), torch.zeros(0), 2),  # empty
        (torch.zeros(4, 3, 8, 8), torch.zeros(4), 0),  # no batch
    ],
)
def test_bad_input_is_refused(x, y, batch):
    with pytest.raises(ValidationError):
        AugmentedBatches(x, y, batch=batch)
