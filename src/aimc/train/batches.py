"""Shuffled, augmented training batches for fine-tuning an image classifier (``aimc finetune --augment``).

Random 32 x 32 crops of the zero-padded image and random horizontal flips, the standard CIFAR-10 augmentation
(He et al., "Deep residual learning for image recognition", CVPR 2016, §4.2). Zero padding is black whatever the pixel
scale (raw 0-255, [0, 1]); no normalisation is assumed. All randomness comes from one ``torch.Generator``, which
:func:`aimc.train.hwa_finetune` saves in its checkpoints, so a resumed run sees the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from aimc.errors import ValidationError

#: Pixels of zero padding on each side before the random crop (He et al. 2016: 4).
CROP_PADDING = 4


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """A random ``H x W`` crop of each zero-padded image of ``x`` ``(B, C, H, W)`` and a random horizontal flip
    (probability 1/2), drawn per image from ``gen``; returns ``(B, C, H, W)``."""
    n, c, h, w = x.shape
    padded = nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class AugmentedBatches:
    """Shuffled batches of ``(x, y)`` (``x``: ``(N, C, H, W)``, ``y``: ``(N,)``), each image randomly cropped and
    flipped (:func:`random_crop_flip`), every epoch anew; the last batch may be smaller. All the randomness is drawn
    from ``.generator`` (seeded with ``seed``), which :func:`aimc.train.hwa_finetune` saves in its checkpoints."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int = 128, seed: int = 0) -> None:
        if x.dim() != 4 or len(x) != len(y) or len(x) == 0:
            raise ValidationError(
                f"AugmentedBatches needs images (N, C, H, W) and N labels, N >= 1; got {tuple(x.shape)} and "
                f"{tuple(y.shape)}"
            )
        if batch < 1:
            raise ValidationError(f"batch must be at least 1; got {batch}")
        self.x, self.y, self.batch = x, y, batch
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.x) + self.batch - 1) // self.batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.x), generator=self.generator)
        for i in range(0, len(self.x), self.batch):
            idx = order[i : i + self.batch]
            yield random_crop_flip(self.x[idx], self.generator), self.y[idx]
