"""``--model`` strings to models ready for the CLI, with their preprocessing and class names.

``timm:``, ``torchvision:`` and ``FILE.py:`` models come from the library loader
:func:`lrpfx.data.models.load` (safe weights, key remapping, the model's own preprocessing and
class names); ``hf:`` folders and the ``digits`` CNN are the CLI's own. The flags ``--input-size``,
``--mean``, ``--std`` and ``--labels`` then override what the model says, and a ``FILE.py`` that
says nothing about its inputs must be told with them: nothing is guessed silently.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from lrpfx.apps.cli.errors import CLIError, first_line
from lrpfx.apps.cli.options import MODEL_SPECS, image_size
from lrpfx.apps.preprocess import (
    default_preprocessor,
    digits_preprocessor,
    hf_preprocessor,
    timm_preprocessor,
)
from lrpfx.data.models import LoadedModel

__all__ = ["LoadedModel", "load_model", "read_labels"]


def _kind(spec: str) -> str:
    if spec == "digits":
        return "digits"
    for kind in ("timm", "torchvision", "hf"):
        if spec.startswith(kind + ":") and len(spec) > len(kind) + 1:
            return kind
    path, sep, factory = spec.rpartition(":")
    if sep and path.endswith(".py") and factory:
        return "file"
    raise CLIError(f"unknown model {spec!r}: use {MODEL_SPECS}")


def _load_weights(model: nn.Module, path: str | os.PathLike) -> list[str]:
    from lrpfx.data.models import ModelLoadError, load_state_dict

    try:
        return load_state_dict(model, path)
    except ModelLoadError as e:
        raise CLIError(first_line(e)) from e


def read_labels(path: str | os.PathLike) -> list[str]:
    """``--labels FILE``: class names, one a line."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"--labels {p}: cannot read it ({first_line(e)})") from e
    if not lines[0].strip():
        raise CLIError(f"--labels {p}: no class names (one a line)")
    return [line.strip() for line in lines]


def _load_library(spec: str, weights: str | None, num_classes: int | None) -> LoadedModel:
    from lrpfx.data.models import ModelLoadError, load

    with warnings.catch_warnings():
        # said again below, as a note or as an error: not twice
        warnings.filterwarnings("ignore", message=".*defines no preprocessor", category=UserWarning)
        try:
            lm = load(spec, weights=weights, num_classes=num_classes)
        except ModelLoadError as e:
            raise CLIError(first_line(e)) from e
        except Exception as e:  # noqa: BLE001 - only a FILE.py's own code gets here
            if _kind(spec) != "file":
                raise
            factory = spec.rpartition(":")[2]
            raise CLIError(f"--model {spec}: {factory}() raised {type(e).__name__}: "
                           f"{first_line(e)}") from e
    notes = [n for n in lm.notes if not n.startswith("no weights")]
    return replace(lm, spec=spec, notes=notes)


def _hf_labels(config: Any) -> list[str] | None:
    id2label = getattr(config, "id2label", None) or {}
    n = len(id2label)
    return [str(id2label.get(i, id2label.get(str(i), i))) for i in range(n)] if n else None


def _load_hf(path: str, task: str, weights: str | None) -> LoadedModel:
    import transformers as tf

    try:
        config = tf.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise CLIError(f"hf:{path}: no Hugging Face model there ({first_line(e)}); give a "
                       "local folder written by save_pretrained") from e
    archs = " ".join(config.architectures or [])
    if task == "auto":
        if "ImageClassification" in archs or hasattr(config, "image_size"):
            task = "image"
        elif "SequenceClassification" in archs:
            task = "text"
        else:
            task = "encoder"
    auto = {"image": tf.AutoModelForImageClassification,
            "text": tf.AutoModelForSequenceClassification, "encoder": tf.AutoModel}[task]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = auto.from_pretrained(path)
    except (OSError, ValueError, KeyError) as e:
        raise CLIError(f"hf:{path}: cannot load it as {auto.__name__} ({first_line(e)})") from e
    loaded = LoadedModel(model.eval(), None, _hf_labels(config), f"hf:{path}")
    if task == "image":
        loaded.keyword = "pixel_values"
        try:
            loaded.preprocessor = hf_preprocessor(path)
        except (OSError, ValueError) as e:
            size = int(getattr(config, "image_size", 224))
            loaded.preprocessor = default_preprocessor(size, resize=size)
            loaded.notes.append(f"no image processor in {path} ({first_line(e)}); "
                                "resize and ImageNet normalisation")
    else:
        try:
            loaded.tokenizer = tf.AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            if task != "encoder":
                raise CLIError(f"hf:{path}: no tokenizer there ({first_line(e)})") from e
    if task in ("image", "text") and ("ForImageClassification" not in archs
                                      and "ForSequenceClassification" not in archs):
        loaded.random_init = True
        loaded.notes.append("the checkpoint has no classification head: its head is random "
                            "(for a sentence encoder use --similar-to)")
    if weights:
        loaded.notes += _load_weights(model, weights)
    return loaded


def _load_digits(weights: str | None) -> LoadedModel:
    from lrpfx.data.digits import (
        DEFAULT_SIZE,
        NUM_CLASSES,
        cache_path,
        digits_vgg,
        train_digits_model,
    )

    model = digits_vgg()
    if weights:
        _load_weights(model, weights)
        notes = [f"weights {weights}"]
    else:
        cached = cache_path("vgg")
        try:
            # the cached model loads without the data set (no scikit-learn, no accuracy run)
            _load_weights(model, cached)
            notes = [f"digits CNN from {cached}"]
        except CLIError:  # not trained yet (or a stale file): train_digits_model handles it
            model, _, acc = train_digits_model("vgg", progress=False)
            notes = [f"trained the digits CNN (test accuracy {acc:.4f}), cached in {cached}"]
    return LoadedModel(model.eval(), digits_preprocessor(DEFAULT_SIZE),
                       [str(i) for i in range(NUM_CLASSES)], "digits", notes=notes)


def _named_weights(weights: str | None) -> bool:
    return bool(weights) and not Path(str(weights)).is_file()


def _override_preprocessing(loaded: LoadedModel, kind: str, weights: str | None,
                            input_size: Sequence[int] | None, mean: Sequence[float] | None,
                            std: Sequence[float] | None, normalise: bool) -> None:
    """Apply ``--input-size``/``--mean``/``--std`` (those given) to ``loaded.preprocessor``."""
    prep = loaded.preprocessor
    if prep is None or (input_size is None and not normalise):
        return
    if kind in ("digits", "hf") or (kind == "torchvision" and _named_weights(weights)):
        loaded.notes.append(f"--input-size/--mean/--std ignored: {prep.source} sets them")
        return
    size = image_size(tuple(input_size) if input_size is not None else None, prep.input_size)
    if kind == "timm" and size[1:] != tuple(prep.input_size[1:]) and \
            callable(getattr(loaded.model, "set_input_size", None)):
        # transformers: position embeddings are built for one size; timm resamples them (the
        # loaded ones: this model is ours, built by the loader, never the user's instance)
        loaded.model.set_input_size(img_size=size[1:])
        loaded.notes.append(f"position embeddings resampled to {size[1]}×{size[2]}")
    if kind == "timm":  # without --mean/--std, timm's config keeps its own normalisation
        loaded.preprocessor = timm_preprocessor(loaded.model, size, *((mean, std) if normalise
                                                                      else (None, None)))
    else:
        if not normalise:
            mean, std = prep.mean, prep.std
        loaded.preprocessor = default_preprocessor(size[1:], mean=mean, std=std,
                                                   channels=size[0])
    loaded.notes = [n for n in loaded.notes if not n.startswith("preprocessing")]
    loaded.notes.append(f"preprocessing: {loaded.preprocessor.source} (from the flags)")


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    num_classes: int | None = None,
    task: str = "image",
    input_size: Sequence[int] | None = None,
    labels: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalise: bool = False,
) -> LoadedModel:
    """Load a model from a ``--model`` string.

    Parameters
    ----------
    spec
        ``timm:NAME``, ``torchvision:NAME`` or ``FILE.py:FACTORY`` (built by
        :func:`lrpfx.data.models.load`: random init unless ``weights``; a file may define
        ``preprocessor()`` and ``CLASS_NAMES``), ``hf:PATH`` (a local Hugging Face folder) or
        ``digits`` (the digits CNN of :mod:`lrpfx.data.digits`, trained on first use, cached).
    weights
        A state-dict file (read with ``weights_only=True``; keys matched by name, else by order
        when every shape matches); for torchvision also a weights name (``IMAGENET1K_V1``),
        hash-checked in torch's hub cache or downloaded.
    num_classes
        Output classes for timm/torchvision/file models (when the weights are fine-tuned).
    task
        For ``hf:`` models: ``"image"``, ``"text"`` (sequence classification), ``"encoder"``
        (no head) or ``"auto"`` (from the config).
    input_size
        ``(C, H, W)``, ``(H, W)`` or ``(side,)`` to prepare images at instead of the model's
        own size (the channels then stay the model's).
    labels
        A file of class names, one a line (overrides the model's).
    mean, std, normalise
        With ``normalise=True``: the normalisation to use instead of the model's (None, None
        for none).

    Raises
    ------
    CLIError
        Unknown model, unloadable or unfitting weights, a factory that fails, a ``FILE.py``
        that says nothing about its inputs and no flags that do.
    """
    kind = _kind(spec)
    if kind == "digits":
        loaded = _load_digits(weights)
    elif kind == "hf":
        loaded = _load_hf(spec[3:], task, weights)
    else:
        loaded = _load_library(spec, weights, num_classes)
        guessed = any("defines no preprocessor()" in n for n in loaded.notes)
        if guessed:
            loaded.notes = [n for n in loaded.notes if "defines no preprocessor()" not in n]
            if input_size is None:
                path = spec.rpartition(":")[0]
                raise CLIError(f"--model {spec}: {Path(path).name} does not say how images are "
                               "prepared for its model: give --input-size C,H,W (and --mean/"
                               "--std unless ImageNet-normalised RGB), or define preprocessor() "
                               "in it returning an lrpfx.apps.preprocess.ImagePreprocessor")
    _override_preprocessing(loaded, kind, weights, input_size, mean, std, normalise)
    if labels is not None:
        loaded.labels = read_labels(labels)
    elif loaded.labels is None and loaded.preprocessor is not None and kind == "file":
        loaded.notes.append("no class names: classes are shown by index (give --labels FILE, "
                            "one name a line, or define CLASS_NAMES in the file)")
    return loaded
