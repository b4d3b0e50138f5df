"""Rounding a float32 tensor to FP16 values in place (simulation numerics, not physics).

Every result of a digital op is rounded to the digital units' FP16 (:mod:`aimc.digital.generic`). PyTorch does that
as two conversions, float32 -> float16 -> float32, each a pass over memory into a new tensor (measured for 4 M
values on a 2-core AMD EPYC: 16.3 ms, against 7.7 ms for the compiled pass below, both while other work shared the
cores). :func:`round_fp16_` rounds in place, in one compiled pass per row on PyTorch's threads,
with the same round-to-nearest-even as the conversion (the fused MVM kernel's rounding,
:mod:`aimc.core.fused`), so its values equal PyTorch's bit for bit. Which of the two runs is chosen by measurement
(:mod:`aimc.kernels`, operation ``fp16_round``).
"""

from __future__ import annotations

import torch

from aimc import kernels
from aimc.core import fused
from aimc.core.rowpar import run_rows

try:
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

#: Values per row of the compiled pass (a flat tensor is cut into rows of this length and a remainder).
ROW = 4096
#: Values of the tensor the candidates are timed on (4 M: a GELU output of 4,096 tokens x 1,024 features).
BENCH_NUMEL, PROBE_NUMEL = 2**22, 2**14


def available() -> bool:
    """Whether the compiled pass can run here (numba importable)."""
    return numba is not None and fused.available()


if numba is not None and fused.available():
    from aimc.core.fused import _round_f16

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _rows(values, r0, r1):  # pragma: no cover - compiled
        for r in range(r0, r1):
            row = values[r]
            for j in range(row.shape[0]):
                row[j] = _round_f16(row[j])

    @numba.njit(nogil=True, parallel=True, cache=True, error_model="numpy")
    def _rows_par(values, rows, chunks):  # pragma: no cover - compiled
        for c in numba.prange(chunks):
            _rows(values, rows * c // chunks, rows * (c + 1) // chunks)


def _can_compile(x: torch.Tensor) -> bool:
    return available() and x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous()


def round_fp16_(x: torch.Tensor, kernel: str = "numba") -> torch.Tensor:
    """Round ``x`` (any shape) to the nearest FP16 values (ties to even; overflow to ±inf), in place.

    Args:
        x: a float tensor; the compiled pass takes a contiguous float32 CPU tensor, anything else goes through
            PyTorch's conversions (the same values).
        kernel: ``"numba"`` (the compiled pass where it can run) or ``"torch"``.

    Returns:
        ``x``.
    """
    if kernel == "numba" and _can_compile(x):
        flat = x.view(-1)
        whole = (flat.numel() // ROW) * ROW
        if whole:
            rows = flat[:whole].view(-1, ROW).numpy()
            run_rows(_rows, _rows_par, (rows,), rows.shape[0], whole)
        if whole < flat.numel():
            tail = flat[whole:].view(1, -1).numpy()
            _rows(tail, 0, 1)
        return x
    return x.copy_(x.to(torch.float16))


def _workloads(after: object, names: tuple[str, ...]) -> dict[str, kernels.Workload]:
    """Each candidate rounds a 4 M-value tensor (a probe of 16 K first); the compiled pass is compiled first."""
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(BENCH_NUMEL, generator=gen) * 100.0
    small = big[:PROBE_NUMEL].clone()
    loads = {}
    for name in names:
        round_fp16_(small.clone(), name)  # compiles or loads the compiled pass
        loads[name] = kernels.Workload(lambda n=name: round_fp16_(small, n), lambda n=name: round_fp16_(big, n))
    return loads


kernels.register(
    kernels.Operation(
        name="fp16_round",
        summary="rounding a digital op's float32 result to FP16 values",
        candidates=kernels.compiled_or_torch(
            "one compiled in-place pass per row (aimc.digital.fp16round)",
            "PyTorch's float32 -> float16 -> float32 conversions (any device)",
            lambda device_type: device_type == "cpu" and available(),
        ),
        workloads=_workloads,
    )
)

__all__ = ["available", "round_fp16_"]
