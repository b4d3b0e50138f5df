"""Training: floating-point and hardware-aware (noise-injection) training of the reference networks, and
hardware-aware fine-tuning of any PyTorch model (:func:`hwa_finetune`)."""

from aimc.train.finetune import hwa_finetune

__all__ = ["hwa_finetune"]
