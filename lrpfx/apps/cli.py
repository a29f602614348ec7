"""The ``lrpfx`` command line: explain images and sentences, check a model's rule coverage.

Run ``lrpfx --help`` (or ``python -m lrpfx --help``) for the commands and examples. Everything a
command does is also a function here (:func:`load_model`, :func:`main`), so the CLI can be driven
from Python and tested in-process.

Exit codes: 0 success; 1 the model cannot be explained (an op without a rule, a capture failure);
2 a usage error (unknown model, unreadable image, bad target, ...), reported as one line on
stderr without a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import lrpfx
from lrpfx.apps.preprocess import (
    ImagePreprocessor,
    default_preprocessor,
    digits_preprocessor,
    find_images,
    hf_preprocessor,
    load_image,
    timm_preprocessor,
    torchvision_preprocessor,
    torchvision_weights,
)
from lrpfx.core.explainer import class_scores

__all__ = ["CLIError", "LoadedModel", "build_parser", "load_model", "main", "parse_target",
           "resolve_device"]

MODEL_SPECS = "timm:NAME, torchvision:NAME, hf:PATH, FILE.py:FACTORY or digits"


class CLIError(Exception):
    """A user error: the CLI prints it as one line and exits with code 2."""


# ----------------------------------------------------------------------------- models


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


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _load_state_dict(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a state-dict file (plain, or under a ``"state_dict"``/``"model"`` key) into
    ``model``; a ``module.`` prefix (DataParallel) is removed."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--weights {p}: no such file")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
        raise CLIError(f"--weights {p}: not a PyTorch state dict ({_first_line(e)})") from e
    for key in ("state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not isinstance(blob, dict):
        raise CLIError(f"--weights {p}: expected a state dict, found {type(blob).__name__}")
    blob = {k.removeprefix("module."): v for k, v in blob.items()}
    result = model.load_state_dict(blob, strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing {len(result.missing_keys)} key(s), e.g. "
                         f"{result.missing_keys[0]!r}")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected key(s), e.g. "
                         f"{result.unexpected_keys[0]!r}")
        raise CLIError(f"--weights {p} does not fit the model: {'; '.join(parts)}")


def _imagenet_labels(num_classes: int) -> list[str] | None:
    if num_classes != 1000:
        return None
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i).split(",")[0] for i in range(1000)]
    except Exception:  # noqa: BLE001 - labels are a nicety; without timm there are none
        return None


def _num_outputs(model: nn.Module) -> int | None:
    for attr in ("num_classes",):
        n = getattr(model, attr, None)
        if isinstance(n, int):
            return n
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


def _load_timm(name: str, weights: str | None, num_classes: int | None,
               input_size: Sequence[int] | None) -> LoadedModel:
    import timm

    kwargs: dict[str, Any] = {"num_classes": num_classes} if num_classes else {}
    try:
        try:
            # transformers built for another image size (their position embeddings depend on
            # it); convolutional models do not take img_size and are built as they are
            size = {"img_size": tuple(input_size[1:])} if input_size is not None else {}
            model = timm.create_model(name, pretrained=False, **kwargs, **size)
        except TypeError:
            model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as e:
        raise CLIError(f"timm has no model {name!r} ({_first_line(e)}); "
                       "see timm.list_models()") from e
    if weights:
        _load_state_dict(model, weights)
    loaded = LoadedModel(model.eval(), f"timm:{name}", timm_preprocessor(model),
                         random_init=not weights)
    loaded.labels = _imagenet_labels(model.num_classes)
    return loaded


def _looks_like_enum(weights: str) -> bool:
    return bool(re.fullmatch(r"([A-Za-z0-9]+_Weights\.)?[A-Z0-9_]+", weights))


def _load_torchvision(name: str, weights: str | None, num_classes: int | None) -> LoadedModel:
    from torchvision.models import get_model, get_model_weights

    kwargs = {"num_classes": num_classes} if num_classes else {}
    try:
        model = get_model(name, weights=None, **kwargs)
    except (ValueError, KeyError) as e:
        raise CLIError(f"torchvision has no model {name!r} ({_first_line(e)}); "
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
        try:
            state = enum.get_state_dict(progress=False)
        except Exception as e:  # noqa: BLE001 - offline, the download fails in many ways
            target = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
            raise CLIError(
                f"cannot load torchvision weights {weights} ({_first_line(e)}); without network "
                f"access put the file at {target} or pass a state-dict file to --weights") from e
        model.load_state_dict(state)
        loaded.notes.append(f"weights {type(enum).__name__}.{enum.name}")
    elif weights:
        _load_state_dict(model, weights)
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
        raise CLIError(f"hf:{path}: no Hugging Face model there ({_first_line(e)}); give a "
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
        raise CLIError(f"hf:{path}: cannot load it as {auto.__name__} ({_first_line(e)})") from e
    loaded = LoadedModel(model.eval(), f"hf:{path}", labels=_hf_labels(config))
    if task == "image":
        loaded.keyword = "pixel_values"
        try:
            loaded.preprocessor = hf_preprocessor(path)
        except (OSError, ValueError) as e:
            size = int(getattr(config, "image_size", 224))
            loaded.preprocessor = default_preprocessor(size, resize=size)
            loaded.notes.append(f"no image processor in {path} ({_first_line(e)}); "
                                "resize and ImageNet normalisation")
    else:
        try:
            loaded.tokenizer = tf.AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            if task != "encoder":
                raise CLIError(f"hf:{path}: no tokenizer there ({_first_line(e)})") from e
    if task in ("image", "text") and ("ForImageClassification" not in archs
                                      and "ForSequenceClassification" not in archs):
        loaded.random_init = True
        loaded.notes.append("the checkpoint has no classification head: its head is random "
                            "(for a sentence encoder use --similar-to)")
    if weights:
        _load_state_dict(model, weights)
    return loaded


def _load_file(spec: str, weights: str | None, num_classes: int | None) -> LoadedModel:
    path, _, factory = spec.rpartition(":")
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--model {spec}: no such file {p}")
    mod_name = f"lrpfx_user_model_{re.sub(r'[^0-9A-Za-z_]', '_', p.stem)}"
    module_spec = importlib.util.spec_from_file_location(mod_name, p)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file: say where it failed, briefly
        raise CLIError(f"--model {spec}: importing {p} failed ({type(e).__name__}: "
                       f"{_first_line(e)})") from e
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise CLIError(f"--model {spec}: {p} defines no callable {factory!r}")
    model = fn(**({"num_classes": num_classes} if num_classes else {}))
    if not isinstance(model, nn.Module):
        raise CLIError(f"--model {spec}: {factory}() returned {type(model).__name__}, "
                       "not a torch.nn.Module")
    if weights:
        _load_state_dict(model, weights)
    return LoadedModel(model.eval(), spec, default_preprocessor(), random_init=False)


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
        _load_state_dict(model, weights)
        notes = [f"weights {weights}"]
    else:
        cached = cache_path("vgg")
        try:
            # the cached model loads without the data set (no scikit-learn, no accuracy run)
            _load_state_dict(model, cached)
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
) -> LoadedModel:
    """Load a model from a ``--model`` string.

    Parameters
    ----------
    spec
        ``timm:NAME`` (random init), ``torchvision:NAME`` (random init), ``hf:PATH`` (a local
        Hugging Face folder), ``FILE.py:FACTORY`` (``FACTORY()`` returns the module) or
        ``digits`` (the digits CNN of :mod:`lrpfx.data.digits`, trained on first use and cached).
    weights
        A state-dict file; for torchvision also the name of its weights (``IMAGENET1K_V1``),
        whose preprocessing and class names are used (the file must be in torch's hub cache,
        as nothing can be downloaded here).
    num_classes
        Output classes for timm/torchvision/file models (when the weights are fine-tuned).
    task
        For ``hf:`` models: ``"image"``, ``"text"`` (sequence classification), ``"encoder"``
        (no head) or ``"auto"`` (from the config).
    input_size
        ``(C, H, W)`` to prepare images at, instead of the model's own size (timm, file and
        torchvision models without named weights).

    Raises
    ------
    CLIError
        Unknown model, unloadable or unfitting weights.
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
    if input_size is not None and loaded.preprocessor is not None:
        c, h, w = input_size
        if kind == "timm":
            loaded.preprocessor = timm_preprocessor(loaded.model, (c, h, w))
        elif kind == "file" or loaded.preprocessor.source.startswith("default"):
            loaded.preprocessor = default_preprocessor((h, w), channels=c)
        else:
            loaded.notes.append(f"--input-size ignored: {loaded.preprocessor.source} sets "
                                "the size")
    return loaded


# ----------------------------------------------------------------------------- helpers


def resolve_device(name: str) -> torch.device:
    """``--device`` as a ``torch.device``; a clear error when CUDA is asked for but missing."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise CLIError(f"--device {name}: not a torch device ({_first_line(e)})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else \
            "no GPU is visible"
        raise CLIError(f"--device {name}: CUDA is not available here ({why}); use --device cpu")
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise CLIError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def parse_target(text: str, labels: Sequence[str] | None = None) -> tuple[str, int]:
    """``--target`` as ``("top", k)`` or ``("class", index)``.

    ``top1``/``top3``/``topK``, a class index, or a class name (case-insensitive, when the
    model has names).
    """
    t = text.strip()
    m = re.fullmatch(r"top(\d+)", t.lower())
    if m:
        k = int(m.group(1))
        if k < 1:
            raise CLIError(f"--target {text}: top-k needs k >= 1")
        return "top", k
    if re.fullmatch(r"-?\d+", t):
        return "class", int(t)
    if labels:
        lower = [str(label).lower() for label in labels]
        if t.lower() in lower:
            return "class", lower.index(t.lower())
        raise CLIError(f"--target {text!r}: no class of that name; give top1, top3, a class "
                       f"index or one of the model's {len(labels)} class names "
                       f"(e.g. {', '.join(map(repr, labels[:3]))})")
    raise CLIError(f"--target {text!r}: give top1, topK or a class index")


def _parse_size(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        parts = tuple(int(p) for p in re.split(r"[,x× ]+", text.strip()) if p)
    except ValueError:
        parts = ()
    if not parts or any(p < 1 for p in parts) or len(parts) > 3:
        raise CLIError(f"--input-size {text!r}: give C,H,W (e.g. 3,224,224), H,W, a side "
                       "(224), or a token count for text models")
    return parts


def _image_size(parts: tuple[int, ...] | None, default: tuple[int, int, int]
                ) -> tuple[int, int, int]:
    if parts is None:
        return default
    if len(parts) == 1:
        return (default[0], parts[0], parts[0])
    if len(parts) == 2:
        return (default[0], *parts)
    return parts  # type: ignore[return-value]


def _rule_options(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--option {item!r}: expected KEY=VALUE")
        low = value.lower()
        if low in ("true", "false", "yes", "no", "1", "0"):
            out[key] = low in ("true", "yes", "1")
        else:
            try:
                out[key] = float(value) if "." in value or "e" in low else int(value)
            except ValueError:
                out[key] = value
    return out


def _class_scores(out: Any) -> Tensor:
    try:
        return class_scores(out)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _compile(loaded: LoadedModel, args: argparse.Namespace) -> lrpfx.Explainer:
    try:
        return lrpfx.compile(loaded.model, rule=args.rule, strict=args.strict,
                             **_rule_options(args.option))
    except ValueError as e:  # unknown rule set or option
        raise CLIError(str(e)) from e


def _stats(m: Tensor) -> dict[str, Any]:
    """Relevance statistics of one map (summed over channels, before display scaling)."""
    r = m.detach().double().cpu()
    if r.dim() == 3:
        r = r.sum(0)
    flat = r.flatten()
    absr = flat.abs()
    total = float(absr.sum()) or 1.0
    pos = r.clamp(min=0)
    k = max(1, round(0.1 * flat.numel()))
    stats: dict[str, Any] = {
        "max": float(flat.max()), "min": float(flat.min()), "sum": float(flat.sum()),
        "positive_fraction": float(pos.sum()) / total,
        "positive_area": float((flat > 0).double().mean()),
        "top10pct_share": float(absr.topk(k).values.sum()) / total,
    }
    if r.dim() == 2 and float(pos.sum()) > 0:
        h, w = r.shape
        ys = torch.arange(h, dtype=torch.float64) + 0.5
        xs = torch.arange(w, dtype=torch.float64) + 0.5
        stats["positive_centroid_yx"] = [float((pos.sum(1) * ys).sum() / pos.sum()) / h,
                                         float((pos.sum(0) * xs).sum() / pos.sum()) / w]
    return stats


def _prob(p: float | Tensor) -> str:
    """A probability for people: two decimals, or two significant digits below 0.01."""
    p = float(p)
    return f"{p:.2f}" if p >= 0.01 or p == 0 else f"{p:.1e}"


def _label(labels: Sequence[str] | None, i: int) -> str | None:
    return str(labels[i]) if labels is not None and 0 <= i < len(labels) else None


def _out_names(paths: Sequence[Path], roots: Sequence[str]) -> list[str]:
    """A distinct PNG file name per image (its path below the folder it was found in)."""
    folders = [Path(r).resolve() for r in roots if Path(r).is_dir()]
    names: list[str] = []
    seen: set[str] = set()
    for p in paths:
        rp = p.resolve()
        rel = next((rp.relative_to(f) for f in folders if rp.is_relative_to(f)), Path(p.name))
        base = "__".join(rel.with_suffix("").parts) or "image"
        name, n = base, 1
        while name in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name)
        names.append(name)
    return names


def _warn(msg: str) -> None:
    print(f"lrpfx: note: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- explain


def _cmd_explain(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from lrpfx.apps.viz import save_explanation

    device = resolve_device(args.device)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size {args.batch_size}: must be at least 1")
    try:
        paths = find_images(args.images)
    except ValueError as e:
        raise CLIError(str(e)) from e
    for p in paths:  # fail before any work: headers only, so this is quick
        _check_header(p)
    size = _parse_size(args.input_size)
    loaded = load_model(args.model, weights=args.weights, num_classes=args.num_classes,
                        task="image", input_size=_image_size(size, (3, 224, 224)) if size
                        else None)
    if loaded.preprocessor is None:
        raise CLIError(f"{args.model} is not an image model; use lrpfx explain-text")
    mode, value = parse_target(args.target, loaded.labels)
    for note in loaded.notes:
        _warn(note)
    if loaded.random_init:
        _warn(f"{args.model} has random weights (pass --weights FILE): the maps explain an "
              "untrained model")
    explainer = _compile(loaded, args).to(device)
    contrastive = not args.positive_only
    out_dir = Path(args.out)
    names = _out_names(paths, args.images)
    prep = loaded.preprocessor
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm(total=len(paths), unit="image", desc="lrpfx explain",
               disable=True if args.quiet else None)
    for i in range(0, len(paths), args.batch_size):
        chunk = paths[i:i + args.batch_size]
        images = []
        for p in chunk:
            try:
                images.append(prep(load_image(p)))
            except ValueError as e:
                raise CLIError(str(e)) from e
        x = torch.stack(images).to(device)
        # Hugging Face image models take pixel_values=x, the others x
        args_, kwargs = ((), {loaded.keyword: x}) if loaded.keyword else ((x,), {})
        try:
            with torch.no_grad():
                scores = _class_scores(explainer(*args_, **kwargs))
        except ValueError as e:  # e.g. an input size the model cannot take
            raise CLIError(f"{args.model} cannot take these inputs: {_first_line(e)}") from e
        n_classes = scores.shape[1]
        if mode == "top":
            if value > n_classes:
                raise CLIError(f"--target top{value}: the model has only {n_classes} classes")
            targets = scores.topk(value, dim=1).indices.T  # (k, B)
        else:
            if not 0 <= value < n_classes:
                raise CLIError(f"--target {value}: out of range, the model has {n_classes} "
                               f"classes (0..{n_classes - 1})")
            targets = torch.full((1, len(x)), value, dtype=torch.long, device=x.device)
        maps = []
        for t in targets:
            parts = explainer.explain_parts(*args_, target=t, negative=contrastive, **kwargs)
            maps.append((parts.contrastive if contrastive else parts.positive).detach().cpu())
        probs = scores.float().softmax(1).cpu()
        scores = scores.float().cpu()
        targets = targets.cpu()
        out_dir.mkdir(parents=True, exist_ok=True)  # only now: a bad target leaves no folder
        for b, p in enumerate(chunk):
            pred = int(scores[b].argmax())
            png = out_dir / f"{names[i + b]}.png"
            entries, titles = [], []
            for k, t in enumerate(targets[:, b].tolist()):
                label = _label(loaded.labels, t)
                entries.append({"target": t, "label": label, "logit": float(scores[b, t]),
                                "probability": float(probs[b, t]), "stats": _stats(maps[k][b])})
                titles.append(f"{label or 'class ' + str(t)} (p={_prob(probs[b, t])})")
            if args.save_maps:  # the raw maps, (K, C, H, W), one per target, as explained
                np.save(out_dir / f"{names[i + b]}.npy",
                        torch.stack([m[b] for m in maps]).float().numpy())
            save_explanation(prep.to_display(x[b].cpu()), [m[b] for m in maps], png,
                             titles=titles, positive_only=args.positive_only,
                             shared_scale=args.shared_scale,
                             panels=("heatmap", "overlay") if args.style == "both"
                             else (args.style,), image_title=p.name)
            records.append({
                "image": str(p), "heatmap": png.name,
                "maps": f"{names[i + b]}.npy" if args.save_maps else None,
                "predicted": {"class": pred, "label": _label(loaded.labels, pred),
                              "logit": float(scores[b, pred]),
                              "probability": float(probs[b, pred])},
                "explanations": entries,
            })
            if not args.quiet:
                bar.write(f"{p}: predicted {_class_name(loaded.labels, pred)} "
                          f"(p={_prob(probs[b, pred])}) -> {png}")
        bar.update(len(chunk))
    bar.close()
    summary = {
        "lrpfx_version": lrpfx.__version__, "command": "explain", "model": args.model,
        "weights": args.weights, "random_init": loaded.random_init, "rule": args.rule,
        "map": "contrastive" if contrastive else "positive",
        "preprocessing": prep.source, "input_size": list(prep.input_size),
        "device": str(device), "target": args.target, "seconds": time.perf_counter() - start,
        "images": records,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out_dir / "summary.md").write_text(_markdown(summary), encoding="utf-8")
    print(f"explained {len(records)} image(s) in {summary['seconds']:.1f} s; wrote "
          f"{out_dir / 'summary.json'}, {out_dir / 'summary.md'} and {len(records)} PNG(s) "
          f"in {out_dir}")
    return 0


def _class_name(labels: Sequence[str] | None, i: int) -> str:
    """``"3 (tabby)"`` or ``"3"``."""
    name = _label(labels, i)
    return f"{i} ({name})" if name is not None and name != str(i) else str(i)


def _check_header(p: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p):
            pass
    except (UnidentifiedImageError, OSError) as e:
        raise CLIError(f"{p}: not a readable image ({_first_line(e)})") from e


def _markdown(summary: dict[str, Any]) -> str:
    kind = summary["map"]
    lines = [
        "# lrpfx explain",
        "",
        f"- Model: `{summary['model']}`" + (f", weights `{summary['weights']}`"
                                            if summary["weights"] else
                                            " (random weights)" if summary["random_init"]
                                            else ""),
        f"- Rule: `{summary['rule']}`, {kind} maps "
        + ("(red: for the target, blue: for the other classes; max |R| = 1 per map)"
           if kind == "contrastive" else "(positive map, unit L1)"),
        f"- Preprocessing: {summary['preprocessing']}, input "
        f"{'×'.join(map(str, summary['input_size']))}; device `{summary['device']}`; "
        f"{len(summary['images'])} image(s) in {summary['seconds']:.1f} s",
        "",
        "*positive area* is the share of pixels with R > 0; *top 10 %* is the share of Σ |R| "
        "in the 10 % of pixels with the largest |R| (0.1 for a flat map); *centre* is the "
        "(row, column) centre of mass of the positive relevance, as fractions of the height "
        "and width.",
        "",
        "| image | predicted (p) | target (p) | positive area | top 10 % | centre | heatmap |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec in summary["images"]:
        pred = rec["predicted"]
        image = Path(rec["image"]).name
        predicted = f"{pred['label'] or pred['class']} ({_prob(pred['probability'])})"
        link = f"[{rec['heatmap']}]({rec['heatmap']})"
        for k, e in enumerate(rec["explanations"]):
            first = k == 0  # one row per target; the image's columns only on its first
            st = e["stats"]
            yx = st.get("positive_centroid_yx")
            centre = f"({yx[0]:.2f}, {yx[1]:.2f})" if yx else "-"
            lines.append(
                f"| {image if first else ''} | {predicted if first else ''} "
                f"| {e['label'] or e['target']} ({_prob(e['probability'])}) "
                f"| {st['positive_area']:.2f} | {st['top10pct_share']:.2f} | {centre} "
                f"| {link if first else ''} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- explain-text


def _mean_pool(out: Any, mask: Tensor) -> Tensor:
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def _cmd_explain_text(args: argparse.Namespace) -> int:
    from lrpfx.apps.text import render_html, render_terminal

    device = resolve_device(args.device)
    if not args.model.startswith("hf:"):
        raise CLIError(f"--model {args.model}: explain-text takes a Hugging Face model, hf:PATH")
    if not args.sentences or any(not s.strip() for s in args.sentences):
        raise CLIError("give one or more non-empty sentences")
    task = "encoder" if args.similar_to else "text"
    loaded = load_model(args.model, weights=args.weights, task=task)
    tok = loaded.tokenizer
    if tok is None:
        raise CLIError(f"{args.model}: no tokenizer")
    for note in loaded.notes:
        _warn(note)
    model = loaded.model.to(device)
    explainer = _compile(loaded, args).to(device)
    batch = {k: v.to(device) for k, v in tok(list(args.sentences), return_tensors="pt",
                                                padding=True, truncation=True).items()}
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
    rows: list[Tensor] = []  # relevance (B, T), one per explained target
    records: list[dict[str, Any]] = [{"sentence": s, "explanations": []} for s in args.sentences]
    if args.similar_to:
        with torch.no_grad():
            ref = tok([args.similar_to], return_tensors="pt", truncation=True).to(device)
            ref_emb = _mean_pool(model(**ref), ref["attention_mask"])

        def similarity(out: Any) -> Tensor:
            return torch.nn.functional.cosine_similarity(_mean_pool(out, mask), ref_emb)

        def projection(out: Any) -> Tensor:
            # Explained: the embedding's component along the reference direction. The cosine
            # itself is scale invariant, so Σ out ⊙ ∂cos/∂out = 0: its output relevance sums
            # to zero and the map's sign would be arbitrary; the projection is linear in the
            # embedding, its relevance sums to the score, and it ranks sentences alike.
            unit = ref_emb / ref_emb.norm(dim=-1, keepdim=True)
            return (_mean_pool(out, mask) * unit).sum(-1)

        with torch.no_grad():
            sims = similarity(explainer(**batch))
        r = explainer.explain(**batch, target=projection, contrastive=False)
        for b in range(len(args.sentences)):
            records[b]["explanations"].append(
                {"target": f"embedding along {args.similar_to!r}",
                 "cosine_similarity": float(sims[b])})
        rows.append(r)
        titles = [[f"cos = {float(sims[b]):+.3f}"] for b in range(len(args.sentences))]
    else:
        mode, value = parse_target(args.target, loaded.labels)
        with torch.no_grad():
            scores = _class_scores(explainer(**batch))
        n = scores.shape[1]
        if mode == "top":
            if value > n:
                raise CLIError(f"--target top{value}: the model has only {n} classes")
            targets = scores.topk(value, dim=1).indices.T
        else:
            if not 0 <= value < n:
                raise CLIError(f"--target {value}: out of range, the model has {n} classes "
                               f"(0..{n - 1})")
            targets = torch.full((1, len(args.sentences)), value, dtype=torch.long,
                                 device=scores.device)
        probs = scores.float().softmax(1)
        titles = [[] for _ in args.sentences]
        for t in targets:
            r = explainer.explain(**batch, target=t, contrastive=not args.positive_only)
            rows.append(r)
            for b, c in enumerate(t.tolist()):
                label = _label(loaded.labels, c)
                records[b]["explanations"].append(
                    {"target": c, "label": label, "logit": float(scores[b, c]),
                     "probability": float(probs[b, c])})
                titles[b].append(f"{label or 'class ' + str(c)} (p={_prob(probs[b, c])})")
    html_parts = []
    for b, sentence in enumerate(args.sentences):
        keep = mask[b].bool().cpu()
        tokens = tok.convert_ids_to_tokens(batch["input_ids"][b].cpu()[keep].tolist())
        print(sentence)
        for k, r in enumerate(rows):
            rel = r[b].detach().cpu()[keep]
            records[b]["explanations"][k]["tokens"] = tokens
            records[b]["explanations"][k]["relevance"] = [float(v) for v in rel]
            line = render_terminal(tokens, rel) if not args.no_color else " ".join(
                f"{t}[{float(v):+.2f}]" for t, v in zip(tokens, rel))
            print(f"  {titles[b][k]}: {line}")
            html_parts.append(render_html(tokens, rel, title=f"{sentence} — {titles[b][k]}"))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / "text.html"
    html_path.write_text(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>lrpfx: "
        f"{args.model}</title></head>\n<body>\n<p>lrpfx {args.rule} relevance per token, "
        "red = for, blue = against.</p>\n" + "".join(html_parts) + "</body></html>\n",
        encoding="utf-8")
    (out_dir / "text.json").write_text(json.dumps(
        {"lrpfx_version": lrpfx.__version__, "command": "explain-text", "model": args.model,
         "rule": args.rule, "sentences": records}, indent=2), encoding="utf-8")
    print(f"wrote {html_path} and {out_dir / 'text.json'}")
    return 0


# ----------------------------------------------------------------------------- check


def _cmd_check(args: argparse.Namespace) -> int:
    size = _parse_size(args.input_size)
    loaded = load_model(args.model, weights=args.weights, num_classes=args.num_classes,
                        task="auto", input_size=_image_size(size, (3, 224, 224)) if size
                        else None)
    if loaded.preprocessor is not None:
        example: Any = torch.randn(2, *_image_size(size, loaded.preprocessor.input_size))
        if loaded.keyword:
            example = {loaded.keyword: example}
        shape = "×".join(map(str, _image_size(size, loaded.preprocessor.input_size)))
    else:
        t = size[-1] if size else 16
        vocab = int(getattr(loaded.model.config, "vocab_size", 100))
        ids = torch.randint(min(5, vocab - 1), vocab, (2, t))
        example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        shape = f"{t} tokens"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the report says it all
            explainer = lrpfx.compile(loaded.model, rule=args.rule, strict=False,
                                      frontend=args.frontend, example_inputs=example,
                                      **_rule_options(args.option))
            report = explainer.report
    except lrpfx.CaptureError as e:
        print(f"lrpfx check: {args.model} cannot be captured: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        raise CLIError(str(e)) from e
    print(f"{args.model}, input {shape}")
    print(report.table())
    bad = report.unsupported
    if bad:
        ops = sorted({n.canonical or n.op for n in bad})
        print(f"\n{len(bad)} op(s) on the relevance path have no {args.rule!r} rule: "
              f"{', '.join(ops)}. lrpfx.compile(model) refuses this model; "
              "strict=False lets them carry the plain gradient.")
        return 1
    print(f"\nOK: every op on the relevance path has a {args.rule!r} rule.")
    return 0


# ----------------------------------------------------------------------------- evaluate


METRICS = ("gae", "sensitivity-n", "insertion-deletion")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from lrpfx.metrics import distributed

    device = resolve_device(args.device)
    chosen = [m.strip().lower() for m in args.metric.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(METRICS))
    if unknown or not chosen:
        raise CLIError(f"--metric {args.metric!r}: choose from {', '.join(METRICS)}")
    if args.n < 1:
        raise CLIError(f"--n {args.n}: must be at least 1")
    size = _parse_size(args.input_size)
    loaded = load_model(args.model, weights=args.weights, num_classes=args.num_classes,
                        task="image", input_size=_image_size(size, (3, 224, 224)) if size
                        else None)
    if loaded.preprocessor is None or loaded.keyword:
        raise CLIError(f"{args.model}: evaluate takes image models called as model(x)")
    for note in loaded.notes:
        _warn(note)
    if args.images:
        try:
            paths = find_images(args.images)[:args.n]
            x = loaded.preprocessor.batch(load_image(p) for p in paths)
        except ValueError as e:
            raise CLIError(str(e)) from e
        source = f"{len(paths)} image(s) from {', '.join(args.images)}"
    elif args.model == "digits":
        from lrpfx.data.digits import load_digits_tensors

        x = load_digits_tensors().x_test[:args.n]
        source = f"the first {len(x)} digits of the test split"
    else:
        raise CLIError("give images to evaluate on (only --model digits has its own)")
    if "gae" in chosen and len(x) < 4:
        raise CLIError(f"gae needs at least 4 images (mosaics of 4); got {len(x)}")
    model = loaded.model.to(device)
    x = x.to(device)
    rules = [args.rule, *args.compare]
    results: dict[str, dict[str, Any]] = {}
    seed = args.seed
    start = time.perf_counter()
    rank = _init_distributed(device)
    block = max(4, 4 * (args.block_size // 4))
    for rule in rules:
        explainer = _compile(loaded, argparse.Namespace(**{**vars(args), "rule": rule})
                             ).to(device)
        row: dict[str, Any] = {}
        progress = not args.quiet

        def run(name: str, explain: Any = explainer.explain, progress: bool = progress,
                **options: Any) -> Any:
            # blocks of images, block b on rank b mod world (torchrun), each seeded from
            # (seed, b): the same numbers on any number of processes
            return distributed.evaluate(name, model, explain, x, block_size=block,
                                        seed=seed, progress=progress, **options)

        try:
            if "gae" in chosen:
                g = run("gae", steps=args.gae_steps,
                        batch_size=max(4, 4 * (args.batch_size // 4)))
                row["gae"] = g.means
            if "sensitivity-n" in chosen:
                s = run("sensitivity_n", n_subsets=args.subsets, feature=args.feature,
                        batch_size=args.batch_size)
                row["sensitivity_n"] = {"n": [int(n) for n in s.ns],
                                        "correlation": [float(c) for c in s.mean]}
            if "insertion-deletion" in chosen:
                i = run("insertion_deletion", steps=args.insertion_steps,
                        batch_size=args.batch_size)
                row["insertion_deletion"] = i.means
        except ValueError as e:  # e.g. odd image sizes for GAE's mosaics
            raise CLIError(f"{rule}: {_first_line(e)}") from e
        results[rule] = row
    if rank != 0:
        return 0  # every rank has the same results; rank 0 reports them
    summary = {"lrpfx_version": lrpfx.__version__, "command": "evaluate", "model": args.model,
               "weights": args.weights, "random_init": loaded.random_init, "data": source,
               "input_size": list(x.shape[1:]), "seed": seed, "metrics": chosen,
               "settings": {"gae_steps": args.gae_steps, "subsets": args.subsets,
                            "feature": args.feature, "insertion_steps": args.insertion_steps},
               "seconds": time.perf_counter() - start, "results": results}
    table = _evaluation_table(summary)
    print(table)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out_dir / "evaluation.md").write_text(
        f"# lrpfx evaluate\n\n- Model: `{args.model}`; data: {source}; seed {seed}\n\n"
        + table + "\n", encoding="utf-8")
    print(f"wrote {out_dir / 'evaluation.json'} and {out_dir / 'evaluation.md'}")
    return 0


def _init_distributed(device: torch.device) -> int:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1); the rank."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank() if dist.is_initialized() else 0


def _evaluation_table(summary: dict[str, Any]) -> str:
    """A Markdown table: one row per rule set, the mean of each metric."""
    cols: list[tuple[str, Callable[[dict[str, Any]], float]]] = []
    if "gae" in summary["metrics"]:
        cols += [(f"GAE {k}", lambda r, k=k: r["gae"][k]) for k in ("gae", "lc", "c")]
    if "sensitivity-n" in summary["metrics"]:
        cols.append(("Sensitivity-n (mean over n)",
                     lambda r: float(np.nanmean(r["sensitivity_n"]["correlation"]))))
    if "insertion-deletion" in summary["metrics"]:
        cols += [(k, lambda r, k=k: r["insertion_deletion"][k])
                 for k in ("insertion", "deletion", "difference")]
    lines = ["| rule | " + " | ".join(c for c, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for rule, row in summary["results"].items():
        lines.append(f"| {rule} | " + " | ".join(f"{f(row):.4f}" for _, f in cols) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- parser


EPILOG = """\
examples:
  lrpfx explain cat.jpg dog.png --model timm:resnet50 --weights resnet50.pth --target top3
  lrpfx explain photos/ --model torchvision:resnet18 --weights IMAGENET1K_V1 --out maps/
  lrpfx explain digit.png --model digits                 # a small CNN trained on the fly
  lrpfx explain x.png --model my_net.py:build --weights my_net.pt --input-size 1,28,28
  lrpfx explain-text "a gripping, moving film" --model hf:./my-bert-sst2 --target top2
  lrpfx explain-text "a cat on a mat" --model hf:PATH --similar-to "a kitten on a rug"
  lrpfx check --model timm:vit_tiny_patch16_224
  lrpfx evaluate --model digits --compare gradient_x_input --n 16
  python -m lrpfx check --model hf:./my-bert --input-size 32

models (--model): timm:NAME and torchvision:NAME build the architecture with random weights
(nothing is downloaded): pass trained ones with --weights FILE (a state dict). hf:PATH is a local
folder written by save_pretrained (with its image processor or tokenizer). FILE.py:FACTORY calls
FACTORY() from your file. digits is lrpfx's digits CNN (trained in seconds, cached).

maps: contrastive absLRP by default: red = evidence for the target class, blue = evidence for
the other classes, white = none; --positive-only shows the target's positive map (white to red).
Preprocessing follows the model (timm data config, torchvision weights' transforms, the Hugging
Face image processor; otherwise resize, center crop and ImageNet normalisation).

evaluate: the paper's GAE (mosaics of 4 images), Sensitivity-n and insertion/deletion AUCs, from
lrpfx.metrics; see their docstrings for the definitions.

exit codes: 0 ok, 1 the model cannot be explained (unsupported op, capture failure),
2 usage error (unknown model, unreadable image, bad target).
"""


def _add_model_args(p: argparse.ArgumentParser, *, image: bool = True) -> None:
    from lrpfx.rules.registry import RULESETS

    p.add_argument("--model", "-m", required=True, metavar="SPEC",
                   help=f"the model: {MODEL_SPECS}")
    p.add_argument("--weights", "-w", metavar="FILE",
                   help="state-dict file to load (torchvision: also a weights name such as "
                        "IMAGENET1K_V1, which must be in torch's hub cache)")
    others = ", ".join(sorted(set(RULESETS) - {"abslrp"}))
    p.add_argument("--rule", default="abslrp", metavar="RULE",
                   help=f"rule set: abslrp (default){', ' + others if others else ''}")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="rule-set option, repeatable (e.g. max_pool_divide=true)")
    p.add_argument("--no-strict", dest="strict", action="store_false",
                   help="let ops without a rule carry the plain gradient instead of refusing")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's choice; 1 is often fastest "
                        "for small models on a busy machine)")
    if image:
        p.add_argument("--num-classes", type=int, metavar="N",
                       help="output classes of a timm/torchvision/file model (fine-tuned weights)")
        p.add_argument("--input-size", metavar="C,H,W",
                       help="input size instead of the model's (timm, FILE.py, torchvision "
                            "without named weights); also H,W or a side; check: a token count "
                            "for text models")


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=92)


def build_parser() -> argparse.ArgumentParser:
    """The ``lrpfx`` argument parser (subcommands explain, explain-text, check, evaluate)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="lrpfx", formatter_class=fmt, epilog=EPILOG,
        description="Explain PyTorch models with absLRP relevance maps (one backward pass).")
    parser.add_argument("--version", action="version", version=f"lrpfx {lrpfx.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "explain", formatter_class=fmt, epilog=EPILOG,
        help="heatmaps (PNG) and a JSON + Markdown summary for images",
        description=_wrap("Explain images: one PNG per image (input, heatmap and overlay "
                          "for each target class), summary.json and summary.md in --out."))
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files or folders (searched recursively)")
    _add_model_args(p)
    p.add_argument("--target", "-t", default="top1",
                   help="top1 (default), topK, a class index or a class name")
    p.add_argument("--out", "-o", default="lrpfx_out", help="output folder (default: lrpfx_out)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--batch-size", "-b", type=int, default=8, help="images per batch (8)")
    p.add_argument("--positive-only", action="store_true",
                   help="the target's positive map instead of the contrastive one")
    p.add_argument("--shared-scale", action="store_true",
                   help="one colour scale for all maps of an image (compare targets)")
    p.add_argument("--style", choices=("both", "heatmap", "overlay"), default="both",
                   help="panels after the input: heatmap and overlay (default), or one")
    p.add_argument("--save-maps", action="store_true",
                   help="also write each image's raw maps as NAME.npy, shape (targets, C, H, W)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no per-image "
                   "lines")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser(
        "explain-text", formatter_class=fmt, epilog=EPILOG,
        help="token relevance for sentences (HTML + terminal colours)",
        description=_wrap("Explain a Hugging Face text classifier (or, with --similar-to, "
                          "a sentence encoder) on sentences: prints coloured tokens, writes "
                          "text.html and text.json in --out."))
    p.add_argument("sentences", nargs="+", metavar="SENTENCE")
    _add_model_args(p, image=False)
    p.add_argument("--target", "-t", default="top1",
                   help="top1 (default), topK, a class index or a label name")
    p.add_argument("--similar-to", metavar="TEXT",
                   help="for sentence encoders without a classifier head: explain the "
                        "mean-pooled embedding's component along TEXT's embedding (its "
                        "cosine similarity is printed)")
    p.add_argument("--positive-only", action="store_true", help="positive map only")
    p.add_argument("--out", "-o", default="lrpfx_out", help="output folder (default: lrpfx_out)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--no-color", action="store_true",
                   help="print scores next to tokens instead of ANSI colours")
    p.set_defaults(func=_cmd_explain_text)

    p = sub.add_parser(
        "check", formatter_class=fmt, epilog=EPILOG,
        help="which rule each op of a model gets (exit 1 if any op has none)",
        description=_wrap("Compile the model on a random input and print its rule coverage "
                          "table; exit code 1 if an op on the relevance path has no rule."))
    _add_model_args(p)
    p.add_argument("--frontend", choices=("export", "symbolic_trace"), default="export",
                   help="capture frontend (default: export)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "evaluate", formatter_class=fmt, epilog=EPILOG,
        help="judge the maps: GAE, Sensitivity-n, insertion/deletion",
        description=_wrap("Evaluate relevance maps with lrpfx.metrics on images (or, for "
                          "--model digits, on its test split) and print a table of means per "
                          "rule set; writes evaluation.json and evaluation.md in --out. "
                          "Under torchrun (torchrun --nproc_per_node N -m lrpfx evaluate ...) the "
                          "blocks of images are shared out over the processes, with the same "
                          "results as one process."))
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files or folders (optional for --model digits)")
    _add_model_args(p)
    p.add_argument("--compare", nargs="+", default=[], metavar="RULE",
                   help="more rule sets to evaluate side by side (e.g. gradient_x_input)")
    p.add_argument("--metric", default=",".join(METRICS),
                   help=f"comma-separated subset of {', '.join(METRICS)} (default: all)")
    p.add_argument("--n", "--max-images", dest="n", type=int, default=16,
                   help="images to use at most (16); spell it --max-images under torchrun")
    p.add_argument("--gae-steps", type=int, default=10, help="GAE masking steps (10)")
    p.add_argument("--subsets", type=int, default=100,
                   help="Sensitivity-n random subsets per image and n (100)")
    p.add_argument("--feature", type=int, default=1,
                   help="Sensitivity-n feature: square patch side in pixels (1)")
    p.add_argument("--insertion-steps", type=int, default=100,
                   help="points of the insertion/deletion curves (100)")
    p.add_argument("--batch-size", "-b", type=int, default=16, help="images per batch (16)")
    p.add_argument("--seed", type=int, default=0, help="seed of GAE and Sensitivity-n (0)")
    p.add_argument("--block-size", type=int, default=64,
                   help="images per block (64, a multiple of 4): the unit of work shared out "
                   "over processes under torchrun; block b is seeded from (seed, b)")
    p.add_argument("--out", "-o", default="lrpfx_out", help="output folder (default: lrpfx_out)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lrpfx`` command line.

    Parameters
    ----------
    argv
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit code: 0 ok, 1 the model cannot be explained, 2 usage error.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler: Callable[[argparse.Namespace], int] = args.func
    threads = torch.get_num_threads()
    try:
        if getattr(args, "threads", None):
            if args.threads < 1:
                raise CLIError(f"--threads {args.threads}: must be at least 1")
            torch.set_num_threads(args.threads)
        return handler(args)
    except CLIError as e:
        print(f"lrpfx {args.command}: error: {e}", file=sys.stderr)
        return 2
    except lrpfx.UnsupportedOpError as e:
        ops = sorted({n.canonical or n.op for n in e.report.unsupported})
        print(f"lrpfx {args.command}: error: {len(e.report.unsupported)} op(s) have no "
              f"{args.rule!r} rule ({', '.join(ops)}); run 'lrpfx check --model {args.model}' "
              "for the full report", file=sys.stderr)
        return 1
    except lrpfx.CaptureError as e:
        print(f"lrpfx {args.command}: error: cannot capture {args.model}: {_first_line(e)}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lrpfx {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
