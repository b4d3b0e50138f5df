"""Kernels chosen by measurement (aimc.kernels): the choice avoids slow candidates, every candidate computes what its
documented tolerance allows, the cache round-trips and survives corruption, forcing a kernel works and names the
choices when wrong, and results record the kernels that ran."""

from __future__ import annotations

import json
import time

import pytest
import torch

import aimc
from aimc import kernels, program_core
from aimc.core import analog
from aimc.digital import fp16round
from aimc.kernels import Backend, Candidate, KernelError, Operation, Workload


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty kernel cache of the test's own, and no choice remembered from earlier tests."""
    monkeypatch.setenv("AIMC_CACHE_DIR", str(tmp_path))
    kernels.clear_memory()
    yield tmp_path / "kernels.json"
    kernels.clear_memory()


class FakeClock:
    """A clock that the fake kernels advance by their stated cost: the choice is tested without timing anything."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fake_operation(clock: FakeClock, probe_ms: dict[str, float], run_ms: dict[str, float], calls: dict[str, int]):
    def workloads(after, names):
        def cost(name: str, ms: float):
            def call() -> None:
                calls[name] = calls.get(name, 0) + 1
                clock.now += ms / 1e3

            return call

        return {n: Workload(cost(n, probe_ms[n]), cost(n, run_ms[n])) for n in names}

    return Operation(
        name="fake",
        summary="test",
        candidates=tuple(Candidate(n, n, "exact") for n in probe_ms),
        workloads=workloads,
    )


def test_a_clearly_slow_candidate_is_abandoned_after_its_probe():
    clock, calls = FakeClock(), {}
    op = _fake_operation(clock, {"a": 1.0, "b": 0.5, "c": 400.0}, {"a": 10.0, "b": 6.0, "c": 1.0}, calls)
    choice = kernels.measure(op, {}, ("a", "b", "c"), clock=clock)
    assert choice.kernel == "b"
    assert choice.times_ms["c"] is None  # never timed on the representative call
    assert calls["c"] == 2  # the two probe calls only (the first pays one-off costs)
    assert choice.probe_ms["c"] == pytest.approx(400.0)
    assert choice.times_ms["a"] == pytest.approx(10.0) and choice.times_ms["b"] == pytest.approx(6.0)


@pytest.mark.parametrize(("later_ms", "expected"), [(9.7, "a"), (9.0, "b")])
def test_an_earlier_candidate_keeps_its_place_unless_a_later_one_is_clearly_faster(later_ms, expected):
    clock = FakeClock()
    op = _fake_operation(clock, {"a": 1.0, "b": 1.0}, {"a": 10.0, "b": later_ms}, {})
    assert kernels.measure(op, {}, ("a", "b"), clock=clock).kernel == expected


def test_a_candidate_that_fails_is_skipped():
    def workloads(after, names):
        def broken() -> None:
            raise RuntimeError("operator refused")

        return {"a": Workload(broken, broken), "b": Workload(lambda: None, lambda: None)}

    op = Operation("fake", "test", (Candidate("a", "a", "exact"), Candidate("b", "b", "exact")), workloads)
    choice = kernels.measure(op, {}, ("a", "b"))
    assert choice.kernel == "b" and choice.times_ms["a"] is None


def test_selection_avoids_a_pathologically_slow_real_kernel(cache, monkeypatch):
    """The compiled converter pass made 0.5 s slower per call: the measured choice takes PyTorch's, and abandons the
    slow one after its probe. (The delay is far above any probe time, even on a loaded machine: with 50 ms, a probe
    of PyTorch's pass slowed past 50 / ABANDON_FACTOR ms by other jobs kept the slow candidate for the full
    measurement.)"""
    from aimc.core import fused

    if not fused.available():
        pytest.skip("numba is not installed: one candidate only")
    real = fused.adc_ldpu

    def slow(*args, **kw):
        time.sleep(0.5)
        return real(*args, **kw)

    monkeypatch.setattr(fused, "adc_ldpu", slow)
    fixed = Backend(pos_neg_product="float32", aux_product="float32")
    choice = fixed.choose("mvm_tail")
    assert choice.source == "measured"
    assert choice.kernel == "torch"
    # abandoned after its probe (the representative MVM never ran), unless other jobs slowed PyTorch's probe past
    # 1 / ABANDON_FACTOR of the slow one's, which the rule then keeps
    probe = choice.probe_ms
    assert choice.times_ms["numba"] is None or probe["numba"] <= kernels.ABANDON_FACTOR * probe["torch"]


def test_the_choice_is_cached_and_read_back(cache):
    first = Backend().choose("aux_product")
    assert first.source == "measured" and cache.is_file()
    kernels.clear_memory()
    again = Backend().choose("aux_product")
    assert again.source == "cache"
    assert again.kernel == first.kernel and again.times_ms == first.times_ms
    data = json.loads(cache.read_text())
    assert kernels.machine_key() in data["machines"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: b"\x00\xff not json",
        lambda text: text[: len(text) // 2].encode(),
        lambda text: json.dumps({"format": 999, "machines": {}}).encode(),
        lambda text: text.replace('"kernel": "', '"kernel": "no-such-').encode(),
        lambda text: text.replace('"times_ms": {', '"times_ms": {"float32": "fast", "x": ').encode(),
    ],
    ids=["binary", "truncated", "other-format", "unknown-kernel", "bad-times"],
)
def test_a_corrupt_cache_is_measured_again_and_rewritten(cache, damage):
    Backend().choose("aux_product")
    cache.write_bytes(damage(cache.read_text()))
    kernels.clear_memory()
    choice = Backend().choose("aux_product")
    assert choice.source == "measured"
    record = json.loads(cache.read_text())["machines"][kernels.machine_key()]
    assert any(entry["kernel"] == choice.kernel for entry in record.values())


def test_a_cache_that_misses_a_candidate_is_measured_again(cache):
    """A choice cached before a candidate existed (or could run here) is measured again with it."""
    Backend().choose("aux_product")
    data = json.loads(cache.read_text())
    for entry in data["machines"][kernels.machine_key()].values():
        entry["times_ms"].pop("float32", None)
        entry["probe_ms"].pop("float32", None)
        entry["kernel"] = next(iter(entry["times_ms"]))
    cache.write_text(json.dumps(data))
    kernels.clear_memory()
    choice = Backend().choose("aux_product")
    assert choice.source == "measured" and "float32" in choice.probe_ms


def test_a_cache_from_another_version_is_not_used(cache, monkeypatch):
    Backend().choose("aux_product")
    kernels.clear_memory()
    monkeypatch.setattr(aimc._version, "__version__", "0.0.0-other")
    assert Backend().choose("aux_product").source == "measured"


def test_a_kernel_that_cannot_run_here_is_not_taken_from_the_cache(cache, monkeypatch):
    """A cached oneDNN choice on a PyTorch build without oneDNN's int8 operator: measured again without it."""
    from aimc.core import fastmath

    first = Backend().choose("pos_neg_product")
    text = cache.read_text()
    cache.write_text(text.replace(f'"kernel": "{first.kernel}"', '"kernel": "onednn-int8"'))
    kernels.clear_memory()
    monkeypatch.setattr(fastmath, "_onednn_int8_available", lambda: False)
    again = Backend().choose("pos_neg_product")
    assert again.source == "measured" and again.kernel != "onednn-int8"
    assert "onednn-int8" not in again.times_ms  # pruned: not even probed


def test_forcing_by_environment_and_by_backend(cache, monkeypatch):
    monkeypatch.setenv("AIMC_KERNELS", "aux_product=bfloat16, mvm_tail=torch")
    assert Backend().choose("aux_product") == kernels.Choice("bfloat16", "AIMC_KERNELS")
    assert Backend(aux_product="float32").choose("aux_product") == kernels.Choice("float32", "backend")
    readout = program_core(torch.rand(8, 16), "ideal", "tdp", 0).prepare(0.0, "four-phase", 0)
    assert readout.kernels["aux_product"] == "bfloat16" and readout.kernels["mvm_tail"] == "torch"
    assert readout.aux_dtype == torch.bfloat16
    measured = json.loads(cache.read_text())["machines"][kernels.machine_key()]
    assert not any(entry.startswith(("aux_product", "mvm_tail")) for entry in measured)  # forced: never measured


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("pos_neg_product=fast", r"unknown kernel 'fast' for operation 'pos_neg_product'; the choices are: float32"),
        ("no_such_op=float32", r"unknown kernel operation 'no_such_op'; the operations are: .*aux_product"),
        ("aux_product", r"not of the form operation=kernel"),
    ],
)
def test_an_unknown_name_is_an_error_listing_the_choices(cache, monkeypatch, text, match):
    with pytest.raises(KernelError, match=match):
        Backend.parse(text)
    monkeypatch.setenv("AIMC_KERNELS", text)
    with pytest.raises(KernelError, match="AIMC_KERNELS: .*" + match):
        Backend().choose("aux_product")


def test_a_kernel_that_cannot_run_on_the_device_is_refused():
    with pytest.raises(KernelError, match=r"cannot run here .*cuda.*the kernels that can: float32"):
        Backend(pos_neg_product="int-mm").choose("pos_neg_product", "cuda")
    with pytest.raises(aimc.errors.ValidationError, match=r"backend must be an aimc\.kernels\.Backend"):
        program_core(torch.rand(4, 4), "ideal", "tdp", 0).prepare(0.0, "four-phase", 0, backend="fused")


def test_every_operation_lists_candidates_with_stated_numerics():
    ops = kernels.operations()
    assert {
        "pos_neg_product", "aux_product", "mvm_tail", "mvm_threads", "ldpu_chain", "train_precision", "fp16_round"
    } <= set(ops)  # fmt: skip
    for op in ops.values():
        assert op.candidates[0].available("cpu")  # the reference runs everywhere
        for c in op.candidates:
            assert c.summary and c.numerics


# --- every candidate against the reference, within its documented tolerance ----------------------------------------

REFERENCE = {"pos_neg_product": "float32", "aux_product": "float32", "mvm_tail": "torch", "mvm_threads": "pools"}


def _edge_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "random": (torch.rand((2, 1, 300, 100), generator=g) * 2 - 1) * (torch.rand(300, 100, generator=g) > 0.3),
        "zeros": torch.zeros(3, 100),
        "saturating": torch.full((4, 100), 5.0),
        "alternating": torch.tensor([1.0, -1.0]).repeat(50).view(1, 100),
        "one-row": torch.rand(1, 100, generator=g),
    }


@pytest.fixture(scope="module")
def edge_core():
    g = torch.Generator().manual_seed(4)
    w = torch.rand((2, 3, 64, 100), generator=g) * 2 - 1
    w[0, 0] = 0.0  # an all-zero core
    return program_core(w, "hermes-2dev", "tdp", 0, backend=Backend(**REFERENCE))


@pytest.mark.parametrize(
    ("op", "kernel"),
    [
        ("pos_neg_product", "int-mm"),
        ("pos_neg_product", "onednn-int8"),
        ("aux_product", "bfloat16"),
        ("mvm_tail", "numba"),
        ("mvm_threads", "parts"),
    ],
)
def test_every_mvm_kernel_is_within_its_tolerance_of_the_reference(edge_core, op, kernel):
    """int8 planes: within one CCO count, on at most 1% of outputs (a count's floor that falls the other way);
    bfloat16 auxiliary products: within 1.5 counts (they shift the drift-compensation factor and both counters by
    ~2^-9 relative); the compiled pass and the thread split: bit-identical."""
    candidate = kernels.get_operation(op).candidate(kernel)
    if not candidate.available("cpu"):
        pytest.skip(f"{op}={kernel} cannot run here")
    for name, x in _edge_inputs().items():
        ref_readout = edge_core.prepare(3600.0, "four-phase", 1, backend=Backend(**REFERENCE))
        count = float(edge_core.adc.inv_alpha.max() * ref_readout.out_scale.max())  # one count in output units
        ref = ref_readout.mvm(x, 3)
        got = edge_core.prepare(3600.0, "four-phase", 1, backend=Backend(**{**REFERENCE, op: kernel})).mvm(x, 3)
        diff = (got - ref).abs()
        if op in ("mvm_tail", "mvm_threads"):
            assert torch.equal(got, ref), name
        elif op == "pos_neg_product":
            assert float(diff.max()) <= 1.0 * count, name
            assert float((diff > 0).float().mean()) <= 0.01, name
        else:
            assert float(diff.max()) <= 1.5 * count, name


@pytest.fixture(scope="module")
def small_chip():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 4 * 4, 10),
    )
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mapping = aimc.compile(model, example_input=x)
    return aimc.program(mapping, "hermes-2dev", "tdp", 0, backend=Backend(**REFERENCE)), x


def test_both_ldpu_chains_give_the_same_network_outputs(small_chip):
    chip, x = small_chip
    outs = [chip.run(x, 3600.0, seed=1, backend=Backend(**REFERENCE, ldpu_chain=k)) for k in ("numba", "torch")]
    assert torch.equal(outs[0], outs[1])


def test_compiled_fp16_rounding_equals_pytorchs_conversions():
    """Ties, subnormals, overflow to infinity, signed zeros, NaN, and lengths around the pass's rows."""
    g = torch.Generator().manual_seed(3)
    special = torch.tensor(
        [0.0, -0.0, 65504.0, 65519.99, 65520.0, -70000.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 6.1e-5, 1.0 + 2.0**-11,
         1.0 + 3 * 2.0**-11, float("inf"), float("nan"), 1e-30]
    )  # fmt: skip
    for n in (1, 15, fp16round.ROW, fp16round.ROW + 1, 3 * fp16round.ROW + 100):
        x = torch.cat([special, torch.randn(n, generator=g) * 10.0 ** torch.randint(-6, 5, (n,), generator=g)])
        got = fp16round.round_fp16_(x.clone(), "numba")
        want = x.half().float()
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), n  # bit for bit, -0 and NaN included


def test_both_fp16_roundings_give_the_same_transformer_outputs():
    """A digital-op-heavy network (attention, softmax, LayerNorm, GELU) gives the same outputs with either kernel."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True, norm_first=True)
    model = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(1))
    chip = aimc.program(aimc.compile(model, example_input=x), "hermes-2dev", "tdp", 0)
    outs = [chip.run(x, 60.0, seed=1, backend=Backend(**REFERENCE, fp16_round=k)) for k in ("numba", "torch")]
    assert torch.equal(outs[0], outs[1]) and bool(torch.isfinite(outs[0]).all())


def test_bfloat16_training_precision_is_within_bfloat16_tolerance():
    """One training step's loss and gradients under bfloat16 autocast: within 2% of float32 (8-bit mantissas)."""
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(8, 16, 8, 8, generator=g)
    results = []
    for bf16 in (False, True):
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = conv(x).float().square().mean()
        loss.backward()
        results.append((float(loss.detach()), conv.weight.grad.clone()))
    assert abs(results[1][0] / results[0][0] - 1) < 0.02
    rel = (results[1][1] - results[0][1]).norm() / results[0][1].norm()
    assert float(rel) < 0.02


def test_results_record_the_kernels_that_ran(small_chip, monkeypatch):
    from aimc._provenance import provenance

    chip, x = small_chip
    kernels.clear_memory()
    chip.run(x, 60.0, seed=0, backend=Backend(**REFERENCE, ldpu_chain="torch"))
    recorded = provenance()["kernels"]
    for op, kernel in {**REFERENCE, "ldpu_chain": "torch"}.items():
        assert f"{op}={kernel}" in recorded
    assert set(analog.READOUT_OPERATIONS) == {"pos_neg_product", "aux_product", "mvm_tail", "mvm_threads"}


def test_aimc_info_shows_every_operation_and_its_choice(cache, capsys, monkeypatch):
    from aimc.cli import main

    monkeypatch.setenv("AIMC_KERNELS", "train_precision=float32")  # no training step timed here
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpu"] == kernels.cpu_model() and info["cache"] == str(cache)
    assert info["forced"] == "train_precision=float32"
    for name, op in info["operations"].items():
        names = [c["name"] for c in op["candidates"]]
        assert op["kernel"] in names, name
        if op["source"] == "measured":
            assert op["candidates"][names.index(op["kernel"])]["time_ms"] > 0
    assert info["operations"]["train_precision"]["source"] == "AIMC_KERNELS"
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "pos_neg_product" in text and "cache:" in text and "AIMC_KERNELS" in text
    assert main(["info", "--remeasure"]) == 0
    assert "(measured, " in capsys.readouterr().out
