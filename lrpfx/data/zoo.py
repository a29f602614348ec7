"""A small model zoo: VGG-, ResNet- and ViT-style classifiers trained on scikit-learn's digits.

Each model trains in seconds on one CPU core with the data, training loop and weight cache of
:mod:`lrpfx.data.digits` (16×16 single-channel digits by default; weights cached under
:func:`lrpfx.data.digits.default_cache_dir`), deterministically for a given seed, and compiles with
:func:`lrpfx.compile` as it is.

=========  ==============================================================  ======  =========
name       architecture                                                    epochs  test acc.
=========  ==============================================================  ======  =========
``vgg``    :func:`lrpfx.data.digits.digits_vgg`: 5 conv + BN + ReLU, max pool    6       ≈ 0.99
``resnet`` :func:`digits_resnet`: stem + 3 basic residual blocks            6       ≈ 0.99
``vit``    :func:`digits_vit`: timm ``VisionTransformer``, 4×4 patches,     30      ≈ 0.96
           dim 48, 3 blocks, 4 heads, class token
=========  ==============================================================  ======  =========

(accuracies of seed 0 on the 360 held-out digits; ``vgg`` shares its cache file with the demo.)

>>> from lrpfx.data.zoo import load_model
>>> zm = load_model("resnet")                 # doctest: +SKIP
>>> zm.model, zm.x_test.shape, zm.accuracy    # doctest: +SKIP
(Sequential(...), torch.Size([360, 1, 16, 16]), 0.99...)

Importing this module registers ``resnet`` and ``vit`` in :data:`lrpfx.data.digits.ARCHITECTURES`
(the extension point :mod:`lrpfx.data.digits` documents), so ``train_digits_model("resnet")`` works
too once it is imported.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lrpfx.data.digits import (
    ARCHITECTURES,
    DEFAULT_EPOCHS,
    DEFAULT_SIZE,
    NUM_CLASSES,
    digits_vgg,
    train_digits_model,
)

__all__ = ["ZOO", "ZooModel", "ZooSpec", "digits_resnet", "digits_vit", "load_model", "load_zoo"]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv + BN, a (projected) shortcut, ReLU after the sum.

    Every ReLU is its own module (Captum's guided backprop only sees ``nn.ReLU`` modules, and a
    module called twice would get its hooks twice).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


def digits_resnet(num_classes: int = NUM_CLASSES, width: int = 16) -> nn.Module:
    """A small ResNet-style CNN for 1-channel images (any size divisible by 4).

    A 3×3 stem (``width`` channels, BN, ReLU), three :class:`BasicBlock` s (``width``,
    ``2·width`` and ``4·width`` channels; the last two with stride 2), global average pooling and
    a linear head.

    Parameters
    ----------
    num_classes
        Number of output logits.
    width
        Channels of the stem and the first block.

    Returns
    -------
    nn.Module
        An ``nn.Sequential`` with ``stem``, ``layer1``–``layer3``, ``pool`` and ``fc``.
    """
    w1, w2, w3 = width, 2 * width, 4 * width
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(1, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU()),
        layer1=BasicBlock(w1, w1),
        layer2=BasicBlock(w1, w2, stride=2),
        layer3=BasicBlock(w2, w3, stride=2),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc=nn.Linear(w3, num_classes),
    ))


def digits_vit(
    num_classes: int = NUM_CLASSES,
    *,
    size: int = DEFAULT_SIZE,
    patch: int = 4,
    dim: int = 48,
    depth: int = 3,
    heads: int = 4,
    mlp_ratio: float = 2.0,
) -> nn.Module:
    """A small ViT for 1-channel ``size×size`` images: timm's ``VisionTransformer``.

    Patch embedding (a ``patch×patch`` strided convolution), a class token, learned position
    embeddings, ``depth`` pre-norm blocks (multi-head self-attention and a GELU MLP) and a
    linear head on the class token; no dropout.

    Parameters
    ----------
    num_classes
        Number of output logits.
    size
        Image side length (the position embedding is built for it).
    patch, dim, depth, heads, mlp_ratio
        Patch side, embedding width, number of blocks, attention heads and MLP expansion.

    Returns
    -------
    nn.Module
        A ``timm.models.VisionTransformer``.
    """
    from timm.models import VisionTransformer

    return VisionTransformer(img_size=size, patch_size=patch, in_chans=1,
                             num_classes=num_classes, embed_dim=dim, depth=depth,
                             num_heads=heads, mlp_ratio=mlp_ratio)


@dataclass(frozen=True)
class ZooSpec:
    """One zoo entry: a factory ``factory(num_classes, size) -> nn.Module``, its training
    epochs, and the test accuracy it is expected to reach with seed 0 (tests check it)."""

    factory: Callable[[int, int], nn.Module]
    epochs: int
    min_accuracy: float
    description: str


#: The zoo's models by name.
ZOO: dict[str, ZooSpec] = {
    "vgg": ZooSpec(lambda c, s: digits_vgg(c), DEFAULT_EPOCHS, 0.95,
                   "VGG-style CNN, 5 conv + BN + ReLU, max pooling"),
    "resnet": ZooSpec(lambda c, s: digits_resnet(c), 6, 0.95,
                      "ResNet-style CNN, stem + 3 basic blocks"),
    "vit": ZooSpec(lambda c, s: digits_vit(c, size=s), 30, 0.9,
                   "timm ViT, 4x4 patches, dim 48, 3 blocks, 4 heads"),
}


class ZooModel(NamedTuple):
    """A trained zoo model with its held-out data."""

    name: str
    model: nn.Module
    x_test: Tensor
    y_test: Tensor
    accuracy: float


def _arch_key(name: str, size: int) -> str:
    """The :data:`lrpfx.data.digits.ARCHITECTURES` key of ``name`` at ``size``.

    That registry's factories take only the number of classes; the ViT's position embedding
    depends on the image size too, so a ViT at a non-default size gets its own key (which also
    names its cache file).
    """
    if name == "vgg":
        return "vgg"
    key = name if size == DEFAULT_SIZE or name != "vit" else f"{name}{size}"
    ARCHITECTURES.setdefault(key, partial(ZOO[name].factory, s=size))
    return key


def load_model(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    epochs: int | None = None,
    size: int = DEFAULT_SIZE,
    device: str | torch.device = "cpu",
    retrain: bool = False,
    progress: bool = True,
) -> ZooModel:
    """Train (or load from the cache) the zoo model ``name``.

    Parameters
    ----------
    name
        A key of :data:`ZOO`.
    cache_dir, seed, size, device, retrain, progress
        As in :func:`lrpfx.data.digits.train_digits_model` (the seed fixes the split, the
        initialisation and the training: same seed, same weights, bit for bit on a CPU).
    epochs
        Training epochs; None: the zoo's default for ``name``.

    Returns
    -------
    ZooModel
        ``(name, model, x_test, y_test, accuracy)``; the model is in eval mode.

    Raises
    ------
    ValueError
        Unknown name.
    """
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    model, (x_test, y_test), acc = train_digits_model(
        _arch_key(name, size), cache_dir=cache_dir, seed=seed,
        epochs=ZOO[name].epochs if epochs is None else epochs, size=size, device=device,
        retrain=retrain, progress=progress)
    return ZooModel(name, model, x_test, y_test, acc)


def load_zoo(names: list[str] | None = None, **options: object) -> dict[str, ZooModel]:
    """:func:`load_model` for each of ``names`` (default: the whole zoo), by name."""
    return {n: load_model(n, **options) for n in (names or list(ZOO))}


for _name in ("resnet", "vit"):
    _arch_key(_name, DEFAULT_SIZE)
