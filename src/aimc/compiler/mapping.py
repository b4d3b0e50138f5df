"""The result of compiling a network: layers on cores and the program that runs them. Plain data.

A :class:`Mapping` holds every analog layer (its weight matrix in im2col layout, the LDPU's per-channel affine
registers, the input/output ranges of its INT8 and PWM conversions, its tiling and the cores each block sits on)
and the list of operations that make up one inference, in execution order. It prints (:meth:`Mapping.summary`),
serialises to JSON metadata plus a dict of tensors (safetensors) and draws itself as a core map.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from aimc.compiler.tiling import Tiling
from aimc.compiler.topology import Topology
from aimc.errors import ValidationError
from aimc.spec import ChipSpec

#: Operations a mapping may contain, with where they run on the chip of the paper.
OP_KINDS: dict[str, str] = {
    "input": "host",
    "analog": "cores + LDPUs",
    "lstm": "cores + LDPUs + GDPUs",
    "gru": "cores + LDPUs + GDPUs",
    "rnn_state": "data layout",
    "digital": "LDPU, GDPU or digital unit, by its 'unit' (aimc.digital.generic)",
    "embedding": "off-chip",
    "maxpool2d": "off-chip (or LDPU)",
    "avgpool2d": "off-chip (or LDPU)",
    "flatten": "data layout",
    "affine": "LDPU (extra pass)",
    "relu": "LDPU (extra pass)",
    "add": "LDPU (extra pass)",
    "host_linear": "off-chip",
    "cat": "data layout",
    "unsqueeze": "data layout",
    "softmax": "off-chip",
    "log_softmax": "off-chip",
    "sigmoid": "off-chip",
    "output": "host",
}


@dataclass
class Op:
    """One step of an inference: ``kind`` applied to the values named by ``inputs``; its result is ``name``."""

    name: str
    kind: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"name": self.name, "kind": self.kind, "inputs": list(self.inputs), "attrs": dict(self.attrs)}


@dataclass
class MappedLayer:
    """One weight layer on the chip.

    Attributes:
        name: the module path in the source network.
        kind: ``"conv2d"`` (also a Conv1d, ``geometry["conv1d"]``), ``"linear"``, ``"lstm"`` or ``"gru"``.
        weight: ``(N, K)`` outputs x inputs; conv in im2col order (in_channels, kh, kw), a grouped conv's
            block-diagonal (zero outside each group's block); LSTM [W_ih | W_hh] with the gate rows grouped per GDPU
            (see ``geometry["gate_order"]``); GRU likewise, its rows r, z, n_x, n_h
            (:func:`aimc.compiler.capture._rnn_layer`).
        scale, bias: ``(N,)`` LDPU affine registers (batch norm and bias folded in).
        tiling: the split into equal blocks.
        cores: ``[row_block][col_block]`` -> global core id (``chip * cores_per_chip + core``).
        geometry: conv (in_channels, out_channels, kernel, stride, padding, dilation, groups) or LSTM (input_size,
            hidden_size) facts.
        x_range: input value mapped to PWM full scale.
        psum_range: INT8 full scale of partial sums sent between the cores of a column block.
        out_range: INT8 full scale of the layer's output after the LDPU pipeline.
        load: ``(r, c)`` largest normalised bit-line load of each core on the calibration data,
            max over inputs and outputs of sum_j (|w_ij| / w_max) (|x_j| / x_range) for either counter in one-phase
            mode; ``program`` turns it into a per-core G_max limit that keeps the bit-line current below the ADC
            saturation (docs/physics.md §2.2: G_max is limited per core so that every bit-line current stays below the
            ADC limit).
        relu, add, add_at_chain_head, relu2: the fused LDPU pipeline (affine -> relu -> add -> relu2 -> INT8).
    """

    name: str
    kind: str
    weight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor
    tiling: Tiling
    geometry: dict[str, Any]
    cores: list[list[int]] = field(default_factory=list)
    x_range: float = 1.0
    psum_range: float = 1.0
    out_range: float = 1.0
    load: torch.Tensor | None = None
    relu: bool = False
    add: str | None = None
    add_at_chain_head: bool = False
    relu2: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        """(K inputs, N outputs): the layer matrix as the chip paper writes it (rows x columns, docs/physics.md §11)."""
        return int(self.weight.shape[1]), int(self.weight.shape[0])

    @property
    def groups(self) -> int:
        """The convolution's groups (1 for an ungrouped conv, a linear layer or an LSTM, and for mappings saved
        before grouped convolutions were supported)."""
        return int(self.geometry.get("groups", 1)) if self.kind == "conv2d" else 1

    @property
    def whole_columns(self) -> bool:
        """True where the layer spans several row blocks and every output column has all its weights in one of them
        (a grouped convolution split at group boundaries, :meth:`aimc.compiler.tiling.Tiling.split_groups`): each
        core's LDPUs then finish the columns it holds, with no partial sums sent along the column chain."""
        t = self.tiling
        if self.groups == 1 or t.row_blocks == 1:
            return False
        return t.block_inputs % (t.inputs // self.groups) == 0

    @property
    def chained(self) -> bool:
        """True where the layer's column blocks are chains of cores that send partial sums on (several row blocks,
        not :attr:`whole_columns`)."""
        return self.tiling.row_blocks > 1 and not self.whole_columns

    @property
    def weight_count(self) -> int:
        """Weights the layer holds: K x N, or K x N / groups for a grouped convolution, whose block-diagonal matrix
        is zero outside its groups' blocks."""
        k, n = self.shape
        return k * n // self.groups

    @property
    def utilization(self) -> float:
        """Fraction of the cells of the layer's cores that hold one of its weights (:attr:`weight_count`). For an
        ungrouped layer it is :attr:`Tiling.utilization`, the share its matrix occupies; a grouped convolution's
        zeros occupy cells without holding a weight (a depthwise conv: 1 / in_channels of the matrix)."""
        t = self.tiling
        return self.weight_count / (t.cores * t.tile_rows * t.tile_cols)

    def core_list(self) -> list[int]:
        """All cores of the layer, row block by row block."""
        return [c for row in self.cores for c in row]

    def meta(self) -> dict[str, Any]:
        """JSON-ready metadata (tensors excluded)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "tiling": self.tiling.describe(),
            "geometry": self.geometry,
            "cores": self.cores,
            "x_range": self.x_range,
            "psum_range": self.psum_range,
            "out_range": self.out_range,
            "relu": self.relu,
            "add": self.add,
            "add_at_chain_head": self.add_at_chain_head,
            "relu2": self.relu2,
        }

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The layer's tensors keyed ``prefix.weight`` etc."""
        out = {f"{prefix}.weight": self.weight, f"{prefix}.scale": self.scale, f"{prefix}.bias": self.bias}
        if self.load is not None:
            out[f"{prefix}.load"] = self.load
        return out

    @classmethod
    def from_parts(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str) -> MappedLayer:
        """Inverse of :meth:`meta` + :meth:`tensors`."""
        return cls(
            name=meta["name"],
            kind=meta["kind"],
            weight=tensors[f"{prefix}.weight"],
            scale=tensors[f"{prefix}.scale"],
            bias=tensors[f"{prefix}.bias"],
            tiling=Tiling(**meta["tiling"]),
            geometry=meta["geometry"],
            cores=meta["cores"],
            x_range=meta["x_range"],
            psum_range=meta["psum_range"],
            out_range=meta["out_range"],
            load=tensors.get(f"{prefix}.load"),
            relu=meta["relu"],
            add=meta["add"],
            add_at_chain_head=meta["add_at_chain_head"],
            relu2=meta["relu2"],
        )


@dataclass
class Mapping:
    """A network compiled for the chip: analog layers placed on cores and the ops of one inference.

    Attributes:
        spec: the chip.
        layers: analog layers in execution order, by name.
        ops: the inference program in execution order.
        chips: number of chips the network spans.
        model_name: name of the source network (for reports).
        extra_tensors: tensors of off-chip ops (e.g. embedding tables), by name.
        avoid_cores, avoid_links: the dead cores and links the placement avoided (:mod:`aimc.faults`).
        input_signature: per input op, what the compile-time example input looked like: ``ndim``, ``dtype``
            (``"float"`` or ``"int"``) and ``features`` (size of dim 1 of a float input: channels or features);
            ``ProgrammedChip.run`` checks its inputs against it. Empty for mappings saved before it existed.
        calibration: how the conversion ranges were calibrated: ``method``, ``batches``, ``inputs`` (and
            ``percentile``); empty for mappings saved before it was recorded.
    """

    spec: ChipSpec
    layers: dict[str, MappedLayer]
    ops: list[Op]
    chips: int = 1
    model_name: str = "model"
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    avoid_cores: tuple[int, ...] = ()
    avoid_links: tuple[tuple[int, int], ...] = ()
    input_signature: tuple[dict[str, Any], ...] = ()
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def topology(self) -> Topology:
        """The on-chip network of one chip."""
        return Topology.of(self.spec)

    @property
    def cores_used(self) -> int:
        """Cores holding a weight block, over all chips."""
        return sum(layer.tiling.cores for layer in self.layers.values())

    def chip_of(self, core: int) -> int:
        """Chip index of a global core id."""
        return core // self.spec.cores

    def links_used(self) -> list[dict[str, Any]]:
        """Transfers of partial sums between the cores of each column block (the chain a -> b -> ...).

        Each entry names the layer, the two cores and whether the transfer stays on one chip's network
        (``"on-chip"``, over a direct link or ``hops`` links) or crosses chips (``"inter-chip"``).
        """
        topo = self.topology
        dead = {(min(a, b), max(a, b)) for a, b in self.avoid_links}
        out = []
        for layer in self.layers.values():
            for j in range(layer.tiling.col_blocks if layer.chained else 0):
                chain = [layer.cores[i][j] for i in range(layer.tiling.row_blocks)]
                for a, b in itertools.pairwise(chain):
                    if self.chip_of(a) != self.chip_of(b):
                        out.append({"layer": layer.name, "from": a, "to": b, "kind": "inter-chip", "hops": None})
                    else:
                        la, lb = a % self.spec.cores, b % self.spec.cores
                        hops = 1 if topo.linked(la, lb) and (min(a, b), max(a, b)) not in dead else None
                        if hops is None:
                            hops = topo.route_hops(a, b, dead_links=dead, dead_cores=self.avoid_cores)
                        if hops is None:
                            raise ValidationError(f"cores {a} and {b} of layer {layer.name!r} are not connected")
                        out.append({"layer": layer.name, "from": a, "to": b, "kind": "on-chip", "hops": hops})
        return out

    def summary(self) -> str:
        """A printable table: layer, matrix, blocks, cores, utilisation (the share of the layer's core cells that
        hold a weight; a grouped convolution's block-diagonal zeros do not count)."""
        head = f"{'layer':<24} {'kind':<7} {'matrix (KxN)':>14} {'blocks':>8} {'block':>9} {'util':>6}  cores"
        lines = [
            f"{self.model_name}: {self.cores_used} cores on {self.chips} chip(s) of {self.spec.cores}",
            head,
            "-" * len(head),
        ]
        for layer in self.layers.values():
            t = layer.tiling
            k, n = layer.shape
            lines.append(
                f"{layer.name:<24} {layer.kind:<7} {f'{k}x{n}':>14} {f'{t.row_blocks}x{t.col_blocks}':>8} "
                f"{f'{t.block_inputs}x{t.block_outputs}':>9} {100 * layer.utilization:>5.1f}%  "
                f"{_ranges(layer.core_list())}"
            )
        grouped = [layer for layer in self.layers.values() if layer.groups > 1]
        if grouped:
            lines.append(
                "grouped convolutions, placed block-diagonally (util counts only the weights in the groups' blocks):"
            )
            for layer in grouped:
                k, n = layer.shape
                lines.append(
                    f"  {layer.name}: groups={layer.groups}, {layer.weight_count:,} of the {k * n:,} matrix entries "
                    f"are weights; the matrix spans {100 * layer.tiling.utilization:.1f}% of its cores' cells"
                )
        links = self.links_used()
        inter = sum(1 for link in links if link["kind"] == "inter-chip")
        lines.append(f"partial-sum transfers: {len(links)} ({inter} inter-chip)")
        lines.extend(self._digital_summary())
        return "\n".join(lines)

    def _digital_summary(self) -> list[str]:
        """Lines on the digital ops (:mod:`aimc.digital.generic`): per unit, each operation and its count."""
        digital = [op for op in self.ops if op.kind == "digital"]
        if not digital:
            return []
        by_unit: dict[str, dict[str, int]] = {}
        for op in digital:
            name = op.attrs["target"].split(".")[1] if op.attrs["target"].startswith("aten.") else op.attrs["target"]
            counts = by_unit.setdefault(op.attrs.get("unit", "digital"), {})
            counts[name] = counts.get(name, 0) + 1
        lines = [f"digital ops: {len(digital)} (FP16, layout ops exact; by unit: operation x count)"]
        for unit in ("ldpu", "gdpu", "digital", "layout"):
            if unit in by_unit:
                items = ", ".join(f"{name} x{n}" for name, n in sorted(by_unit[unit].items()))
                lines.append(f"  {unit}: {items}")
        return lines

    def describe(self) -> dict[str, Any]:
        """JSON-ready description: what ``aimc map --json`` prints. Per layer, ``weights`` and ``utilization``
        count the weights it holds (a grouped convolution's block-diagonal zeros excluded), ``occupied`` is the share
        of its cores' cells that its matrix spans, zeros included."""
        return {
            "model": self.model_name,
            "cores_used": self.cores_used,
            "chips": self.chips,
            "layers": [
                {
                    **layer.meta(),
                    "matrix": list(layer.shape),
                    "weights": layer.weight_count,
                    "utilization": layer.utilization,
                    "occupied": layer.tiling.utilization,
                }
                for layer in self.layers.values()
            ],
            "links_used": self.links_used(),
            "ops": [op.to_dict() for op in self.ops],
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """All tensors of the mapping, keyed for safetensors."""
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers.values()):
            out.update(layer.tensors(f"layer{i}"))
        for name, t in self.extra_tensors.items():
            out[f"extra.{name}"] = t
        return out

    def meta(self) -> dict[str, Any]:
        """All non-tensor content, JSON-ready."""
        import dataclasses

        return {
            "spec": dataclasses.asdict(self.spec),
            "chips": self.chips,
            "model_name": self.model_name,
            "layers": [layer.meta() for layer in self.layers.values()],
            "ops": [op.to_dict() for op in self.ops],
            "extra_tensors": sorted(self.extra_tensors),
            "avoid_cores": list(self.avoid_cores),
            "avoid_links": [list(p) for p in self.avoid_links],
            "input_signature": [dict(sig) for sig in self.input_signature],
            "calibration": dict(self.calibration),
        }

    @classmethod
    def from_parts(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Mapping:
        """Inverse of :meth:`meta` + :meth:`tensors`; raises ValidationError on inconsistent content."""
        try:
            spec = ChipSpec(**meta["spec"])
            layers = {}
            for i, lm in enumerate(meta["layers"]):
                layer = MappedLayer.from_parts(lm, tensors, f"layer{i}")
                layers[layer.name] = layer
            ops = [Op(o["name"], o["kind"], list(o["inputs"]), dict(o["attrs"])) for o in meta["ops"]]
            extra = {name: tensors[f"extra.{name}"] for name in meta["extra_tensors"]}
            return cls(
                spec=spec,
                layers=layers,
                ops=ops,
                chips=int(meta["chips"]),
                model_name=str(meta["model_name"]),
                extra_tensors=extra,
                avoid_cores=tuple(int(c) for c in meta.get("avoid_cores", [])),
                avoid_links=tuple((int(a), int(b)) for a, b in meta.get("avoid_links", [])),
                input_signature=tuple(dict(sig) for sig in meta.get("input_signature", [])),
                calibration=dict(meta.get("calibration", {})),
            )
        except (KeyError, TypeError) as err:
            raise ValidationError(f"mapping metadata is incomplete or malformed: {err!r}") from None


def topo_hops(topo: Topology, a: int, b: int) -> int:
    """Shortest number of links between two cores (breadth-first search)."""
    frontier, seen, hops = [a], {a}, 0
    while frontier:
        if b in frontier:
            return hops
        nxt = []
        for core in frontier:
            for nb in topo.neighbours(core):
                if nb not in seen:
                    seen.add(nb)
                    nxt.append(nb)
        frontier, hops = nxt, hops + 1
    raise ValidationError(f"cores {a} and {b} are not connected")


def _ranges(cores: list[int]) -> str:
    """Compact text of a core list: 0-3,8,10-11."""
    if not cores:
        return "-"
    s = sorted(cores)
    parts, start, prev = [], s[0], s[0]
    for c in [*s[1:], None]:  # type: ignore[list-item]
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(parts)
