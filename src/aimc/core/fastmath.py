"""Choice of the dtype of the auxiliary products of the core's fast path (not physics: simulation numerics).

The fast MVM path (:mod:`aimc.core.analog`) needs three products per batch: pos - neg (float32, it is the result),
pos + neg and the fresh-noise variance. An error in pos + neg shifts both counters by the same charge and cancels in
pos - neg to first order; the noise variance needs only a few significant bits. Both can therefore be computed in
bfloat16 (8-bit mantissa, float32 accumulation), which is several times faster than float32 where the CPU
multiplies bfloat16 natively and much slower where it is emulated; or pos + neg as one int8 plane per core
(:func:`int8_plane`, 7 bits of the core's largest entry) against the PWM magnitudes, exactly int8, with the variance
in bfloat16.

The pos - neg product itself can run on the CPU's int8 units, several times faster than float32 on some CPUs:
the PWM input levels are integers in [-127, 127], exactly int8, and the matrix is written per core as
step·(256·hi + lo) with int8 planes hi and lo (:func:`int8_planes`), i.e. rounded to 1/32,639 of the core's largest
entry (15 bits; the conductances it encodes carry percent-level programming and read noise). The int32 sums are
exact, so y = step·(256·Y_hi + Y_lo) differs from the float32 product only by that rounding of the matrix.

Where PyTorch has oneDNN's quantised linear operator (x86 CPU builds), both planes of a core, and of all cores that
share an input, are one prepacked int8 matmul (AMX where the CPU has it) that writes the two scaled parts
fl(256·step·Y_hi) and fl(step·Y_lo) as float32 (:func:`pack_scaled_planes`, :func:`scaled_plane_products`): the
int32 sums are exact and each is rounded once, which is what multiplying the int32 results by the scales gives.

Which of these runs is chosen by measurement on the machine at hand (:mod:`aimc.kernels`, operations
``pos_neg_product`` and ``aux_product``, registered at the end of this module): the same oneDNN operator that is the
fastest path on one CPU with int8 instructions is a thousand times slower on another that has them too.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from aimc import kernels

#: The dtype of each ``aux_product`` kernel's inputs and noise-variance product (``int8`` multiplies pos + neg as an
#: int8 plane and the variance in bfloat16).
_AUX_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.bfloat16}


#: Largest |256·hi + lo| of :func:`int8_planes`: hi = floor((v + 128) / 256) stays within int8 for |v| <= 32,639.
PLANE_LEVELS = 127 * 256 + 127


def int8_planes(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write each core's matrix ``(..., K, m)`` as step·(256·hi + lo) with int8 ``hi``, ``lo``.

    Returns:
        ``hi``, ``lo`` ``(..., K, m)`` int8 and ``step`` ``(..., 1, 1)`` float32 (the core's largest |entry| / 32,639).
    """
    step = (matrix.abs().amax(dim=(-2, -1), keepdim=True) / PLANE_LEVELS).clamp_min(1e-30)
    v = torch.round(matrix / step).clamp_(-PLANE_LEVELS, PLANE_LEVELS).to(torch.int32)
    hi = (v + 128) >> 8  # floor((v + 128) / 256): an arithmetic shift, cheaper than a floor division
    lo = v - 256 * hi  # in [-128, 127]
    return hi.to(torch.int8).contiguous(), lo.to(torch.int8).contiguous(), step.float()


#: Largest |level| of the one-plane int8 matrix of the pos + neg product (kernel ``aux_product="int8"``).
AUX_PLANE_LEVELS = 127


def int8_plane(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write each core's matrix ``(..., K, m)`` as step·q with one int8 plane ``q`` (7 bits of the core's largest
    |entry|), for the pos + neg product, whose error cancels in pos - neg to first order.

    Returns:
        ``q`` ``(..., K, m)`` int8 (contiguous) and ``step`` ``(..., 1, 1)`` float32 (the largest |entry| / 127).
    """
    step = (matrix.abs().amax(dim=(-2, -1), keepdim=True) / AUX_PLANE_LEVELS).clamp_min(1e-30)
    q = torch.round(matrix / step).clamp_(-AUX_PLANE_LEVELS, AUX_PLANE_LEVELS).to(torch.int8)
    return q.contiguous(), step.float()


def _groups(lead: tuple[int, ...], shared_dims: int) -> tuple[int, int]:
    """(groups, shared): the cores ``lead`` as groups of ``shared`` cores (those of the last ``shared_dims`` dims)."""
    shared = math.prod(lead[len(lead) - shared_dims :]) if shared_dims else 1
    return math.prod(lead) // shared, shared


class IntPlanes(NamedTuple):
    """int8 planes packed for ``torch._int_mm``, one matrix per group of cores that share an input.

    weights: per group, the ``(K, S·2m)`` int8 matrix [hi_1 lo_1 ... hi_S lo_S] of its S cores (column blocks).
    scales: ``(C, 2)`` float32: 256·step and step of each of the C = groups·S cores (core c = g·S + s).
    groups, shared, shared_dims: as in :class:`ScaledPlanes`.
    """

    weights: tuple[torch.Tensor, ...]
    scales: torch.Tensor
    groups: int
    shared: int
    shared_dims: int


def pack_int_planes(hi: torch.Tensor, lo: torch.Tensor, step: torch.Tensor, shared_dims: int) -> IntPlanes:
    """Pack the planes of :func:`int8_planes` (``(..., K, m)`` int8, ``step`` ``(..., 1, 1)``) for
    :func:`int_plane_products`, the cores of the last ``shared_dims`` leading dims in one matmul per group."""
    k, m = hi.shape[-2:]
    groups, shared = _groups(tuple(hi.shape[:-2]), shared_dims)
    hi_f, lo_f = hi.reshape(groups, shared, k, m), lo.reshape(groups, shared, k, m)
    # (shared, 2, K, m) -> (K, shared, 2, m) -> (K, shared·2m): core s's hi then lo columns, core after core
    both = torch.stack([hi_f, lo_f], dim=2)
    weights = tuple(both[g].permute(2, 0, 1, 3).reshape(k, -1).contiguous() for g in range(groups))
    step_f = step.reshape(-1).float()
    scales = torch.stack([step_f * 256.0, step_f], dim=1).contiguous()
    return IntPlanes(weights, scales, groups, shared, shared_dims)


def int_plane_products(
    x: torch.Tensor,
    planes: IntPlanes,
    lead: tuple[int, ...],
    buffer: Callable[[int, tuple[int, int]], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, ...]:
    """The exact int32 products Y_hi = x @ hi and Y_lo = x @ lo of every core, one ``torch._int_mm`` per group.

    Args:
        x: ``(..., B, K)`` int8, leading dims broadcasting to the cores' ``lead``; constant over the shared dims.
        buffer: ``buffer(g, (B, shared·2m))`` gives a contiguous int32 tensor to write group g's product into (a
            work tensor kept between calls: a fresh tensor of tens of MB costs more in page faults than the
            product itself); None: new tensors.

    Returns:
        Per group, ``(1, B, shared, 2m)`` int32: ``[..., :m]`` is Y_hi, ``[..., m:]`` Y_lo; y = fl(256·step·Y_hi) +
        fl(step·Y_lo) with the scales of ``planes`` gives what :func:`scaled_plane_products` gives.
    """
    rows, k = x.shape[-2:]
    xe = x.expand(*lead, rows, k)
    group_lead = lead[: len(lead) - planes.shared_dims]
    first_shared = (0,) * planes.shared_dims
    out = []
    for g, idx in enumerate(itertools.product(*map(range, group_lead))):
        w = planes.weights[g]
        dest = None if buffer is None else buffer(g, (rows, w.shape[1]))
        out.append(torch._int_mm(xe[idx + first_shared], w, out=dest).view(1, rows, planes.shared, -1))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _onednn_int8_available() -> bool:
    """Whether PyTorch has oneDNN's prepacked int8 linear operator (CPU builds with oneDNN)."""
    try:
        ops = torch.ops.onednn
        return bool(torch.backends.mkldnn.is_available()) and all(
            hasattr(ops, name) for name in ("qlinear_prepack", "qlinear_pointwise")
        )
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False


class ScaledPlanes(NamedTuple):
    """int8 planes prepacked for oneDNN, one matmul per group of cores that share an input.

    weights: per group, the prepacked ``(S·2m, K)`` int8 matrix [hi_1^T; lo_1^T; ...; hi_S^T; lo_S^T] of its S cores.
    scales: per group, ``(S·2m,)`` float32 output scales: 256·step_s for the hi rows, step_s for the lo rows.
    groups, shared: the cores ``(..., K, m)`` flattened as (groups, shared): the cores of the last ``shared_dims``
        leading dims (``shared`` of them per group) take the same input.
    zero_points: ``(S·2m,)`` int64 zeros (the weights are symmetric).
    """

    weights: tuple[torch.Tensor, ...]
    scales: tuple[torch.Tensor, ...]
    groups: int
    shared: int
    shared_dims: int
    zero_points: torch.Tensor


def pack_scaled_planes(
    hi: torch.Tensor, lo: torch.Tensor, step: torch.Tensor, shared_dims: int, rows_hint: int
) -> ScaledPlanes | None:
    """Prepack the planes of :func:`int8_planes` (``(..., K, m)`` int8, ``step`` ``(..., 1, 1)``) for
    :func:`scaled_plane_products`, the cores of the last ``shared_dims`` leading dims in one matmul per group.

    Returns None where oneDNN's int8 linear operator is missing or refuses the weights (the caller then multiplies
    with :func:`int_plane_products`).
    """
    if hi.device.type != "cpu" or not _onednn_int8_available():
        return None
    k, m = hi.shape[-2:]
    groups, shared = _groups(tuple(hi.shape[:-2]), shared_dims)
    hi_f, lo_f = hi.reshape(groups, shared, k, m), lo.reshape(groups, shared, k, m)
    step_f = step.reshape(groups, shared).float()
    weights, scales = [], []
    try:
        for g in range(groups):
            w = torch.cat([torch.cat([hi_f[g, s].T, lo_f[g, s].T]) for s in range(shared)]).contiguous()
            sc = torch.stack([step_f[g] * 256.0, step_f[g]], dim=1).flatten().repeat_interleave(m)
            weights.append(torch.ops.onednn.qlinear_prepack(w, [max(1, rows_hint), k]))
            scales.append(sc.contiguous())
    except RuntimeError:  # pragma: no cover - an operator that refuses these weights: use _int_mm
        return None
    zeros = torch.zeros(shared * 2 * m, dtype=torch.int64)
    return ScaledPlanes(tuple(weights), tuple(scales), groups, shared, shared_dims, zeros)


def scaled_plane_products(
    x: torch.Tensor, planes: ScaledPlanes, lead: tuple[int, ...], stack: bool = True
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The two scaled parts of y = step·(256·(x @ hi) + x @ lo) for every core, from :func:`pack_scaled_planes`.

    Args:
        x: ``(..., B, K)`` int8, leading dims broadcasting to the cores' ``lead``; constant over the shared dims.
        stack: False returns each group's product as it comes, ``(1, B, shared, 2m)``, without the copy that
            stacking them takes.

    Returns:
        ``(groups, B, shared, 2m)`` float32: ``[..., :m]`` is fl(256·step·(x @ hi)), ``[..., m:]`` fl(step·(x @ lo)).
    """
    rows, k = x.shape[-2:]
    xe = x.expand(*lead, rows, k)  # a view: no copy of a broadcast input
    group_lead = lead[: len(lead) - planes.shared_dims]
    first_shared = (0,) * planes.shared_dims
    outs = []
    for g, idx in enumerate(itertools.product(*map(range, group_lead))):
        xg = xe[idx + first_shared]  # (B, K): the input of every core of group g
        outs.append(_qlinear(xg, planes.weights[g], planes.scales[g], planes.zero_points))
    if not stack:
        return tuple(o.view(1, rows, planes.shared, -1) for o in outs)
    out = outs[0].unsqueeze(0) if len(outs) == 1 else torch.stack(outs)
    return out.view(planes.groups, rows, planes.shared, -1)


def _qlinear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor) -> torch.Tensor:
    """oneDNN's int8 linear operator: ``x`` ``(B, K)`` int8 (scale 1, zero point 0) and a prepacked ``(N, K)`` int8
    ``weight`` -> ``(B, N)`` float32 fl(scales_j·sum_k x_k·w_jk), the int32 sum exact."""
    args = (x, 1.0, 0, weight, scales, zero_points, None, 1.0, 0, torch.float32, "none", [], "")
    return torch.ops.onednn.qlinear_pointwise(*args)


# --- the candidates (registered in aimc.kernels by aimc.core.analog, which times them on whole MVMs) --------------


def _on_cpu(device_type: str) -> bool:
    return device_type == "cpu"


#: Kernels of the pos - neg product, in order of preference on a tie (the exact one first).
POS_NEG_PRODUCT_CANDIDATES = (
    kernels.Candidate(
        "float32",
        "float32 matmul (PyTorch)",
        "the reference: float32 conductances, float32 accumulation",
    ),
    kernels.Candidate(
        "int-mm",
        "two int8 planes as one torch._int_mm per input group, int32 sums scaled in the converter pass",
        "the matrix rounded to 1/32,639 of each core's largest entry (15 bits); int32 sums exact",
        lambda device_type: _on_cpu(device_type) and hasattr(torch, "_int_mm"),
    ),
    kernels.Candidate(
        "onednn-int8",
        "two int8 planes as one prepacked oneDNN int8 matmul per input group (torch.ops.onednn)",
        "as int-mm: the matrix rounded to 15 bits; int32 sums exact, each part rounded once to float32",
        lambda device_type: _on_cpu(device_type) and _onednn_int8_available(),
    ),
)

#: Kernels of the pos + neg and noise-variance products.
AUX_PRODUCT_CANDIDATES = (
    kernels.Candidate("float32", "float32 matmuls", "the reference"),
    kernels.Candidate(
        "bfloat16",
        "bfloat16 matmuls, float32 accumulation",
        "matrices and inputs rounded to 8-bit mantissas (relative error <= 2^-9 per entry); the error of |x|·S "
        "cancels in pos - neg to first order",
    ),
    kernels.Candidate(
        "int8",
        "|x|·(G+ + G-) as one torch._int_mm of an int8 plane per core; x²·σ² in bfloat16",
        "pos + neg's matrix rounded to 1/254 of each core's largest entry, int32 sums exact (its error cancels in "
        "pos - neg to first order); the variance as bfloat16",
        lambda device_type: _on_cpu(device_type) and hasattr(torch, "_int_mm"),
    ),
)
