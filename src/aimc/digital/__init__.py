"""Digital arithmetic of the local and global digital processing units (LDPU/GDPU), in their number formats."""

from aimc.digital.ldpu import ldpu_postprocess
from aimc.digital.numerics import fp16, fp16_fma, to_int8

__all__ = ["fp16", "fp16_fma", "ldpu_postprocess", "to_int8"]
