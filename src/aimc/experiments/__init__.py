"""Experiments of the chip paper, reproduced."""
