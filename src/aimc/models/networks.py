"""The three reference networks that the chip paper runs on the 64-core chip (docs/physics.md §11), as plain
``torch.nn.Module``s.

- :class:`ResNet9` — ResNet-9 for CIFAR-10: 8 bias-free 3×3 convolutions with BatchNorm, two residual blocks,
  4 max-pools and one dense layer; 1,866,536 on-chip weights + 10 biases.
- :class:`CharLSTM` — one-layer LSTM (hidden 504) for character-level Penn Treebank, fixed random orthogonal
  128-dimensional character embedding (off-chip); 1,299,312 on-chip weights + 2,066 biases.
- :class:`CaptionLSTM` — one-layer LSTM (hidden 504) for Flickr8k image captioning on InceptionV3 features, with a
  software projection 2048 → 504 + BatchNorm and a software word embedding (both off-chip); 4,080,384 on-chip weights.

All three are traceable with ``torch.fx.symbolic_trace``: ``forward`` has no data-dependent Python control flow and
each ``nn.LSTM`` is an ordinary submodule, which fx records as one leaf ``call_module`` node. Construction is
deterministic for a given ``seed`` and never touches the global random state: PyTorch's default initialisation runs
under a local :func:`torch.random.fork_rng`, and the orthogonal embedding is drawn from a private
:class:`torch.Generator`.

Which layers are on chip is declared per model class in ``offchip_modules`` (the names of the submodules that run in
software); :func:`onchip_weight_count` and :func:`onchip_bias_count` count the rest.

Examples:
    >>> import torch
    >>> model = resnet9().eval()
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> onchip_weight_count(model)
    1866536
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from aimc._validation import check_number, make_generator
from aimc.errors import ArgumentTypeError, ValidationError

#: Filters of the 8 convolutions of ResNet-9, conv0 … conv7 (docs/physics.md §11).
RESNET9_FILTERS: tuple[int, ...] = (56, 112, 112, 112, 224, 224, 224, 224)

LSTMState = tuple[torch.Tensor, torch.Tensor]


def _check_positive_int(value: object, name: str) -> int:
    return int(check_number(value, name, low=1, integer=True))


def _check_seed(seed: object) -> int:
    if isinstance(seed, torch.Generator):
        raise ArgumentTypeError("seed must be an int here (it seeds PyTorch's default initialisation), got a Generator")
    make_generator(seed)  # type and sign check, one wording for every seed in aimc
    return int(seed)  # type: ignore[arg-type]


@contextmanager
def _seeded_init(seed: int) -> Iterator[None]:
    """A context in which the CPU random state starts at ``seed`` and is restored on exit (global state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: the modules are built on the CPU
        yield


def orthogonal_embedding(num_embeddings: int, embedding_dim: int, seed: int = 0) -> torch.Tensor:
    """``num_embeddings`` orthonormal rows of length ``embedding_dim``, fixed by ``seed`` (docs/physics.md §11, PTB
    LSTM).

    The rows are the first ``num_embeddings`` rows of the orthogonal factor Q of the QR decomposition of an
    ``embedding_dim × embedding_dim`` standard Gaussian matrix (computed in float64 with the sign of R's diagonal
    folded into Q, so Q is Haar-distributed).

    Returns:
        float32 tensor of shape (num_embeddings, embedding_dim) with ``E @ E.T == I`` to float32 precision.
    """
    num_embeddings = _check_positive_int(num_embeddings, "num_embeddings")
    embedding_dim = _check_positive_int(embedding_dim, "embedding_dim")
    if num_embeddings > embedding_dim:
        raise ValidationError(
            f"num_embeddings must be <= embedding_dim for orthonormal rows, got {num_embeddings} > {embedding_dim}"
        )
    g = make_generator(seed)
    gauss = torch.randn((embedding_dim, embedding_dim), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # column j times sign(r_jj): Haar measure, unique Q
    return q[:num_embeddings].to(torch.float32).contiguous()


class ResNet9(nn.Module):
    """ResNet-9 for CIFAR-10 as mapped onto the chip (docs/physics.md §11).

    Layout (every convolution 3×3, stride 1, padding 1, no bias, followed by BatchNorm2d):

    ====== ============ ============================== =====================
    layer  channels     after it                       im2col matrix
    ====== ============ ============================== =====================
    conv0  3 → 56       BN, ReLU                       27 × 56
    conv1  56 → 112     BN, ReLU, MaxPool2d(2)         504 × 112
    conv2  112 → 112    BN, ReLU                       1008 × 112
    conv3  112 → 112    BN, + skip from conv1, ReLU    1008 × 112
    conv4  112 → 224    BN, ReLU, MaxPool2d(2)         1008 × 224
    conv5  224 → 224    BN, ReLU, MaxPool2d(2)         2016 × 224
    conv6  224 → 224    BN, ReLU                       2016 × 224
    conv7  224 → 224    BN, + skip from conv5, ReLU,   2016 × 224
                        MaxPool2d(4), Flatten
    fc     224 → 10     (bias)                         224 × 10
    ====== ============ ============================== =====================

    The residual add comes before the ReLU of the block's second convolution, ``relu(bn3(conv3(...)) + h1)``: on the
    chip the LDPU that receives conv3's partial sums applies BN, adds the skip and then the ReLU (docs/physics.md §11).
    The four max-pools run off-chip. Trainable parameters: 1,866,536 weights + 10 fc biases + 2,576 BN affine =
    1,869,122.

    Args:
        num_classes: outputs of the dense layer.
        seed: fixes PyTorch's default initialisation (drawn under a local ``fork_rng``; global state untouched).

    Shapes:
        input (B, 3, 32, 32) → logits (B, num_classes).
    """

    #: Submodules that run in software. None holds weights: BN, ReLU and the residual adds run in the LDPUs and the
    #: max-pools off-chip, but all conv and fc weights are on the crossbars.
    offchip_modules: tuple[str, ...] = ()

    def __init__(self, num_classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        num_classes = _check_positive_int(num_classes, "num_classes")
        seed = _check_seed(seed)
        self.num_classes = num_classes
        f = RESNET9_FILTERS
        with _seeded_init(seed):
            self.conv0 = nn.Conv2d(3, f[0], 3, stride=1, padding=1, bias=False)
            self.bn0 = nn.BatchNorm2d(f[0])
            self.conv1 = nn.Conv2d(f[0], f[1], 3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(f[1])
            self.pool1 = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(f[1], f[2], 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(f[2])
            self.conv3 = nn.Conv2d(f[2], f[3], 3, stride=1, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(f[3])
            self.conv4 = nn.Conv2d(f[3], f[4], 3, stride=1, padding=1, bias=False)
            self.bn4 = nn.BatchNorm2d(f[4])
            self.pool4 = nn.MaxPool2d(2)
            self.conv5 = nn.Conv2d(f[4], f[5], 3, stride=1, padding=1, bias=False)
            self.bn5 = nn.BatchNorm2d(f[5])
            self.pool5 = nn.MaxPool2d(2)
            self.conv6 = nn.Conv2d(f[5], f[6], 3, stride=1, padding=1, bias=False)
            self.bn6 = nn.BatchNorm2d(f[6])
            self.conv7 = nn.Conv2d(f[6], f[7], 3, stride=1, padding=1, bias=False)
            self.bn7 = nn.BatchNorm2d(f[7])
            self.pool7 = nn.MaxPool2d(4)  # the 4th max-pool: 4×4 → 1×1
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(f[7], num_classes, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images ``x`` (B, 3, 32, 32)."""
        h = torch.relu(self.bn0(self.conv0(x)))  # (B, 56, 32, 32)
        h1 = self.pool1(torch.relu(self.bn1(self.conv1(h))))  # (B, 112, 16, 16)
        r = torch.relu(self.bn2(self.conv2(h1)))
        h = torch.relu(self.bn3(self.conv3(r)) + h1)  # residual conv1 → conv3, added before the ReLU
        h = self.pool4(torch.relu(self.bn4(self.conv4(h))))  # (B, 224, 8, 8)
        h5 = self.pool5(torch.relu(self.bn5(self.conv5(h))))  # (B, 224, 4, 4)
        r = torch.relu(self.bn6(self.conv6(h5)))
        h = torch.relu(self.bn7(self.conv7(r)) + h5)  # residual conv5 → conv7, added before the ReLU
        h = self.flatten(self.pool7(h))  # (B, 224)
        return self.fc(h)


class CharLSTM(nn.Module):
    """One-layer LSTM for character-level Penn Treebank (docs/physics.md §11).

    - ``embedding``: ``nn.Embedding(vocab_size, embedding_dim)`` holding fixed random orthonormal rows
      (:func:`orthogonal_embedding`), frozen (``requires_grad=False``) and off-chip.
    - ``lstm``: ``nn.LSTM(embedding_dim, hidden_size, batch_first=True)``, on chip as an input matrix
      128 × 2016 and a hidden matrix 504 × 2016 (4 gates × 504). PyTorch stores two bias vectors, ``bias_ih_l0`` and
      ``bias_hh_l0``; the chip holds one bias per gate row, their sum (2,016 values).
    - ``fc``: ``nn.Linear(hidden_size, vocab_size)``, on chip as 504 × 50 plus 50 biases.

    On-chip: 1,299,312 weights + 2,066 biases. Dropout (0.25 in training, as in the chip paper) is left to the training
    loop.

    Args:
        vocab_size: characters in the vocabulary (≤ ``embedding_dim``, so the embedding rows can be orthonormal).
        embedding_dim: length of the orthogonal embedding vectors.
        hidden_size: LSTM hidden size H (the gate matrices have 4·H columns).
        seed: fixes the embedding and PyTorch's default initialisation (global random state untouched).

    Shapes:
        tokens (B, T) int64 → logits (B, T, vocab_size); state ``(h, c)`` each (1, B, hidden_size).
    """

    #: Submodules that run in software (the embedding is off-chip, docs/physics.md §11).
    offchip_modules: tuple[str, ...] = ("embedding",)

    def __init__(self, vocab_size: int = 50, embedding_dim: int = 128, hidden_size: int = 504, seed: int = 0) -> None:
        super().__init__()
        vocab_size = _check_positive_int(vocab_size, "vocab_size")
        embedding_dim = _check_positive_int(embedding_dim, "embedding_dim")
        hidden_size = _check_positive_int(hidden_size, "hidden_size")
        seed = _check_seed(seed)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_size = hidden_size
        table = orthogonal_embedding(vocab_size, embedding_dim, seed)
        with _seeded_init(seed):
            self.embedding = nn.Embedding(vocab_size, embedding_dim)
            self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=1, bias=True, batch_first=True)
            self.fc = nn.Linear(hidden_size, vocab_size, bias=True)
        with torch.no_grad():
            self.embedding.weight.copy_(table)
        self.embedding.weight.requires_grad_(False)

    def forward_with_state(
        self, tokens: torch.Tensor, state: LSTMState | None = None
    ) -> tuple[torch.Tensor, LSTMState]:
        """Logits (B, T, vocab_size) and the final state ``(h, c)``, each (1, B, hidden_size).

        ``state`` is the initial ``(h, c)`` (zeros when ``None``), e.g. the final state of the previous chunk of a
        long sequence.
        """
        x = self.embedding(tokens)  # (B, T, embedding_dim)
        out, new_state = self.lstm(x, state)  # (B, T, hidden_size)
        return self.fc(out), new_state

    def forward(self, tokens: torch.Tensor, state: LSTMState | None = None) -> torch.Tensor:
        """Logits (B, T, vocab_size) of the next character after each of ``tokens`` (B, T)."""
        return self.forward_with_state(tokens, state)[0]


class CaptionLSTM(nn.Module):
    """One-layer LSTM image captioner on InceptionV3 features, Flickr8k (docs/physics.md §11).

    - ``project`` + ``project_bn``: ``Linear(feature_dim, embedding_dim)`` and ``BatchNorm1d(embedding_dim)`` mapping
      an image feature to the LSTM's first input; they run in software (off-chip).
    - ``embedding``: ``nn.Embedding(vocab_size, embedding_dim)`` word embedding, software (off-chip).
    - ``lstm``: ``nn.LSTM(embedding_dim, hidden_size, batch_first=True)``, on chip as input and hidden matrices
      504 × 2016 each (PyTorch's two bias vectors are one summed bias on chip).
    - ``fc``: ``nn.Linear(hidden_size, vocab_size)``, on chip as 504 × 4064.

    On-chip: 4,080,384 weights (all 64 cores, docs/physics.md §11).

    Teacher forcing (:meth:`forward`): the input sequence is the projected image feature followed by the embedded
    caption tokens; output ``t`` predicts caption token ``t`` and the last output predicts the token after the caption.

    Args:
        vocab_size: words in the vocabulary (cut to 4,064 in the paper).
        feature_dim: length of an image feature (InceptionV3 pool features: 2048).
        hidden_size: LSTM hidden size H.
        embedding_dim: length of the projected image feature and of the word embeddings (LSTM input size).
        seed: fixes PyTorch's default initialisation (global random state untouched).

    Shapes:
        features (B, feature_dim), captions (B, T) int64 → logits (B, T + 1, vocab_size).
    """

    #: Submodules that run in software (InceptionV3 features, then the 504-wide projection and batch norm,
    #: docs/physics.md §11).
    offchip_modules: tuple[str, ...] = ("project", "project_bn", "embedding")

    def __init__(
        self,
        vocab_size: int = 4064,
        feature_dim: int = 2048,
        hidden_size: int = 504,
        embedding_dim: int = 504,
        seed: int = 0,
    ) -> None:
        super().__init__()
        vocab_size = _check_positive_int(vocab_size, "vocab_size")
        feature_dim = _check_positive_int(feature_dim, "feature_dim")
        hidden_size = _check_positive_int(hidden_size, "hidden_size")
        embedding_dim = _check_positive_int(embedding_dim, "embedding_dim")
        seed = _check_seed(seed)
        self.vocab_size = vocab_size
        self.feature_dim = feature_dim
        self.hidden_size = hidden_size
        self.embedding_dim = embedding_dim
        with _seeded_init(seed):
            self.project = nn.Linear(feature_dim, embedding_dim)  # off-chip (software)
            self.project_bn = nn.BatchNorm1d(embedding_dim)  # off-chip (software)
            self.embedding = nn.Embedding(vocab_size, embedding_dim)  # off-chip (software)
            self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=1, bias=True, batch_first=True)
            self.fc = nn.Linear(hidden_size, vocab_size, bias=True)

    def image_input(self, features: torch.Tensor) -> torch.Tensor:
        """The LSTM's first input (B, 1, embedding_dim) from image features (B, feature_dim) (software)."""
        return self.project_bn(self.project(features)).unsqueeze(1)

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T + 1, vocab_size) for image ``features`` (B, feature_dim), ``captions`` (B, T)."""
        x = torch.cat([self.image_input(features), self.embedding(captions)], dim=1)  # (B, T + 1, embedding_dim)
        out = self.lstm(x)[0]  # (B, T + 1, hidden_size)
        return self.fc(out)

    @torch.no_grad()
    def greedy_decode(
        self,
        features: torch.Tensor,
        max_len: int = 24,
        bos_id: int | None = None,
        eos_id: int | None = None,
    ) -> torch.Tensor:
        """Greedy captions (B, max_len) int64 for image ``features`` (B, feature_dim) (at most 24 steps in the chip
        paper).

        Step 0 feeds the projected image feature. With ``bos_id`` the image step only primes the state and the
        first word is predicted from the ``bos_id`` embedding (captions trained as ``[bos, w1, …, eos]``); without
        it the image step's output is the first word. Each later step feeds back the previous argmax. ``bos_id`` is
        not part of the result. Once a caption emits ``eos_id`` (kept in the result), its remaining positions are
        filled with ``eos_id``; decoding stops early when every caption has ended. Call ``eval()`` first so that
        ``project_bn`` uses its running statistics.
        """
        max_len = _check_positive_int(max_len, "max_len")
        for name, tok in (("bos_id", bos_id), ("eos_id", eos_id)):
            if tok is not None:
                check_number(tok, name, low=0, high=self.vocab_size - 1, integer=True)
        batch = features.shape[0]
        out = torch.full((batch, max_len), -1 if eos_id is None else eos_id, dtype=torch.long, device=features.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=features.device)
        h, state = self.lstm(self.image_input(features))
        if bos_id is not None:
            bos = torch.full((batch, 1), bos_id, dtype=torch.long, device=features.device)
            h, state = self.lstm(self.embedding(bos), state)
        for step in range(max_len):
            token = self.fc(h[:, -1]).argmax(dim=-1)  # (B,)
            if eos_id is not None:
                token = torch.where(finished, torch.full_like(token, eos_id), token)
                finished = finished | (token == eos_id)
            out[:, step] = token
            if eos_id is not None and bool(finished.all()):
                break
            if step + 1 < max_len:
                h, state = self.lstm(self.embedding(token.unsqueeze(1)), state)
        return out


def _onchip_modules(model: nn.Module) -> Iterator[nn.Module]:
    offchip = tuple(getattr(model, "offchip_modules", ()))
    for name, module in model.named_modules():
        if any(name == o or name.startswith(o + ".") for o in offchip):
            continue
        if isinstance(module, nn.Conv2d | nn.Linear | nn.LSTM):
            yield module


def onchip_weight_count(model: nn.Module) -> int:
    """Number of weights the chip's crossbars hold for ``model``.

    Counts the weight matrices of every ``Conv2d``, ``Linear`` and ``LSTM`` (``weight_ih_l*`` and ``weight_hh_l*``)
    that is not listed in the model's ``offchip_modules``; embeddings, BatchNorm and biases are not counted.
    resnet9 → 1,866,536; char_lstm → 1,299,312; caption_lstm → 4,080,384 (docs/physics.md §11).
    """
    total = 0
    for module in _onchip_modules(model):
        if isinstance(module, nn.LSTM):
            total += sum(p.numel() for n, p in module.named_parameters() if n.startswith("weight_"))
        else:
            total += module.weight.numel()
    return total


def onchip_bias_count(model: nn.Module) -> int:
    """Number of biases the chip's digital units hold for ``model`` (on-chip ``Conv2d``/``Linear``/``LSTM`` only).

    An LSTM layer counts one bias per gate row (4·H): PyTorch's ``bias_ih`` and ``bias_hh`` are summed on chip.
    resnet9 → 10; char_lstm → 2,066 (docs/physics.md §11); caption_lstm → 6,080.
    """
    total = 0
    for module in _onchip_modules(model):
        if isinstance(module, nn.LSTM):
            if module.bias:
                total += module.num_layers * 4 * module.hidden_size * (2 if module.bidirectional else 1)
        elif module.bias is not None:
            total += module.bias.numel()
    return total


def resnet9(num_classes: int = 10, seed: int = 0) -> ResNet9:
    """ResNet-9 for CIFAR-10 (docs/physics.md §11); see :class:`ResNet9`."""
    return ResNet9(num_classes=num_classes, seed=seed)


def char_lstm(vocab_size: int = 50, embedding_dim: int = 128, hidden_size: int = 504, seed: int = 0) -> CharLSTM:
    """Character-level PTB LSTM (docs/physics.md §11); see :class:`CharLSTM`."""
    return CharLSTM(vocab_size=vocab_size, embedding_dim=embedding_dim, hidden_size=hidden_size, seed=seed)


def caption_lstm(
    vocab_size: int = 4064,
    feature_dim: int = 2048,
    hidden_size: int = 504,
    embedding_dim: int = 504,
    seed: int = 0,
) -> CaptionLSTM:
    """Flickr8k image-captioning LSTM (docs/physics.md §11); see :class:`CaptionLSTM`."""
    return CaptionLSTM(
        vocab_size=vocab_size, feature_dim=feature_dim, hidden_size=hidden_size, embedding_dim=embedding_dim, seed=seed
    )
