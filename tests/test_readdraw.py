"""A readout's per-run draw (simulation numerics): the compiled pass must give the PyTorch operations' bits, on any
thread count, and its noise must be the device model's (standard normals scaled by each device's std)."""

from __future__ import annotations

import pytest
import torch

from aimc import program_core
from aimc.core import readdraw
from aimc.core.philox import draw_key
from aimc.kernels import Backend

pytestmark = pytest.mark.skipif(not readdraw.available(), reason="numba is not installed")

#: The MVM kernels fixed in these tests (nothing measured).
FIXED = {"pos_neg_product": "float32", "aux_product": "float32", "mvm_tail": "torch", "mvm_threads": "pools"}


@pytest.mark.parametrize(
    ("lead", "polarity"),
    [((), [1, -1]), ((3,), [1, 1, -1, -1]), ((2, 3), [1, -1, 1, -1]), ((2,), [1, -1, -1])],
)
def test_compiled_draw_gives_the_torch_operations_bits(lead, polarity):
    gen = torch.Generator().manual_seed(len(lead) + len(polarity))
    units = len(polarity)
    g = torch.rand((*lead, units, 40, 36), generator=gen) * 25
    std = torch.rand(g.shape, generator=gen) * 3  # large enough that some conductances clamp at 0
    key = draw_key(gen)
    got = readdraw.noisy_sums(g, std, key, torch.tensor(polarity), 0.0384)
    want = readdraw.noisy_sums_torch(g, std, key, torch.tensor(polarity), 0.0384)
    for a, b, name in zip(got, want, ("g_pos", "g_neg", "y", "a"), strict=True):
        assert a.shape == b.shape, name
        assert torch.equal(a, b), name
    assert bool((got[0] == 0).any()), "no conductance clamped: the test misses the clamp"


def test_compiled_draw_does_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(1)
    g = torch.rand((4, 2, 256, 256), generator=gen) * 25
    std = torch.rand(g.shape, generator=gen)
    key = draw_key(gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = readdraw.noisy_sums(g, std, key, torch.tensor([1, -1]), 0.5)
        torch.set_num_threads(2)
        two = readdraw.noisy_sums(g, std, key, torch.tensor([1, -1]), 0.5)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_drawn_noise_is_the_devices_std_times_standard_normals():
    """Far from the clamp, G+ - g+ = std+·z: z must have mean 0 and variance 1 over 131,072 draws (5-sigma bounds:
    mean within 0.014, variance within 0.02)."""
    gen = torch.Generator().manual_seed(2)
    g = torch.full((2, 2, 256, 256), 100.0)
    std = torch.rand(g.shape, generator=gen) + 0.5
    g_pos, g_neg, _, _ = readdraw.noisy_sums(g, std, draw_key(gen), torch.tensor([1, -1]), 1.0)
    z = torch.cat([((g_pos - 100.0) / std[:, 0]).flatten(), ((g_neg - 100.0) / std[:, 1]).flatten()]).double()
    assert abs(float(z.mean())) < 5 / z.numel() ** 0.5
    assert abs(float(z.var()) - 1.0) < 5 * (2 / z.numel()) ** 0.5


def test_readouts_are_the_same_with_either_draw_kernel():
    w = torch.rand((3, 64, 48), generator=torch.Generator().manual_seed(3)) * 2 - 1
    core = program_core(w, "hermes-2dev", "tdp", 0, backend=Backend(**FIXED, readout_draw="torch"))
    a, b = (core.prepare(600.0, "four-phase", 7, backend=Backend(**FIXED, readout_draw=k)) for k in ("numba", "torch"))
    for name in ("g_pos", "g_neg", "y_matrix", "a_matrix", "fresh_var", "out_scale"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.kernels["readout_draw"] == "numba" and b.kernels["readout_draw"] == "torch"


def test_mismatched_shapes_and_one_sided_polarity_are_refused():
    g = torch.zeros(2, 8, 8)
    with pytest.raises(ValueError, match="disagree"):
        readdraw.noisy_sums(g, torch.zeros(2, 8, 7), draw_key(torch.Generator()), torch.tensor([1, -1]), 1.0)
    with pytest.raises(ValueError, match="positive and one negative"):
        readdraw.noisy_sums(g, g, draw_key(torch.Generator()), torch.tensor([1, 1]), 1.0)
