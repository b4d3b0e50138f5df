"""Conformance: every kind of analog layer and every family of digital op, captured with torch.export, gives the
PyTorch forward pass on an ideal chip with ideal converters (``program(device="ideal")`` + ``run(quantize=False)``),
within 1e-4 relative (norm of the difference over the norm of the reference). With device noise and the chip's
conversions the outputs are finite, reproducible from the seeds, and a saved chip gives the same numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aimc
from aimc.compiler.capture import UnsupportedLayerError
from aimc.errors import ValidationError

#: Relative tolerance of the ideal chip against PyTorch (float32 sums in another order, FP16-free digital ops).
TOL = 1e-4


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))


def _ideal(model: nn.Module, x, calibration=None) -> tuple[aimc.Mapping, torch.Tensor, torch.Tensor]:
    model.eval()
    inputs = x if isinstance(x, tuple) else (x,)
    mapping = aimc.compile(model, calibration=x if calibration is None else calibration, progress=False)
    chip = aimc.program(mapping, device="ideal", seed=0)
    y = chip.run(x, quantize=False)
    with torch.no_grad():
        ref = model(*inputs)
    return mapping, y, ref


def _conforms(model: nn.Module, x, calibration=None) -> aimc.Mapping:
    mapping, y, ref = _ideal(model, x, calibration)
    if isinstance(ref, tuple):
        for a, b in zip(y, ref, strict=True):
            assert _rel(a, b) < TOL
    else:
        assert y.shape == ref.shape
        assert _rel(y, ref) < TOL, _rel(y, ref)
    return mapping


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- analog layer kinds ----------------------------------------------------------------------------------------------


def test_linear_on_inputs_of_any_rank():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 7))
    for shape in ((6, 20), (4, 5, 20), (2, 3, 4, 20)):
        _conforms(model, torch.randn(*shape, generator=_gen()))


def test_conv1d_plain_grouped_and_depthwise():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(4, 8, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(8, 8, 3, stride=2, groups=2),
        nn.Conv1d(8, 8, 3, padding="same", groups=8),  # depthwise
        nn.ReLU(),
    )
    mapping = _conforms(model, torch.randn(5, 4, 33, generator=_gen()))
    assert all(layer.geometry.get("conv1d") for layer in mapping.layers.values())
    assert mapping.layers["3"].groups == 8


def test_conv2d_grouped_and_depthwise_with_utilisation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU())
    mapping = _conforms(model, torch.randn(3, 3, 10, 10, generator=_gen()))
    dw = mapping.layers["1"]
    assert dw.weight_count == 16 * 9
    assert "groups=16" in mapping.summary()


@pytest.mark.parametrize("batch_first", [True, False])
def test_lstm_two_layers_bidirectional_with_final_state(batch_first):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(6, 10, num_layers=2, bidirectional=True, batch_first=batch_first)
            self.fc = nn.Linear(20, 3)

        def forward(self, x):
            out, (h, _) = self.rnn(x)
            return self.fc(out), h

    torch.manual_seed(0)
    x = torch.randn(4, 7, 6, generator=_gen())
    mapping = _conforms(Net(), x)
    assert sorted(n for n, la in mapping.layers.items() if la.kind == "lstm") == [
        "rnn.l0",
        "rnn.l0_reverse",
        "rnn.l1",
        "rnn.l1_reverse",
    ]


def test_gru_two_layers_and_bidirectional():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(5, 12, num_layers=2, batch_first=True)
            self.back = nn.GRU(12, 6, bidirectional=True, batch_first=True)
            self.fc = nn.Linear(12, 4)

        def forward(self, x):
            y, _ = self.gru(x)
            y, _ = self.back(y)
            return self.fc(y)

    torch.manual_seed(0)
    mapping = _conforms(Net(), torch.randn(3, 9, 5, generator=_gen()))
    assert sum(la.kind == "gru" for la in mapping.layers.values()) == 4


def test_multihead_attention_projections_are_analog():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.fc = nn.Linear(16, 5)

        def forward(self, x):
            y, _ = self.attn(x, x, x, need_weights=False)
            return self.fc(y + x)

    torch.manual_seed(0)
    mapping = _conforms(Net(), torch.randn(3, 8, 16, generator=_gen()))
    assert {"attn.in_proj", "attn.out_proj", "fc"} <= set(mapping.layers)
    digital = {op.attrs["target"].split(".")[1] for op in mapping.ops if op.kind == "digital"}
    assert "bmm" in digital or "matmul" in digital or "scaled_dot_product_attention" in digital


def test_transformer_encoder_language_model():
    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(11, 32)
            layer = nn.TransformerEncoderLayer(
                32, 4, 64, dropout=0.1, activation="gelu", batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(32, 11)

        def forward(self, tokens):
            t = tokens.shape[1]
            mask = nn.Transformer.generate_square_subsequent_mask(t)
            return self.head(self.encoder(self.embed(tokens), mask=mask, is_causal=True))

    torch.manual_seed(0)
    tokens = torch.randint(0, 11, (4, 12), generator=_gen())
    mapping = _conforms(LM(), tokens)
    assert sum(layer.kind == "linear" for layer in mapping.layers.values()) == 2 * 4 + 1


def test_char_transformer():
    from aimc.models.transformer import CharTransformer

    model = CharTransformer(d_model=32, layers=2, heads=2, ff=64, context=16, seed=1)
    tokens = torch.randint(0, 50, (3, 16), generator=_gen())
    mapping = _conforms(model, tokens)
    assert len(mapping.layers) == 2 * 4 + 1


def test_mobilenet_style_cnn():
    class Block(nn.Module):
        def __init__(self, c: int, e: int) -> None:
            super().__init__()
            self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.Hardswish())
            self.dw = nn.Sequential(nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e), nn.ReLU6())
            self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return x + self.project(self.dw(self.expand(x)))

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.Hardswish(),
        Block(8, 24),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    torch.manual_seed(0)
    for m in model.modules():  # batch norms with non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    _conforms(model, torch.randn(4, 3, 16, 16, generator=_gen()))


def test_python_control_flow_that_does_not_depend_on_data():
    class Net(nn.Module):
        def __init__(self, repeat: int, gated: bool) -> None:
            super().__init__()
            self.fcs = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
            self.repeat, self.gated = repeat, gated

        def forward(self, x):
            for _ in range(self.repeat):
                for fc in self.fcs:
                    x = F.gelu(fc(x)) if self.gated else fc(x)
            return x

    torch.manual_seed(0)
    mapping = _conforms(Net(2, True), torch.randn(4, 8, generator=_gen()))
    assert len(mapping.layers) == 6  # each call of a shared layer is its own copy on the cores


# --- digital op families ---------------------------------------------------------------------------------------------


class _Digital(nn.Module):
    """Activation-by-activation products, softmax, LayerNorm, GELU/SiLU/Hardswish, concatenation, splitting,
    reshaping and means around two analog layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 24)
        self.norm = nn.LayerNorm(24)
        self.b = nn.Linear(24, 6)

    def forward(self, x):
        h = self.norm(self.a(x))  # (B, T, 24)
        p, q = h.split(12, dim=-1)
        scores = torch.softmax(p @ q.transpose(1, 2) / 3.0, dim=-1)  # (B, T, T)
        mixed = torch.cat([scores @ F.silu(p), F.hardswish(q)], dim=-1)
        out = self.b(F.gelu(mixed).reshape(x.shape[0], x.shape[1], 24))
        return out - out.mean(dim=1, keepdim=True)


def test_digital_op_families_and_their_units():
    torch.manual_seed(0)
    mapping = _conforms(_Digital(), torch.randn(3, 5, 12, generator=_gen()))
    units = {op.attrs["target"].split(".")[1]: op.attrs["unit"] for op in mapping.ops if op.kind == "digital"}
    assert units["softmax"] == "digital" and units["layer_norm"] == "digital"
    assert units["gelu"] == "gdpu" and units["split"] == "layout"
    assert any(op.kind == "cat" for op in mapping.ops)  # concatenation: a data-layout op of its own
    costs = [op.attrs for op in mapping.ops if op.kind == "digital" and op.attrs["unit"] != "layout"]
    assert all(a["flops"] > 0 and a["bytes"] > 0 for a in costs)
    matmul = [a for a in costs if a["target"].split(".")[1] in ("matmul", "bmm")]
    # per position of the 5-step sequence: (5 x 12) @ (12 x 5) scores, 2 FLOPs per multiply-add, over 5 positions
    assert mapping.calibration["positions"] == 5
    assert matmul and min(a["flops"] for a in matmul) == pytest.approx(2 * 5 * 5 * 12 / 5)


# --- the chip with noise ------------------------------------------------------------------------------------------


def test_noisy_chip_is_finite_reproducible_and_saves(tmp_path):
    from aimc.models.transformer import CharTransformer

    model = CharTransformer(d_model=32, layers=2, heads=2, ff=64, context=16, seed=1).eval()
    tokens = torch.randint(0, 50, (4, 16), generator=_gen())
    mapping = aimc.compile(model, calibration=tokens, progress=False)
    chip = aimc.program(mapping, device="hermes-2dev", seed=3)
    y1 = chip.run(tokens, t=3600.0, seed=5)
    y2 = aimc.program(mapping, device="hermes-2dev", seed=3).run(tokens, t=3600.0, seed=5)
    assert bool(torch.isfinite(y1).all())
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, chip.run(tokens, t=3600.0, seed=6))
    path = tmp_path / "chip.aimc"
    chip.save(str(path))
    assert torch.equal(aimc.load(str(path)).run(tokens, t=3600.0, seed=5), y1)


# --- what cannot be captured --------------------------------------------------------------------------------------


def test_data_dependent_control_flow_names_the_reason():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(UnsupportedLayerError, match=r"torch.export.*torch.where"):
        aimc.compile(Branchy(), calibration=torch.randn(4, 4), progress=False)


def test_rnn_with_a_given_initial_state_is_refused():
    class Stateful(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.init = nn.Linear(3, 4)
            self.rnn = nn.GRU(3, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(x, torch.tanh(self.init(x[:, 0])).unsqueeze(0))[0]

    with pytest.raises(UnsupportedLayerError, match="starts from zeros"):
        aimc.compile(Stateful(), calibration=torch.randn(2, 5, 3), progress=False)


def test_hugging_face_bert_sequence_classifier():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=3,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, ids):
            return self.bert(input_ids=ids, return_dict=False)[0]

    ids = torch.randint(0, 100, (4, 10), generator=_gen())
    mapping = _conforms(Logits(), ids)
    assert sum(layer.kind == "linear" for layer in mapping.layers.values()) == 2 * 6 + 2


def test_depthwise_layers_on_the_digital_unit():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 8, 1)
    )
    x = torch.randn(3, 3, 10, 10, generator=_gen())
    analog = aimc.compile(model, calibration=x, progress=False)
    mapping = aimc.compile(model, calibration=x, digital_layers="depthwise", progress=False)
    assert list(mapping.layers) == ["0", "3"] and mapping.cores_used < analog.cores_used
    conv = [op for op in mapping.ops if op.kind == "digital" and op.attrs["target"].startswith("aten.conv2d")]
    assert len(conv) == 1 and conv[0].attrs["unit"] == "digital" and conv[0].attrs["flops"] > 0
    y = aimc.program(mapping, device="ideal", seed=0).run(x, quantize=False)
    with torch.no_grad():
        assert _rel(y, model(x)) < TOL
    named = aimc.compile(model, calibration=x, digital_layers=["2"], progress=False)
    assert list(named.layers) == ["0", "3"]
    with pytest.raises(ValidationError, match="'depthwise' or a list of layer names"):
        aimc.compile(model, calibration=x, digital_layers="dw", progress=False)
    both = aimc.compile(model, calibration=x, digital_layers=["depthwise", "0"], progress=False)
    assert list(both.layers) == ["3"]
    y = aimc.program(both, device="ideal", seed=0).run(x, quantize=False)
    with torch.no_grad():
        assert _rel(y, model(x)) < TOL
    # a misspelt layer name is refused, naming the layers there are
    with pytest.raises(ValidationError, match=r"names 'stem'.*'0', '2', '3'"):
        aimc.compile(model, calibration=x, digital_layers=["depthwise", "stem"], progress=False)
