"""The chip paper's reference networks (docs/physics.md §11): sizes, shapes, fx-traceability, fixed embedding,
determinism, registry."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx
from torch import nn

from aimc.errors import AimcError, ArgumentTypeError, UnknownNameError, ValidationError
from aimc.models import (
    CaptionLSTM,
    CharLSTM,
    ResNet9,
    available_models,
    caption_lstm,
    char_lstm,
    get_model,
    onchip_bias_count,
    onchip_weight_count,
    orthogonal_embedding,
    resnet9,
)


@pytest.fixture(scope="module")
def rn9() -> ResNet9:
    return resnet9().eval()


@pytest.fixture(scope="module")
def clstm() -> CharLSTM:
    return char_lstm().eval()


@pytest.fixture(scope="module")
def caplstm() -> CaptionLSTM:
    return caption_lstm().eval()


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- sizes (docs/physics.md §11) --------------------------------------------------------------------------------------


def test_resnet9_parameter_counts(rn9: ResNet9) -> None:
    assert _trainable(rn9) == 1_869_122
    assert onchip_weight_count(rn9) == 1_866_536
    assert onchip_bias_count(rn9) == 10
    bn = sum(p.numel() for m in rn9.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert bn == 2_576
    assert all(m.bias is None for m in rn9.modules() if isinstance(m, nn.Conv2d))


def test_resnet9_im2col_shapes(rn9: ResNet9) -> None:
    expected = {
        "conv0": (27, 56),
        "conv1": (504, 112),
        "conv2": (1008, 112),
        "conv3": (1008, 112),
        "conv4": (1008, 224),
        "conv5": (2016, 224),
        "conv6": (2016, 224),
        "conv7": (2016, 224),
        "fc": (224, 10),
    }
    for name, shape in expected.items():
        w = getattr(rn9, name).weight
        assert tuple(w.reshape(w.shape[0], -1).T.shape) == shape, name
    for i in range(8):
        conv = getattr(rn9, f"conv{i}")
        assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
        assert isinstance(getattr(rn9, f"bn{i}"), nn.BatchNorm2d)


def test_char_lstm_counts(clstm: CharLSTM) -> None:
    assert onchip_weight_count(clstm) == 128 * 2016 + 504 * 2016 + 504 * 50 == 1_299_312
    assert onchip_bias_count(clstm) == 2016 + 50 == 2_066
    assert clstm.lstm.weight_ih_l0.T.shape == (128, 2016)
    assert clstm.lstm.weight_hh_l0.T.shape == (504, 2016)
    assert clstm.fc.weight.T.shape == (504, 50)


def test_caption_lstm_counts(caplstm: CaptionLSTM) -> None:
    assert onchip_weight_count(caplstm) == 504 * 2016 * 2 + 504 * 4064 == 4_080_384
    assert onchip_bias_count(caplstm) == 2016 + 4064
    assert caplstm.lstm.weight_ih_l0.T.shape == (504, 2016)
    assert caplstm.lstm.weight_hh_l0.T.shape == (504, 2016)
    assert caplstm.fc.weight.T.shape == (504, 4064)
    assert caplstm.project.weight.T.shape == (2048, 504)
    assert isinstance(caplstm.project_bn, nn.BatchNorm1d)


# --- shapes and fx ---------------------------------------------------------------------------------------------


def test_resnet9_shape_and_fx_trace(rn9: ResNet9) -> None:
    x = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = rn9(x)
        traced = torch.fx.symbolic_trace(rn9)
        assert y.shape == (2, 10)
        assert torch.equal(traced(x), y)


def test_resnet9_residual_add_before_relu(rn9: ResNet9) -> None:
    graph = torch.fx.symbolic_trace(rn9).graph
    adds = [n for n in graph.nodes if n.op == "call_function" and n.target in (operator.add, torch.add)]
    assert len(adds) == 2
    for add, (bn, skip_pool) in zip(adds, (("bn3", "pool1"), ("bn7", "pool5")), strict=True):
        sources = {a.target for a in add.args}
        assert sources == {bn, skip_pool}
        (user,) = add.users
        assert "relu" in str(user.target)
    pools = [n.target for n in graph.nodes if n.op == "call_module" and "pool" in n.target]
    assert pools == ["pool1", "pool4", "pool5", "pool7"]


def test_char_lstm_shapes_state_and_trace(clstm: CharLSTM) -> None:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 50, (3, 12), generator=g)
    with torch.no_grad():
        logits, (h, c) = clstm.forward_with_state(tokens)
        assert logits.shape == (3, 12, 50)
        assert h.shape == c.shape == (1, 3, 504)
        # Carrying the state across chunks equals one pass over the whole sequence.
        first, state = clstm.forward_with_state(tokens[:, :5])
        second = clstm(tokens[:, 5:], state)
        torch.testing.assert_close(torch.cat([first, second], dim=1), logits)
        traced = torch.fx.symbolic_trace(clstm)
        assert torch.equal(traced(tokens), clstm(tokens))
    assert any(n.op == "call_module" and n.target == "lstm" for n in traced.graph.nodes)


def test_caption_lstm_shapes_and_trace(caplstm: CaptionLSTM) -> None:
    g = torch.Generator().manual_seed(2)
    features = torch.randn((2, 2048), generator=g)
    captions = torch.randint(0, 4064, (2, 6), generator=g)
    with torch.no_grad():
        logits = caplstm(features, captions)
        assert logits.shape == (2, 7, 4064)
        traced = torch.fx.symbolic_trace(caplstm)
        assert torch.equal(traced(features, captions), logits)


def test_greedy_decode_matches_teacher_forcing(caplstm: CaptionLSTM) -> None:
    features = torch.randn((3, 2048), generator=torch.Generator().manual_seed(3))
    tokens = caplstm.greedy_decode(features, max_len=6)
    assert tokens.shape == (3, 6) and tokens.dtype == torch.long
    with torch.no_grad():
        logits = caplstm(features, tokens[:, :-1])  # (3, 6, V): output t predicts token t
    assert torch.equal(logits.argmax(-1), tokens)
    with_bos = caplstm.greedy_decode(features, max_len=4, bos_id=1)
    with torch.no_grad():
        logits = caplstm(features, torch.cat([torch.ones((3, 1), dtype=torch.long), with_bos[:, :-1]], dim=1))
    assert torch.equal(logits[:, 1:].argmax(-1), with_bos)


def test_greedy_decode_stops_at_eos() -> None:
    model = caption_lstm(vocab_size=20, feature_dim=8, hidden_size=6, embedding_dim=5).eval()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[3] = 1.0  # every step predicts token 3
    tokens = model.greedy_decode(torch.randn((2, 8), generator=torch.Generator().manual_seed(0)), 24, eos_id=3)
    assert tokens.shape == (2, 24)
    assert bool((tokens == 3).all())
    with pytest.raises(ValidationError):
        model.greedy_decode(torch.zeros((1, 8)), eos_id=20)


# --- the fixed orthogonal embedding (docs/physics.md §11) -------------------------------------------------------------


def test_orthogonal_embedding_orthonormal_and_frozen(clstm: CharLSTM) -> None:
    e = clstm.embedding.weight
    assert e.shape == (50, 128)
    assert not e.requires_grad
    assert float((e @ e.T - torch.eye(50)).abs().max()) < 1e-5
    assert _trainable(clstm) == 1_299_312 + 2 * 2016 + 50  # PyTorch stores bias_ih and bias_hh separately
    assert torch.equal(orthogonal_embedding(50, 128, seed=0), e)
    with pytest.raises(ValidationError):
        orthogonal_embedding(129, 128)


# --- determinism, global state, validation, registry -------------------------------------------------------------


@pytest.mark.parametrize("factory", [resnet9, char_lstm])
def test_construction_deterministic_and_leaves_global_rng(factory) -> None:
    before = torch.get_rng_state()
    a, b, c = factory(seed=5), factory(seed=5), factory(seed=6)
    assert torch.equal(torch.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


def test_bad_arguments() -> None:
    with pytest.raises(ValidationError):
        resnet9(num_classes=0)
    with pytest.raises(ValidationError):
        char_lstm(seed=-1)
    with pytest.raises(ArgumentTypeError):
        char_lstm(seed=torch.Generator())
    with pytest.raises(ValidationError):
        char_lstm(vocab_size=200)  # more characters than orthonormal rows of length 128


def test_registry() -> None:
    assert available_models() == ["resnet9", "char-lstm", "caption-lstm", "char-transformer"]
    assert isinstance(get_model("resnet9"), ResNet9)
    assert isinstance(get_model("char-lstm", hidden_size=8), CharLSTM)
    small = get_model("caption-lstm", vocab_size=10, feature_dim=4, hidden_size=4, embedding_dim=4)
    assert isinstance(small, CaptionLSTM)
    with pytest.raises(UnknownNameError) as info:
        get_model("vgg16")
    assert isinstance(info.value, AimcError) and isinstance(info.value, KeyError)
    for name in ("resnet9", "char-lstm", "caption-lstm", "vgg16"):
        assert name in str(info.value)
