"""scikit-learn's handwritten digits as a small, fast image-classification benchmark.

The 1,797 8×8 grey-scale digits (10 classes) from :func:`sklearn.datasets.load_digits` are
scaled to ``[0, 1]``, upsampled (bilinear, default 16×16), standardised and split into a
stratified train and test set. A small VGG-style CNN trains on them in seconds on a CPU and reaches
about 99 % test accuracy. Trained weights are cached, so later runs only load them.

>>> from lrpfx.data.digits import train_digits_cnn
>>> model, (x_test, y_test), accuracy = train_digits_cnn()   # doctest: +SKIP

Other architectures (ResNet- or ViT-style) plug into the same data and training loop: register a
factory in :data:`ARCHITECTURES` and call :func:`train_digits_model` with its name.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ARCHITECTURES", "DEFAULT_EPOCHS", "DEFAULT_SIZE", "DIGITS_MEAN", "DIGITS_STD", "DigitsSplits",
    "NUM_CLASSES", "accuracy", "cache_path", "default_cache_dir", "denormalise", "digits_vgg",
    "load_digits_tensors", "stroke_mask", "train_classifier", "train_digits_cnn",
    "train_digits_model",
]

NUM_CLASSES = 10
#: Default image side length: the 8×8 originals upsampled ×2 (fast to train, smooth maps).
DEFAULT_SIZE = 16
#: Default number of training epochs of :func:`train_digits_cnn`.
DEFAULT_EPOCHS = 6
#: Mean and standard deviation of the ``[0, 1]``-scaled 8×8 pixels over the whole data set; the
#: tensors returned by :func:`load_digits_tensors` are ``(pixel - DIGITS_MEAN) / DIGITS_STD``,
#: so the blank background is a negative (non-zero) value and carries relevance too.
DIGITS_MEAN = 0.3053
DIGITS_STD = 0.3760


class DigitsSplits(NamedTuple):
    """Train and test tensors: images ``(N, 1, size, size)`` float32, labels ``(N,)`` int64."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits_tensors(
    size: int = DEFAULT_SIZE, seed: int = 0, test_fraction: float = 0.2
) -> DigitsSplits:
    """Load scikit-learn's digits as normalised image tensors with a stratified split.

    Parameters
    ----------
    size
        Side length of the returned images; the 8×8 originals are upsampled bilinearly
        (``size=8`` keeps them as they are).
    seed
        Seed of the train/test split.
    test_fraction
        Fraction of the 1,797 images held out for testing.

    Returns
    -------
    DigitsSplits
        ``(x_train, y_train, x_test, y_test)``; images of shape ``(N, 1, size, size)``,
        standardised with :data:`DIGITS_MEAN` and :data:`DIGITS_STD`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(data.target.astype(np.int64))
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images - DIGITS_MEAN) / DIGITS_STD
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed,
        stratify=data.target)
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return DigitsSplits(images[idx_train].contiguous(), labels[idx_train],
                        images[idx_test].contiguous(), labels[idx_test])


def denormalise(x: Tensor) -> Tensor:
    """Undo the standardisation of :func:`load_digits_tensors`: ink intensity in ``[0, 1]``."""
    return x * DIGITS_STD + DIGITS_MEAN


def stroke_mask(x: Tensor, threshold: float = 0.25) -> Tensor:
    """Boolean mask of the digit's strokes: pixels whose ink intensity exceeds ``threshold``.

    Parameters
    ----------
    x
        Normalised images as returned by :func:`load_digits_tensors`.
    threshold
        Ink intensity in ``[0, 1]`` above which a pixel counts as stroke.

    Returns
    -------
    Tensor
        Bool tensor of the shape of ``x``.
    """
    return denormalise(x) > threshold


def digits_vgg(
    num_classes: int = NUM_CLASSES,
    width: int = 16,
    batch_norm: bool = True,
    dropout: float = 0.25,
) -> nn.Module:
    """A small VGG-style CNN for 1-channel images (any size divisible by 8).

    Three blocks of 3×3 convolutions (``width``, ``2·width`` and ``4·width`` channels; two
    convolutions in the first two blocks, one in the last), each convolution followed by optional
    batch norm and a ReLU, each block by 2×2 max pooling; then global average pooling and a
    two-layer linear head with dropout. Only standard layers, so :func:`lrpfx.compile` takes it
    as is.

    Parameters
    ----------
    num_classes
        Number of output logits.
    width
        Channels of the first block.
    batch_norm
        Put a ``BatchNorm2d`` after every convolution (trains in far fewer epochs).
    dropout
        Dropout probability in the head (inactive in eval mode).

    Returns
    -------
    nn.Module
        An ``nn.Sequential`` with a ``features`` and a ``classifier`` part.
    """

    def conv(cin: int, cout: int) -> list[nn.Module]:
        norm = [nn.BatchNorm2d(cout)] if batch_norm else []
        return [nn.Conv2d(cin, cout, 3, padding=1), *norm, nn.ReLU()]

    w1, w2, w3 = width, 2 * width, 4 * width
    features = nn.Sequential(
        *conv(1, w1), *conv(w1, w1), nn.MaxPool2d(2),
        *conv(w1, w2), *conv(w2, w2), nn.MaxPool2d(2),
        *conv(w2, w3), nn.MaxPool2d(2),
    )
    classifier = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(w3, w3), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(w3, num_classes),
    )
    return nn.Sequential(OrderedDict(features=features, classifier=classifier))


#: Model factories by name, each ``factory(num_classes) -> nn.Module`` for ``(B, 1, H, W)``
#: inputs. :func:`train_digits_model` trains any of them; add ResNet- or ViT-style ones here.
ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {"vgg": digits_vgg}


def default_cache_dir() -> Path:
    """Where trained weights are cached: ``$LRPFX_CACHE`` if set, else ``./.cache/lrpfx``."""
    env = os.environ.get("LRPFX_CACHE")
    return Path(env) if env else Path.cwd() / ".cache" / "lrpfx"


def cache_path(
    arch: str = "vgg",
    *,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    size: int = DEFAULT_SIZE,
) -> Path:
    """The file :func:`train_digits_model` caches these settings' weights in.

    Parameters
    ----------
    arch, seed, epochs, size
        As in :func:`train_digits_model`.
    cache_dir
        Cache directory; default :func:`default_cache_dir`.

    Returns
    -------
    pathlib.Path
        ``<cache_dir>/digits_<arch>_s<size>_seed<seed>_e<epochs>.pt`` (may not exist yet).
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"digits_{arch}_s{size}_seed{seed}_e{epochs}.pt"


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``(x, y)``."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / max(len(x), 1)


def train_classifier(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    *,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    max_shift: int = 1,
    progress: bool = True,
    num_threads: int | None = 1,
) -> nn.Module:
    """Train ``model`` in place with Adam, a one-cycle learning-rate schedule and random shifts.

    Parameters
    ----------
    model
        Classifier on the device of ``x_train``.
    x_train, y_train
        Training images ``(N, C, H, W)`` and labels ``(N,)``.
    epochs, batch_size, lr, weight_decay
        Optimisation settings.
    seed
        Seeds the batch order, the augmentation and dropout (the global RNG state is restored
        afterwards).
    max_shift
        Augmentation: each batch is translated by up to this many pixels (0 disables).
    progress
        Show a tqdm progress bar.
    num_threads
        CPU threads torch uses while training (restored afterwards); None keeps the current
        setting. One thread is the default: the tensors are tiny, one thread is fastest for them
        (many times faster than two on a busy machine) and makes CPU training reproducible
        bit for bit on any machine.

    Returns
    -------
    nn.Module
        The same ``model``, trained, in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x_train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    fill = float(x_train.amin())
    devices = [x_train.device] if x_train.device.type == "cuda" else []
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        try:
            _train_epochs(model, opt, sched, x_train, y_train, epochs=epochs,
                          batch_size=batch_size, gen=gen, max_shift=max_shift, fill=fill,
                          progress=progress)
        finally:
            torch.set_num_threads(threads)
    return model.eval()


def _train_epochs(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    x_train: Tensor,
    y_train: Tensor,
    *,
    epochs: int,
    batch_size: int,
    gen: torch.Generator,
    max_shift: int,
    fill: float,
    progress: bool,
) -> None:
    from tqdm.auto import tqdm

    model.train()
    bar = tqdm(range(epochs), desc="training digits model", unit="epoch",
               disable=not progress, leave=False)
    for _ in bar:
        order = torch.randperm(len(x_train), generator=gen).to(x_train.device)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if max_shift:
                dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=gen)
                xb = _shift(xb, int(dx), int(dy), fill)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        bar.set_postfix(loss=f"{total / len(order):.4f}")


def _shift(x: Tensor, dx: int, dy: int, fill: float) -> Tensor:
    """Translate images by ``(dx, dy)`` pixels, filling the uncovered border with ``fill``."""
    h, w = x.shape[-2:]
    out = torch.full_like(x, fill)
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def train_digits_model(
    arch: str = "vgg",
    *,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    size: int = DEFAULT_SIZE,
    device: str | torch.device = "cpu",
    retrain: bool = False,
    progress: bool = True,
) -> tuple[nn.Module, tuple[Tensor, Tensor], float]:
    """Train (or load from the cache) a digits classifier of architecture ``arch``.

    Parameters
    ----------
    arch
        A key of :data:`ARCHITECTURES`.
    cache_dir
        Directory of cached weights; default :func:`default_cache_dir`. The file name encodes
        ``arch``, ``size``, ``seed`` and ``epochs``.
    seed
        Seeds the data split, the initialisation and the training.
    epochs
        Training epochs.
    size
        Image side length (see :func:`load_digits_tensors`).
    device
        Where the model is trained and returned.
    retrain
        Ignore (and overwrite) a cached file.
    progress
        Show a progress bar while training.

    Returns
    -------
    model : nn.Module
        The trained model, in eval mode, on ``device``.
    (x_test, y_test) : tuple of Tensor
        The held-out test split, on ``device``.
    test_accuracy : float
        Top-1 accuracy on the test split.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    device = torch.device(device)
    splits = load_digits_tensors(size=size, seed=seed)
    x_train, y_train, x_test, y_test = (t.to(device) for t in splits)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHITECTURES[arch](NUM_CLASSES)
    model.to(device)
    meta = {"arch": arch, "size": size, "seed": seed, "epochs": epochs, "format": 1}
    path = cache_path(arch, cache_dir=cache_dir, seed=seed, epochs=epochs, size=size)
    loaded = False
    if path.is_file() and not retrain:
        try:
            blob = torch.load(path, map_location=device, weights_only=True)
            if blob.get("meta") != meta:
                raise ValueError(f"metadata {blob.get('meta')} differs from {meta}")
            model.load_state_dict(blob["state_dict"])
            loaded = True
        except Exception as e:  # a stale or corrupt cache is retrained, never fatal
            warnings.warn(f"ignoring cached weights {path}: {e}", stacklevel=2)
    if not loaded:
        start = time.perf_counter()
        train_classifier(model, x_train, y_train, epochs=epochs, seed=seed, progress=progress)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"meta": meta, "state_dict": model.state_dict(),
                        "train_seconds": time.perf_counter() - start}, tmp)
            os.replace(tmp, path)
        except OSError as e:
            warnings.warn(f"could not cache weights at {path}: {e}", stacklevel=2)
    model.eval()
    return model, (x_test, y_test), accuracy(model, x_test, y_test)


def train_digits_cnn(
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    device: str | torch.device = "cpu",
    *,
    size: int = DEFAULT_SIZE,
    retrain: bool = False,
    progress: bool = True,
) -> tuple[nn.Module, tuple[Tensor, Tensor], float]:
    """Train (or load from the cache) the small VGG-style digits CNN, :func:`digits_vgg`.

    ``train_digits_model("vgg", ...)``: see :func:`train_digits_model` for the parameters and
    the returned ``(model, (x_test, y_test), test_accuracy)`` (about 0.99 with the defaults).
    """
    return train_digits_model("vgg", cache_dir=cache_dir, seed=seed, epochs=epochs, size=size,
                              device=device, retrain=retrain, progress=progress)
