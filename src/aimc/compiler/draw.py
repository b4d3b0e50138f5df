"""Drawing a mapping as the chip's core grid: cores coloured by layer, partial-sum links, the GDPU row."""

from __future__ import annotations

from aimc.compiler.mapping import Mapping
from aimc.compiler.placement import gdpu_feed_row


def draw_core_map(mapping: Mapping, path: str) -> None:
    """Save a PNG with one panel per chip: the grid of cores coloured by layer and the links used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    spec = mapping.spec
    rows, cols = spec.grid_rows, spec.grid_cols
    cmap = plt.get_cmap("tab20")
    owner: dict[int, tuple[int, str]] = {}
    for k, layer in enumerate(mapping.layers.values()):
        for core in layer.core_list():
            owner[core] = (k, layer.name)
    fig, axes = plt.subplots(1, mapping.chips, figsize=(6.5 * mapping.chips, 6.8), squeeze=False)
    gdpu_y = gdpu_feed_row(spec) + 1
    for chip, ax in enumerate(axes[0]):
        for local in range(spec.cores):
            r, c = divmod(local, cols)
            core = chip * spec.cores + local
            k, name = owner.get(core, (-1, ""))
            colour = cmap(k % 20) if k >= 0 else (0.93, 0.93, 0.93, 1.0)
            ax.add_patch(Rectangle((c, r), 0.9, 0.9, facecolor=colour, edgecolor="black", linewidth=0.5))
            ax.text(c + 0.45, r + 0.3, str(local), ha="center", va="center", fontsize=6)
            if name:
                ax.text(c + 0.45, r + 0.6, name[:8], ha="center", va="center", fontsize=5)
        ax.add_patch(Rectangle((0, gdpu_y - 0.08), cols - 0.1, 0.06, facecolor="black"))
        ax.text(cols - 0.05, gdpu_y - 0.05, " GDPUs", va="center", fontsize=7)
        for link in mapping.links_used():
            a, b = link["from"], link["to"]
            if mapping.chip_of(a) != chip and mapping.chip_of(b) != chip:
                continue
            (ra, ca), (rb, cb) = divmod(a % spec.cores, cols), divmod(b % spec.cores, cols)
            style = "-" if link["kind"] == "on-chip" else ":"
            ax.plot([ca + 0.45, cb + 0.45], [ra + 0.45, rb + 0.45], style, color="black", linewidth=1.2)
        ax.set_xlim(-0.2, cols + 0.8)
        ax.set_ylim(rows + 0.1, -0.2)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(f"chip {chip}" if mapping.chips > 1 else f"{mapping.model_name}: {mapping.cores_used} cores")
    handles = [Patch(facecolor=cmap(k % 20), label=name) for k, name in enumerate(mapping.layers)]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)
