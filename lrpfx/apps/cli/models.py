"""``--model`` strings to models ready for the CLI, with their preprocessing and class names."""

from __future__ import annotations

import importlib.util
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lrpfx.apps.cli.errors import CLIError, first_line
from lrpfx.apps.cli.options import MODEL_SPECS
from lrpfx.apps.cli.weights import fit_state_dict, read_state_dict, torchvision_state_dict
from lrpfx.apps.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocessor,
    default_preprocessor,
    digits_preprocessor,
    hf_preprocessor,
    timm_preprocessor,
    torchvision_preprocessor,
    torchvision_weights,
)

__all__ = ["LoadedModel", "load_model", "read_labels"]


@dataclass
class LoadedModel:
    """A model ready for the CLI, with what is needed to feed it and name its classes.

    Attributes
    ----------
    model
        The ``nn.Module``, in eval mode.
    spec
        The ``--model`` string it was loaded from.
    preprocessor
        How images are prepared for it (None for text models).
    labels
        Class names by index, when the model or its weights define them.
    keyword
        Name of the input argument for models called with keywords (``"pixel_values"`` for
        Hugging Face image models), None for ``model(x)``.
    tokenizer
        The Hugging Face tokenizer of text models.
    random_init
        True when no trained weights were loaded (predictions are meaningless).
    notes
        Remarks to show the user (where weights and preprocessing came from).
    """

    model: nn.Module
    spec: str
    preprocessor: ImagePreprocessor | None = None
    labels: list[str] | None = None
    keyword: str | None = None
    tokenizer: Any = None
    random_init: bool = False
    notes: list[str] = field(default_factory=list)


def _split_spec(spec: str) -> tuple[str, str]:
    if spec == "digits":
        return "digits", ""
    for kind in ("timm", "torchvision", "hf"):
        if spec.startswith(kind + ":") and len(spec) > len(kind) + 1:
            return kind, spec[len(kind) + 1:]
    path, sep, factory = spec.rpartition(":")
    if sep and path.endswith(".py") and factory:
        return "file", spec
    raise CLIError(f"unknown model {spec!r}: use {MODEL_SPECS}")


def _load_weights(model: nn.Module, path: str) -> None:
    fit_state_dict(model, read_state_dict(path), f"--weights {path}")


def read_labels(path: str | Path) -> list[str]:
    """``--labels FILE``: class names, one a line (blank lines ignored at the end only)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"--labels {p}: cannot read it ({first_line(e)})") from e
    if not lines or not lines[0].strip():
        raise CLIError(f"--labels {p}: no class names (one a line)")
    return [line.strip() for line in lines]


def imagenet_labels(num_classes: int) -> list[str] | None:
    """The ImageNet-1k class names when a model has 1000 outputs."""
    if num_classes != 1000:
        return None
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i).split(",")[0] for i in range(1000)]
    except Exception:  # noqa: BLE001 - labels are a nicety; without timm there are none
        return None


def _load_timm(name: str, weights: str | None, num_classes: int | None,
               input_size: Sequence[int] | None) -> LoadedModel:
    import timm

    kwargs: dict[str, Any] = {"num_classes": num_classes} if num_classes is not None else {}
    try:
        try:
            # transformers built for another image size (their position embeddings depend on
            # it); convolutional models do not take img_size and are built as they are
            size = {"img_size": tuple(input_size[1:])} if input_size is not None else {}
            model = timm.create_model(name, pretrained=False, **kwargs, **size)
        except TypeError:
            model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as e:
        raise CLIError(f"timm has no model {name!r} ({first_line(e)}); "
                       "see timm.list_models()") from e
    if weights:
        _load_weights(model, weights)
    loaded = LoadedModel(model.eval(), f"timm:{name}", timm_preprocessor(model),
                         random_init=not weights)
    loaded.labels = imagenet_labels(model.num_classes)
    return loaded


def _looks_like_enum(weights: str) -> bool:
    return bool(re.fullmatch(r"([A-Za-z0-9]+_Weights\.)?[A-Z0-9_]+", weights))


def _load_torchvision(name: str, weights: str | None, num_classes: int | None) -> LoadedModel:
    from torchvision.models import get_model, get_model_weights

    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    try:
        model = get_model(name, weights=None, **kwargs)
    except (ValueError, KeyError) as e:
        raise CLIError(f"torchvision has no model {name!r} ({first_line(e)}); "
                       "see torchvision.models.list_models()") from e
    loaded = LoadedModel(model.eval(), f"torchvision:{name}", default_preprocessor(),
                         random_init=not weights)
    if weights and not Path(weights).is_file() and _looks_like_enum(weights):
        try:
            enum = torchvision_weights(name, weights)
        except ValueError as e:
            raise CLIError(str(e)) from e
        loaded.preprocessor = torchvision_preprocessor(enum)
        loaded.labels = list(enum.meta.get("categories") or []) or None
        fit_state_dict(model, torchvision_state_dict(enum), f"--weights {weights}")
        loaded.notes.append(f"weights {type(enum).__name__}.{enum.name}")
    elif weights:
        _load_weights(model, weights)
    if loaded.labels is None and (num_classes or 1000) == 1000:
        try:  # the category names ship with torchvision, the weights need not be downloaded
            loaded.labels = list(get_model_weights(name).DEFAULT.meta["categories"])
        except (ValueError, KeyError, AttributeError):
            loaded.labels = None
    return loaded


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
    loaded = LoadedModel(model.eval(), f"hf:{path}", labels=_hf_labels(config))
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
        _load_weights(model, weights)
    return loaded


def _load_file(spec: str, weights: str | None, num_classes: int | None) -> LoadedModel:
    path, _, factory = spec.rpartition(":")
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--model {spec}: no such file {p}")
    mod_name = f"lrpfx_user_model_{re.sub(r'[^0-9A-Za-z_]', '_', p.stem)}"
    module_spec = importlib.util.spec_from_file_location(mod_name, p)
    if module_spec is None or module_spec.loader is None:
        raise CLIError(f"--model {spec}: {p} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file: say where it failed, briefly
        raise CLIError(f"--model {spec}: importing {p} failed ({type(e).__name__}: "
                       f"{first_line(e)})") from e
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise CLIError(f"--model {spec}: {p} defines no callable {factory!r}")
    try:
        model = fn(**({"num_classes": num_classes} if num_classes is not None else {}))
    except Exception as e:  # noqa: BLE001 - the user's factory: one line, not its traceback
        raise CLIError(f"--model {spec}: {factory}() raised {type(e).__name__}: "
                       f"{first_line(e)}") from e
    if not isinstance(model, nn.Module):
        raise CLIError(f"--model {spec}: {factory}() returned {type(model).__name__}, "
                       "not a torch.nn.Module")
    if weights:
        _load_weights(model, weights)
    return LoadedModel(model.eval(), spec, None, random_init=False)


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
            fit_state_dict(model, read_state_dict(cached), str(cached))
            notes = [f"digits CNN from {cached}"]
        except CLIError:  # not trained yet (or a stale file): train_digits_model handles it
            model, _, acc = train_digits_model("vgg", progress=False)
            notes = [f"trained the digits CNN (test accuracy {acc:.4f}), cached in {cached}"]
    return LoadedModel(model.eval(), "digits", digits_preprocessor(DEFAULT_SIZE),
                       labels=[str(i) for i in range(NUM_CLASSES)], notes=notes)


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    num_classes: int | None = None,
    task: str = "image",
    input_size: Sequence[int] | None = None,
    labels: str | None = None,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> LoadedModel:
    """Load a model from a ``--model`` string.

    Parameters
    ----------
    spec
        ``timm:NAME`` (random init), ``torchvision:NAME`` (random init), ``hf:PATH`` (a local
        Hugging Face folder), ``FILE.py:FACTORY`` (``FACTORY()`` returns the module) or
        ``digits`` (the digits CNN of :mod:`lrpfx.data.digits`, trained on first use and cached).
    weights
        A state-dict file (read with ``weights_only=True``); for torchvision also the name of
        its weights (``IMAGENET1K_V1``), whose preprocessing and class names are used (taken
        from torch's hub cache after a hash check, or downloaded).
    num_classes
        Output classes for timm/torchvision/file models (when the weights are fine-tuned).
    task
        For ``hf:`` models: ``"image"``, ``"text"`` (sequence classification), ``"encoder"``
        (no head) or ``"auto"`` (from the config).
    input_size
        ``(C, H, W)`` to prepare images at, instead of the model's own size (timm, file and
        torchvision models without named weights). Required for ``FILE.py`` models.
    labels
        A file of class names, one a line (overrides the model's).
    mean, std
        Normalisation of ``FILE.py`` models (ImageNet's by default; None for none).

    Raises
    ------
    CLIError
        Unknown model, unloadable or unfitting weights, a factory that fails.
    """
    kind, name = _split_spec(spec)
    if kind == "timm":
        loaded = _load_timm(name, weights, num_classes, input_size)
    elif kind == "torchvision":
        loaded = _load_torchvision(name, weights, num_classes)
    elif kind == "hf":
        loaded = _load_hf(name, task, weights)
    elif kind == "file":
        loaded = _load_file(name, weights, num_classes)
    else:
        loaded = _load_digits(weights)
    if kind == "file" and task != "text":
        # a file says nothing about how its model was trained: the size is required and the
        # normalisation is said out loud, never guessed silently
        if input_size is None:
            raise CLIError(f"--model {spec}: a FILE.py model needs --input-size C,H,W (and "
                           "--mean/--std unless it was trained on ImageNet-normalised RGB)")
        c, h, w = input_size
        m = tuple(mean)[:c] if mean is not None and len(mean) >= c else mean
        s = tuple(std)[:c] if std is not None and len(std) >= c else std
        loaded.preprocessor = default_preprocessor((h, w), mean=m, std=s, channels=c)
        loaded.notes.append(f"{name}: {loaded.preprocessor.source}, mean {m}, std {s} "
                            "(set --mean/--std if the model was trained otherwise)")
    elif input_size is not None and loaded.preprocessor is not None:
        c, h, w = input_size
        if kind == "timm":
            loaded.preprocessor = timm_preprocessor(loaded.model, (c, h, w))
        elif loaded.preprocessor.source.startswith("default"):
            loaded.preprocessor = default_preprocessor((h, w), channels=c)
        else:
            loaded.notes.append(f"--input-size ignored: {loaded.preprocessor.source} sets "
                                "the size")
    if labels is not None:
        loaded.labels = read_labels(labels)
    return loaded
