"""The fused converter/LDPU kernel, the int8 product planes and the parallel normal draws (simulation numerics).

The fused kernel must give the numbers of the PyTorch path (same float32 operations, FP16 rounding on the bits);
the int8 planes must encode the pos - neg matrix to within half a step; the normal draws must not depend on the
thread count.
"""

from __future__ import annotations

import numba
import pytest
import torch

from aimc import CoreConfig, program_core
from aimc.core import fused
from aimc.core.fastmath import (
    AUX_PLANE_LEVELS,
    PLANE_LEVELS,
    int8_plane,
    int8_planes,
    int_plane_products,
    pack_int_planes,
)
from aimc.core.normals import fill_normal_
from aimc.core.philox import draw_key, fill_normal_rows_
from aimc.errors import ValidationError
from aimc.kernels import Backend

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba is not installed")


def _problem(seed: int, cores: tuple[int, ...], m: int, n: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand((*cores, m, n), generator=g) * 2 - 1
    x = (torch.rand((cores[0], 1, batch, n) if cores else (batch, n), generator=g) * 2 - 1) * (
        torch.rand((batch, n), generator=g) > 0.3
    )
    return w, x


def _tails(core, t: float, mode: str, seed: int, read_noise: bool = True, **kernels: str):
    """Two readouts of ``core``, same seed and kernels but the converter pass: the compiled one and PyTorch's (the
    other kernels as given, else float32 products on the thread pools: nothing measured)."""
    fixed = {"pos_neg_product": "float32", "aux_product": "float32", "mvm_threads": "pools", **kernels}
    return tuple(
        core.prepare(t, mode, seed, read_noise=read_noise, backend=Backend(mvm_tail=tail, **fixed))
        for tail in ("numba", "torch")
    )


def _agree(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal, up to a rare one-count difference where a CPU's vector units fuse a multiply-add differently."""
    diff = (a - b).abs()
    assert float((diff > 0).float().mean()) <= 1e-4
    assert float(diff.max()) <= 0.05 * float(a.abs().max())


@pytest.mark.parametrize("mode", ["four-phase", "one-phase"])
@pytest.mark.parametrize("aux", ["bfloat16", "float32", "int8"])
@pytest.mark.parametrize("product", ["float32", "int-mm", "onednn-int8"])
def test_fused_kernel_gives_the_torch_paths_numbers(mode, aux, product):
    """Every pos - neg product kernel, every auxiliary kernel: the compiled pass equals PyTorch's operations."""
    w, x = _problem(0, (3, 2), 100, 120, 300)  # stacked cores; the input broadcasts over the column blocks
    core = program_core(w, "hermes-2dev", "tdp", 0)
    fast, slow = _tails(core, 3600.0, mode, 1, pos_neg_product=product, aux_product=aux)
    _agree(fast.mvm(x, 7), slow.mvm(x, 7))
    fast, slow = _tails(core, 3600.0, mode, 1, read_noise=False, pos_neg_product=product, aux_product=aux)
    _agree(fast.mvm(x, output_dtype=torch.float16).float(), slow.mvm(x))


@pytest.mark.parametrize(
    "config",
    [
        CoreConfig(cco_nonlinearity_per_uA=0.0),
        CoreConfig(adc_quantization=False),
        CoreConfig(adc_saturation=False),
    ],
    ids=["linear-cco", "no-floor", "no-saturation"],
)
def test_fused_kernel_follows_the_converter_settings(config):
    w, x = _problem(1, (), 64, 256, 200)
    core = program_core(w, "hermes-1dev", "odp", 3, config=config)
    fast, slow = _tails(core, 86400.0, "four-phase", 2)
    _agree(fast.mvm(x * 3.0, 5, x_range=2.0), slow.mvm(x * 3.0, 5, x_range=2.0))


@pytest.mark.parametrize("product", ["int-mm", "onednn-int8"])
def test_int8_and_float32_products_agree_with_the_exact_matmul_when_noise_free(product):
    """The int8 planes change the pos - neg product only at the 15-bit level: far below the converters' error."""
    w, x = _problem(2, (), 128, 256, 500)
    core = program_core(w, "ideal", "tdp", 0)
    fixed = {"aux_product": "float32", "mvm_tail": "numba", "mvm_threads": "pools"}
    readout = core.prepare(0.0, "four-phase", 0, read_noise=False, backend=Backend(pos_neg_product=product, **fixed))
    with_planes = readout.mvm(x)
    f32 = Backend(pos_neg_product="float32", **fixed)
    without = core.prepare(0.0, "four-phase", 0, read_noise=False, backend=f32).mvm(x)
    diff = (with_planes - without).abs()
    count = float(core.adc.inv_alpha.max() * readout.out_scale.max())  # one CCO count in output units
    assert float(diff.max()) <= 1.5 * count  # where a count's floor falls the other way
    assert float((diff > 0).float().mean()) < 0.01
    scale = float((x @ w.T).abs().max())
    assert float((with_planes - x @ w.T).std()) <= 0.01 * scale


@pytest.mark.parametrize(
    "x_lead", [(), (3, 1), (1, 2), (2, 3, 2)], ids=["shared-by-all", "row-blocks", "per-core", "extra-dim"]
)
def test_fused_kernel_gives_the_torch_paths_numbers_for_any_input_broadcast(x_lead):
    """Cores that share an input are one oneDNN matmul; inputs with their own or extra leading dims are not."""
    w, _ = _problem(9, (3, 2), 40, 64, 50)
    x = torch.rand((*x_lead, 50, 64), generator=torch.Generator().manual_seed(1)) * 2 - 1
    core = program_core(w, "hermes-2dev", "tdp", 0)
    fast, slow = _tails(core, 3600.0, "four-phase", 1, pos_neg_product="onednn-int8")
    fast, slow = fast.mvm(x, 3), slow.mvm(x, 3)
    assert fast.shape == slow.shape == (*torch.broadcast_shapes(x_lead, (3, 2)), 50, 40)
    _agree(fast, slow)


def test_int_mm_planes_give_the_onednn_numbers():
    """The planes multiplied by torch._int_mm and scaled in PyTorch give oneDNN's numbers, on either tail."""
    w, x = _problem(10, (2, 1), 64, 100, 80)
    core = program_core(w, "hermes-2dev", "tdp", 0)
    for tail in ("numba", "torch"):
        fixed = {"aux_product": "bfloat16", "mvm_tail": tail, "mvm_threads": "pools"}
        onednn, int_mm = (
            core.prepare(3600.0, "four-phase", 1, backend=Backend(pos_neg_product=p, **fixed)).mvm(x, 4)
            for p in ("onednn-int8", "int-mm")
        )
        assert torch.equal(onednn, int_mm)


def test_hot_path_counts_non_finite_inputs():
    readout = program_core(torch.rand(8, 16), "hermes-2dev", "tdp", 0).prepare(60.0, "four-phase", 0)
    x = torch.zeros(5, 16)
    x[0, 3], x[2, 0], x[4, 15] = float("nan"), float("inf"), -float("inf")
    with pytest.raises(ValidationError, match=r"x must be finite; it holds 3 NaN/Inf value\(s\)"):
        readout.mvm(x, 1)
    big = torch.full((2, 16), 1e30)  # finite, saturates the PWM input
    fast, slow = _tails(readout.core, 60.0, "four-phase", 0)
    assert torch.equal(fast.mvm(big, 1), slow.mvm(big, 1))


@pytest.mark.parametrize("rounding", ["_round_f16", "_round_f16_bits"])
def test_round_f16_is_torch_float16_conversion(rounding):
    g = torch.Generator().manual_seed(0)
    mags = torch.pow(2.0, torch.empty(200_000).uniform_(-30, 17, generator=g))
    x = mags * torch.where(torch.rand(200_000, generator=g) < 0.5, -1.0, 1.0)
    ties = torch.arange(2048, 8192, dtype=torch.float32)  # integers past 2048: every other one is a tie
    edge = torch.tensor([0.0, -0.0, 65504.0, 65519.0, 65520.0, -65520.0, 6.1035e-05, 5.96e-08, 2.98e-08, 1e-9])
    x = torch.cat([x, ties, ties + 0.5, edge])
    convert = numba.njit(getattr(fused, rounding).py_func)
    out = torch.tensor([float(convert(v)) for v in x.numpy()])
    assert torch.equal(out, x.half().float())


def test_int8_planes_encode_the_matrix_within_half_a_step():
    g = torch.Generator().manual_seed(1)
    m = torch.randn((3, 250, 40), generator=g) * torch.tensor([1e-3, 1.0, 50.0]).view(3, 1, 1)
    hi, lo, step = int8_planes(m)
    assert hi.dtype == lo.dtype == torch.int8
    recon = step.double() * (256.0 * hi.double() + lo.double())
    assert bool(((recon - m.double()).abs() <= 0.501 * step.double()).all())  # float32 m/step: +-0.002 of a step
    assert torch.allclose(step.flatten(), m.abs().amax(dim=(-2, -1)) / PLANE_LEVELS)
    x = torch.randint(-127, 128, (3, 17, 250), dtype=torch.int8)
    for shared_dims in (0, 1):  # each core its own input, or all three sharing x[0]
        xs = x if shared_dims == 0 else x[:1]
        planes = pack_int_planes(hi, lo, step, shared_dims)
        y = torch.cat(int_plane_products(xs, planes, (3,)))  # (groups, 17, shared, 2·40)
        y = y.permute(0, 2, 1, 3).reshape(3, 17, 80)
        assert torch.equal(y[..., :40], (xs.double() @ hi.double()).int())
        assert torch.equal(y[..., 40:], (xs.double() @ lo.double()).int())
        assert torch.equal(planes.scales, torch.stack([step.flatten() * 256.0, step.flatten()], dim=1))


def test_int8_plane_encodes_the_matrix_within_half_a_step():
    g = torch.Generator().manual_seed(2)
    m = torch.rand((3, 250, 40), generator=g) * torch.tensor([1e-3, 1.0, 50.0]).view(3, 1, 1)
    q, step = int8_plane(m)
    assert q.dtype == torch.int8 and q.is_contiguous()
    assert bool(((step.double() * q.double() - m.double()).abs() <= 0.501 * step.double()).all())
    assert torch.allclose(step.flatten(), m.abs().amax(dim=(-2, -1)) / AUX_PLANE_LEVELS)
    assert int(q.max()) == AUX_PLANE_LEVELS


def test_int8_pos_plus_neg_product_is_the_planes_exact_product():
    """aux_product=int8: the readout's pos + neg product is the exact int32 product of |levels| and each core's
    plane, for inputs shared by the cores or each core's own."""
    w, _ = _problem(3, (3,), 40, 60, 1)
    core = program_core(w, "hermes-2dev", "tdp", 0)
    readout = core.prepare(60.0, "four-phase", 1, backend=Backend(aux_product="int8", mvm_tail="numba"))
    q, step = readout.a_plane
    levels = torch.randint(-127, 128, (3, 9, 60), dtype=torch.int8, generator=torch.Generator().manual_seed(4))
    for x in (levels, levels[:1]):
        p = readout._products_of(x, x.abs(), None, None)
        assert p.a.dtype == torch.int32
        assert torch.equal(p.a, (x.abs().double() @ q.double()).int().expand(3, 9, 40))
        assert torch.equal(p.a_scale, step.flatten())


def test_normal_draws_do_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    try:
        draws = []
        for n in (1, 2):
            torch.set_num_threads(n)
            draws.append(fill_normal_(torch.empty(400_000), torch.Generator().manual_seed(9)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(draws[0], draws[1])
    z = draws[0]
    # 4e5 draws: the mean's std is 0.0016, the variance's 0.0022; both halves come from independent streams
    assert abs(float(z.mean())) < 0.008
    assert abs(float(z.var()) - 1.0) < 0.011
    assert abs(float(torch.corrcoef(torch.stack([z[:200_000], z[200_000:]]))[0, 1])) < 0.011
    assert not torch.equal(fill_normal_(torch.empty(400_000), torch.Generator().manual_seed(10)), z)


@pytest.mark.parametrize("threads_kernel", ["pools", "parts"])
@pytest.mark.parametrize("product", ["float32", "int-mm", "onednn-int8"])
def test_same_seed_same_outputs_on_one_and_two_threads(threads_kernel, product):
    """With and without the split into per-thread parts, 1 and 2 threads agree (the kernels fixed, so that the
    thread count does not change them)."""
    fixed = {"pos_neg_product": product, "aux_product": "bfloat16", "mvm_tail": "numba"}
    w, x = _problem(3, (2, 1), 200, 250, 400)
    core = program_core(w, "hermes-2dev", "tdp", 0, backend=Backend(**fixed, mvm_threads="pools"))
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            kernel = threads_kernel if n > 1 else "pools"  # "parts" needs two threads
            outs.append(core.prepare(3600.0, "four-phase", 4, backend=Backend(**fixed, mvm_threads=kernel)).mvm(x, 11))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


def test_a_tensor_x_range_runs_on_the_torch_path():
    """The compiled pass takes a scalar x_range only; a per-core range runs PyTorch's operations instead."""
    w, x = _problem(4, (), 16, 32, 8)
    fast, slow = _tails(program_core(w, "hermes-2dev", "tdp", 0), 3600.0, "four-phase", 0)
    assert torch.equal(fast.mvm(x, 1, x_range=torch.tensor(1.0)), slow.mvm(x, 1, x_range=1.0))


def test_philox_matches_the_random123_known_answers():
    """Philox4x32-10 known-answer vectors of Random123 (tests/kat_vectors): counter, key -> four output words."""
    import numba
    import numpy as np

    from aimc.core.philox import philox4x32

    kat = numba.njit(lambda c, k: philox4x32(c[0], c[1], c[2], c[3], k[0], k[1]))
    vectors = [
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (
            [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
            [0xA4093822, 0x299F31D0],
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
        ),
    ]
    for counter, key, expected in vectors:
        out = kat(np.array(counter, dtype=np.uint32), np.array(key, dtype=np.uint32))
        assert [int(w) for w in out] == expected


def test_philox_normals_are_standard_normal_and_thread_independent():
    key = draw_key(torch.Generator().manual_seed(5))
    threads = torch.get_num_threads()
    try:
        draws = []
        for n in (1, 2):
            torch.set_num_threads(n)
            draws.append(fill_normal_rows_(torch.empty(4001, 250), key))  # an odd row count, m not a multiple of 4
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(draws[0], draws[1])
    z = draws[0].flatten().double()
    n = z.numel()  # 1,000,250 draws: std of the mean 0.001, of the variance 0.0014, of skew 0.0024, of kurtosis 0.005
    assert abs(float(z.mean())) < 0.005
    assert abs(float(z.var()) - 1.0) < 0.007
    assert abs(float((z**3).mean())) < 0.012
    assert abs(float((z**4).mean()) - 3.0) < 0.025
    # Kolmogorov-Smirnov distance to the normal CDF: the 1e-4 critical value for n = 1e6 is 0.0022
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert float((torch.special.ndtr(z.sort().values) - ecdf).abs().max()) < 0.0022
    # the tails: P(|z| > 3) = 0.0027 (binomial std 5e-5), and draws reach beyond 4.5 sigma
    assert abs(float((z.abs() > 3).double().mean()) - 0.0026998) < 0.00026
    assert float(z.abs().max()) > 4.5
    # neighbouring elements (same Philox block) and rows are uncorrelated
    pairs = draws[0][:, :248].reshape(-1, 2).T.double()
    assert abs(float(torch.corrcoef(pairs)[0, 1])) < 0.005
    rows = torch.stack([draws[0][0:4000:2].flatten(), draws[0][1:4001:2].flatten()]).double()
    assert abs(float(torch.corrcoef(rows)[0, 1])) < 0.005


@pytest.mark.parametrize("aux", [torch.bfloat16, torch.float32])
def test_prepared_inputs_equal_the_pytorch_operations(aux):
    from aimc.core.inputs import prepare_four_phase
    from aimc.core.pwm import quantize_input
    from aimc.spec import ChipSpec

    g = torch.Generator().manual_seed(6)
    x = torch.randn((3, 40, 7), generator=g) * 2.0  # some values beyond x_range: saturate
    x[0, 0, :3] = torch.tensor([0.5, -0.5, 1.5]) * (1.3 / 127)  # ties of the rounding (half to even)
    levels = quantize_input(x, 1.3, ChipSpec.hermes())
    out = prepare_four_phase(x.transpose(0, 1), 3, 3, aux, scale=127 / 1.3)  # strided (40, 3, 7): 9 blocks of 3
    rows = levels.transpose(0, 1).reshape(120, 7)
    padded = torch.nn.functional.pad(rows, (0, 2)).reshape(120, 3, 3).permute(1, 0, 2)
    assert torch.equal(out.levels, padded.to(torch.int8))
    assert torch.equal(out.magnitude, padded.to(aux).abs())
    assert torch.equal(out.square, padded.to(aux) * padded.to(aux))
    again = prepare_four_phase(levels.transpose(0, 1).to(torch.bfloat16), 3, 3, aux)  # levels given
    assert all(torch.equal(a, b) for a, b in zip(again, out, strict=True))


def test_chip_runs_the_same_with_and_without_the_fused_kernels(monkeypatch):
    from aimc import compile as compile_network
    from aimc import models, program

    model = models.resnet9(seed=0).eval()
    x = torch.randn((6, 3, 32, 32), generator=torch.Generator().manual_seed(7))
    chip = program(compile_network(model, example_input=x), "hermes-2dev", "tdp", seed=0)
    fast = chip.run(x, t=3600.0, seed=1, read_noise=False)
    monkeypatch.setattr(fused, "available", lambda: False)
    slow = chip.run(x, t=3600.0, seed=1, read_noise=False)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 2), (2, 1), (0, 2), (2, 1))],
)
def test_conv_inputs_are_the_im2col_matrix(kernel, stride, padding, dilation):
    from aimc.core.inputs import prepare_conv_four_phase, prepare_four_phase

    g = torch.Generator().manual_seed(8)
    levels = torch.randint(-127, 128, (2, 5, 9, 8), generator=g).to(torch.bfloat16)
    k = 5 * kernel[0] * kernel[1]
    n, blocks = 8, -(-k // 8)
    got = prepare_conv_four_phase(levels, kernel, stride, padding, dilation, n, blocks, torch.bfloat16)
    cols = torch.nn.functional.unfold(levels.float(), kernel, dilation=dilation, padding=padding, stride=stride)
    want = prepare_four_phase(cols.transpose(1, 2).to(torch.bfloat16), n, blocks, torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
