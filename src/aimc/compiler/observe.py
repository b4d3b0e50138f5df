"""Streaming histograms of calibration values and the choice of a conversion's full scale from them.

Each of the chip's conversions maps a signed value onto a symmetric grid of ``levels`` steps on either side of zero
up to a full scale ``c`` and saturates beyond it: the PWM input (127 levels, docs/physics.md §5), the INT8 outputs and
partial sums (127) and the ADC counts of a bit line (4,095, §6). Given the values such a conversion sees, the methods
choose ``c``:

- ``"max"``: the largest |value| seen. Nothing saturates, but a single outlier stretches the grid over values that
  almost never occur.
- ``"percentile"``: the given percentile of |value| (zeros included).
- ``"mse"``: the ``c`` that minimises the expected squared error of the conversion, rounding plus saturation, over
  the histogram (the search of post-training quantisation toolkits, e.g. PyTorch's ``HistogramObserver``; Banner
  et al., "Post training 4-bit quantization of convolutional networks for rapid deployment", NeurIPS 2019).
- ``"mae"``: the same search for the expected absolute error (the L_p search of Nahshan et al., "Loss aware
  post-training quantization", Machine Learning 2021, at p = 1). It weighs the rare large errors of saturated
  outliers less against the rounding error of every value, and so clips more than ``"mse"``: a network's decisions
  suffer more from a small error on every input than from a large one on a few.

The values stream in: :class:`AbsHistogram` keeps a fixed number of bins per quantity over ``[0, hi]`` with ``hi`` a
power of two that doubles (merging pairs of bins, exactly) when a larger value arrives, so memory is fixed and time
linear in the number of values.
"""

from __future__ import annotations

import math

import torch

from aimc._validation import check_choice, check_number

#: Calibration methods (see the module docstring).
METHODS: tuple[str, ...] = ("max", "percentile", "mse", "mae")
#: The error exponent p of the methods that minimise the expected |error|^p of the conversion.
ERROR_EXPONENTS: dict[str, float] = {"mse": 2.0, "mae": 1.0}
#: Our choice: bins per histogram. The chosen full scale is resolved to hi/BINS >= max/BINS (hi < 2 max).
BINS = 2048
#: Our choice: full scales tried by the MSE and MAE searches, log-spaced from one bin width to the largest value
#: (neighbours 3% apart).
MSE_CANDIDATES = 256
#: Our choice: default percentile of the ``"percentile"`` method.
DEFAULT_PERCENTILE = 99.99


class AbsHistogram:
    """Histograms of |value| of ``k`` quantities (e.g. the bit-line counters of each of ``k`` cores), built batch by
    batch. Exact zeros (ReLU outputs, padding) are counted apart: every symmetric grid converts them exactly."""

    def __init__(self, k: int = 1, bins: int = BINS) -> None:
        self.k, self.bins = k, bins
        self.counts = torch.zeros(k, bins, dtype=torch.float64)
        self.hi = torch.zeros(k, dtype=torch.float64)  # 0: nothing but zeros seen yet
        self.peak = torch.zeros(k, dtype=torch.float64)
        self.zeros = torch.zeros(k, dtype=torch.float64)

    @property
    def total(self) -> torch.Tensor:
        """``(k,)`` number of values seen."""
        return self.counts.sum(1) + self.zeros

    def add(self, values: torch.Tensor) -> None:
        """Count ``values``: ``(k, ...)`` (any shape for ``k == 1``)."""
        a = values.detach().abs().reshape(self.k, -1).float()
        if a.shape[1] == 0:
            return
        peak = a.amax(1).double()
        self.peak = torch.maximum(self.peak, peak)
        for i in torch.nonzero(peak > self.hi).flatten().tolist():
            self._grow(i, float(peak[i]))
        zeros = (a == 0).sum(1).double()
        self.zeros += zeros
        for i in range(self.k):  # histc: one pass per row; the zeros fall in bin 0 and are taken out again
            if float(self.hi[i]) > 0:
                counts = torch.histc(a[i], bins=self.bins, min=0.0, max=float(self.hi[i])).double()
                counts[0] -= zeros[i]
                self.counts[i] += counts

    def _grow(self, i: int, peak: float) -> None:
        """Widen row ``i`` to ``hi`` = the power of two at or above ``peak``, merging its bins."""
        hi = 2.0 ** math.ceil(math.log2(peak))
        old = float(self.hi[i])
        if old > 0:
            factor = round(hi / old)  # a power of two: the new edges are old edges
            if factor >= self.bins:
                self.counts[i, 0] = self.counts[i].sum()
                self.counts[i, 1:] = 0
            else:
                merged = self.counts[i].reshape(self.bins // factor, factor).sum(1)
                self.counts[i] = 0
                self.counts[i, : merged.numel()] = merged
        self.hi[i] = hi

    def full_scale(self, method: str, levels: int, percentile: float = DEFAULT_PERCENTILE) -> torch.Tensor:
        """``(k,)`` full scale of a symmetric ``levels``-step conversion of these values by ``method``
        (:data:`METHODS`); 0 for a quantity that was only ever zero."""
        check_choice(method, "calibration method", METHODS)
        check_number(percentile, "percentile", low=0.0, high=100.0, low_inclusive=False)
        out = torch.zeros(self.k, dtype=torch.float64)
        for i in range(self.k):
            peak = float(self.peak[i])
            if peak == 0.0 or method == "max":
                out[i] = peak
            elif method == "percentile":
                out[i] = min(self._percentile(i, percentile), peak)
            else:
                out[i] = self._lp(i, levels, ERROR_EXPONENTS[method])
        return out

    def _centres(self, i: int) -> torch.Tensor:
        width = float(self.hi[i]) / self.bins
        centres = (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width
        return centres.clamp_(max=float(self.peak[i]))

    def _percentile(self, i: int, q: float) -> float:
        target = q / 100.0 * float(self.total[i]) - float(self.zeros[i])
        if target <= 0:
            return 0.0
        cum = torch.cumsum(self.counts[i], 0)
        b = int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64)).clamp(max=self.bins - 1))
        below = float(cum[b - 1]) if b > 0 else 0.0
        inside = float(self.counts[i, b])
        frac = (target - below) / inside if inside > 0 else 1.0
        return (b + frac) * float(self.hi[i]) / self.bins

    def _lp(self, i: int, levels: int, p: float) -> float:
        """The candidate full scale with the least expected |error|^p of the conversion: a value v <= c is rounded to
        a grid of step s = c/levels (error |v|^p below half a step, where it goes to zero; above, the uniform
        rounding error's mean (s/2)^p/(p+1)), a larger one saturates at c (error (v - c)^p)."""
        v = self._centres(i)  # (B,)
        n = self.counts[i]
        peak = float(self.peak[i])
        lowest = min(float(self.hi[i]) / self.bins, peak)
        c = torch.logspace(math.log10(lowest), math.log10(peak), MSE_CANDIDATES, dtype=torch.float64)
        half_step = (c / levels / 2).unsqueeze(1)  # (C, 1)
        inside = v.unsqueeze(0) <= c.unsqueeze(1)  # (C, B)
        rounding = torch.where(v.unsqueeze(0) < half_step, v.unsqueeze(0) ** p, half_step**p / (p + 1))
        saturation = (v.unsqueeze(0) - c.unsqueeze(1)).abs() ** p
        err = (torch.where(inside, rounding, saturation) * n).sum(1)
        return float(c[int(torch.argmin(err))])
