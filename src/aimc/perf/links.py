"""Transfers between chips of a network mapped on several chips (``aimc.compile(..., chips=N)``) and their cost.

What crosses a chip boundary, per inference:

- **partial sums**: a column chain whose next core sits on another chip (``Mapping.links_used()`` entries of kind
  ``"inter-chip"``) sends its INT8 partial sums (the chain's block outputs, one byte each) over the chip-to-chip link
  at every MVM of the layer;
- **layer outputs** (with ``transport="on-chip"`` only; through the host the activations leave the chip anyway): the
  INT8 outputs of a layer whose consuming layer has cores on another chip, once per other chip.

Cost (constants in :mod:`aimc.perf.constants`, modelled on a published chip-to-chip I/O): every transfer takes the
link's fixed latency plus its bytes at the link's bandwidth, and costs its bits at the link's energy per bit.
Partial sums on the longest chain cross one after another, so their transfer times add to the layer's pipeline fill
(to each step of an LSTM/GRU, whose steps do not overlap); all the layer's crossing partial sums share one link, so
their bytes at the link bandwidth bound the layer's MVM slot from below. A layer output crossing adds its transfer to
the latency of one inference, as the inter-layer transport does.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from aimc.compiler.mapping import Mapping
from aimc.perf.constants import PerfConstants
from aimc.perf.digital import ANALOG_KINDS, layer_chip
from aimc.perf.workload import LayerWork

#: What a transfer carries.
PARTIAL_SUMS, LAYER_OUTPUT = "partial sums", "layer output"


@dataclass(frozen=True)
class InterchipWork:
    """Transfers of one layer's values between chips.

    Attributes:
        layer: the layer whose partial sums or outputs cross.
        what: :data:`PARTIAL_SUMS` or :data:`LAYER_OUTPUT`.
        transfers: transfers per MVM (partial sums: crossings over all column chains) or per inference (outputs:
            other chips that need them).
        serial: transfers one after another (partial sums: crossings of the longest chain; outputs: 1).
        bytes_per_transfer: INT8 values in one transfer.
        repeats: how often per inference the transfers happen (the layer's MVMs for partial sums, 1 for outputs).
    """

    layer: str
    what: str
    transfers: int
    serial: int
    bytes_per_transfer: int
    repeats: int

    @property
    def bytes(self) -> int:
        """Bytes over chip-to-chip links per inference."""
        return self.repeats * self.transfers * self.bytes_per_transfer

    @property
    def transfers_per_inference(self) -> int:
        """Transfers per inference."""
        return self.repeats * self.transfers


@dataclass(frozen=True)
class InterchipCost:
    """Cost of one :class:`InterchipWork`.

    Attributes:
        work: the transfers.
        chain_ns: time of the serial transfers (of one MVM for partial sums; of the inference for outputs).
        occupancy_ns: link time of all transfers of one MVM (partial sums; lower bound of the layer's MVM slot).
        energy_nJ: energy per inference.
    """

    work: InterchipWork
    chain_ns: float
    occupancy_ns: float
    energy_nJ: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        return {
            **asdict(self.work),
            "bytes": self.work.bytes,
            "chain_ns": self.chain_ns,
            "occupancy_ns": self.occupancy_ns,
            "energy_uj": self.energy_nJ * 1e-3,
        }


def partial_sum_crossings(mapping: Mapping) -> dict[str, tuple[int, int]]:
    """Per layer with column chains crossing chips: (crossings over all chains, crossings of the longest chain).

    The first count is the layer's ``Mapping.links_used()`` entries of kind ``"inter-chip"``.
    """
    total = Counter(link["layer"] for link in mapping.links_used() if link["kind"] == "inter-chip")
    out = {}
    for name, count in total.items():
        layer = mapping.layers[name]
        longest = 0
        for j in range(layer.tiling.col_blocks):
            chain = [mapping.chip_of(layer.cores[i][j]) for i in range(layer.tiling.row_blocks)]
            longest = max(longest, sum(a != b for a, b in itertools.pairwise(chain)))
        out[name] = (count, longest)
    return out


def consumers(mapping: Mapping) -> dict[str, set[str]]:
    """Per analog layer, the analog layers that read its output (directly or through non-analog ops)."""
    upstream: dict[str, set[str]] = {}
    out: dict[str, set[str]] = {name: set() for name in mapping.layers}
    for op in mapping.ops:
        sources: set[str] = set()
        for name in op.inputs:
            sources |= upstream.get(name, set())
        if op.kind in ANALOG_KINDS and "layer" in op.attrs:
            layer = str(op.attrs["layer"])
            for producer in sources - {layer}:
                out.setdefault(producer, set()).add(layer)
            upstream[op.name] = {layer}
        else:
            upstream[op.name] = sources
    return out


def interchip_work(mapping: Mapping, works: list[LayerWork], transport: str) -> list[InterchipWork]:
    """Every layer's transfers between chips for one inference (module docstring); empty on one chip."""
    if mapping.chips <= 1:
        return []
    by_name = {w.name: w for w in works}
    out = []
    for name, (count, longest) in partial_sum_crossings(mapping).items():
        w = by_name[name]
        out.append(InterchipWork(name, PARTIAL_SUMS, count, longest, w.values_out, w.mvms))
    if transport == "on-chip":
        for producer, readers in consumers(mapping).items():
            if producer not in by_name:
                continue
            home = layer_chip(mapping, producer)
            chips = {mapping.chip_of(c) for reader in readers for c in mapping.layers[reader].core_list()}
            others = len(chips - {home})
            if others:
                w = by_name[producer]
                out_bytes = w.mvms * (w.gdpu_outputs or w.weights // w.input_values)
                out.append(InterchipWork(producer, LAYER_OUTPUT, others, 1, out_bytes, 1))
    return out


def interchip_cost(work: InterchipWork, constants: PerfConstants) -> InterchipCost:
    """Latency and energy of ``work`` (module docstring)."""
    bytes_per_ns = constants.interchip_GBps  # GB/s = bytes/ns
    one = constants.interchip_latency_ns + work.bytes_per_transfer / bytes_per_ns
    if work.what == PARTIAL_SUMS:
        chain = work.serial * one
        occupancy = work.transfers * work.bytes_per_transfer / bytes_per_ns
    else:
        chain = constants.interchip_latency_ns + work.transfers * work.bytes_per_transfer / bytes_per_ns
        occupancy = 0.0
    energy = work.bytes * 8.0 * constants.interchip_energy_pJ_per_bit * 1e-3
    return InterchipCost(work, chain, occupancy, energy)
