"""Experiments of the chip paper: MVM error, accuracy / bits per character over time, the full reproduction."""

from aimc.experiments import evaluate, mvm_error, reproduce

__all__ = ["evaluate", "mvm_error", "reproduce"]
