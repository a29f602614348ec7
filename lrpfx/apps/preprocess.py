"""Image preprocessing that follows the model's own configuration.

A model is only explained faithfully on inputs prepared the way it was trained on: same resize,
crop, interpolation and normalisation. :class:`ImagePreprocessor` wraps the transform a model's
library defines and remembers its normalisation, so the prepared tensor can be turned back into
a picture to draw the heatmap on.

- timm: :func:`timm_preprocessor` (``timm.data.resolve_data_config`` + ``create_transform``).
- torchvision: :func:`torchvision_preprocessor` (``weights.transforms()``; works offline, the
  weights themselves need not be downloaded).
- Hugging Face: :func:`hf_preprocessor` (``AutoImageProcessor.from_pretrained``).
- anything else: :func:`default_preprocessor` (resize, center crop, ImageNet normalisation).

>>> from lrpfx.apps.preprocess import timm_preprocessor, load_image   # doctest: +SKIP
>>> prep = timm_preprocessor(model)
>>> x = prep.batch([load_image("cat.jpg")])                      # (1, 3, 224, 224)
>>> picture = prep.to_display(x[0])                              # (224, 224, 3) in [0, 1]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SUFFIXES", "ImagePreprocessor", "check_image",
    "default_preprocessor", "digits_preprocessor", "find_images", "hf_preprocessor", "load_image",
    "timm_preprocessor", "torchvision_preprocessor", "torchvision_state_dict",
    "torchvision_weights",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: File suffixes :func:`find_images` collects (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass
class ImagePreprocessor:
    """A PIL image → tensor transform plus what is needed to undo its normalisation.

    Attributes
    ----------
    transform
        ``transform(pil_image) -> Tensor (C, H, W)``.
    input_size
        ``(C, H, W)`` of the tensors ``transform`` returns.
    mean, std
        Per-channel normalisation ``transform`` applies last, or None if unknown (then
        :meth:`to_display` min-max scales instead).
    mode
        PIL mode images are converted to first (``"RGB"`` or ``"L"``).
    source
        Where the configuration came from, for reports (``"timm data config"``, ...).
    """

    transform: Callable[[Any], Tensor]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    mode: str = "RGB"
    source: str = "default"

    def __call__(self, image: Any) -> Tensor:
        """One image (PIL image or path) as a float tensor ``(C, H, W)``."""
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        out = self.transform(image.convert(self.mode))
        if not isinstance(out, Tensor):
            out = torch.as_tensor(np.asarray(out))
        return out.float()

    def batch(self, images: Iterable[Any]) -> Tensor:
        """Several images as one batch ``(B, C, H, W)``."""
        return torch.stack([self(im) for im in images])

    def to_display(self, x: Tensor) -> np.ndarray:
        """Undo the normalisation of one prepared image ``(C, H, W)``.

        Returns
        -------
        numpy.ndarray
            ``(H, W, 3)`` RGB or ``(H, W)`` grey, in ``[0, 1]``.
        """
        a = x.detach().double().cpu()
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=torch.float64).reshape(-1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float64).reshape(-1, 1, 1)
            a = (a * std + mean).clamp(0, 1)
        else:
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo) if hi > lo else torch.zeros_like(a)
        arr = a.numpy()
        if arr.shape[0] == 1:
            return arr[0]
        return np.moveaxis(arr[:3], 0, -1) if arr.shape[0] >= 3 else arr.mean(axis=0)


def _open_checked(p: Path) -> Any:
    """``PIL.Image.open`` where an image over PIL's pixel limit is an error, not a warning."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        # PIL warns above MAX_IMAGE_PIXELS and refuses above twice that; a decompression bomb
        # (a few bytes that decode to gigabytes) is refused at either
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(p)


def _unreadable(p: Path, e: BaseException) -> ValueError:
    from PIL import Image

    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ValueError(f"{p}: refused, too many pixels for an image "
                          f"(more than PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}; "
                          "raise it in Python if you trust the file)")
    return ValueError(f"{p}: not a readable image ({type(e).__name__}: "
                      f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})")


def _read(path: str | os.PathLike, use: Callable[[Any], Any]) -> Any:
    """``use(image)`` on the opened file, with every way of failing as one ValueError."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    try:
        with _open_checked(p) as im:
            return use(im)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise _unreadable(p, e) from e


def check_image(path: str | os.PathLike) -> tuple[int, int]:
    """Read an image file's header only (quick): its ``(width, height)``.

    Raises
    ------
    ValueError
        No such file, not an image PIL can read, or more pixels than
        ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb); the message names the file.
    """
    return _read(path, lambda im: im.size)


def load_image(path: str | os.PathLike) -> Any:
    """Open an image file with PIL and decode it now (so a broken file fails here).

    Raises
    ------
    ValueError
        The file does not exist, is not an image PIL can read, or has more pixels than
        ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb); the message names the file.
    """

    def decoded(im: Any) -> Any:
        im.load()
        return im.copy()

    return _read(path, decoded)


def find_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a list of image files.

    Folders are searched recursively for files with a suffix in :data:`IMAGE_SUFFIXES` (sorted,
    hidden files skipped); files given explicitly are kept whatever their suffix, so that an
    unreadable one is reported rather than silently dropped.

    Raises
    ------
    ValueError
        A path does not exist, or a folder holds no image.
    """
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*") if f.is_file()
                            and f.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not inside:
                raise ValueError(f"{p}: folder contains no image ({', '.join(IMAGE_SUFFIXES)})")
            found += inside
        elif p.is_file():
            found.append(p)
        else:
            raise ValueError(f"{p}: no such file or folder")
    return found


def default_preprocessor(
    size: int | tuple[int, int] = 224,
    resize: int | None = None,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    channels: int = 3,
) -> ImagePreprocessor:
    """Resize the shorter side, center-crop, scale to ``[0, 1]`` and normalise.

    Parameters
    ----------
    size
        Side of the square crop, or its ``(height, width)``.
    resize
        Shorter side before cropping; default ``max(size) / 0.875`` (256 for 224,
        torchvision's and timm's classic ratio).
    mean, std
        Normalisation (default ImageNet's); None for none.
    channels
        3 (RGB) or 1 (grey).

    Raises
    ------
    ValueError
        ``channels`` is neither 1 nor 3.
    """
    from torchvision import transforms as T

    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: images are read as grey (1) or RGB (3)")
    h, w = (size, size) if isinstance(size, int) else size
    resize = resize or round(max(h, w) / 0.875)
    steps: list[Any] = [T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR),
                        T.CenterCrop((h, w)), T.ToTensor()]
    m = tuple(float(v) for v in mean)[:channels] if mean is not None else None
    s = tuple(float(v) for v in std)[:channels] if std is not None else None
    if m is not None and s is not None:
        steps.append(T.Normalize(m, s))
        norm = ("ImageNet normalisation" if m == IMAGENET_MEAN[:channels]
                and s == IMAGENET_STD[:channels] else f"normalisation mean {m}, std {s}")
        source = f"default (resize, center crop, {norm})"
    else:
        m = s = None
        source = "default (resize, center crop)"
    return ImagePreprocessor(T.Compose(steps), (channels, h, w), m, s,
                             mode="RGB" if channels == 3 else "L", source=source)


def timm_preprocessor(model: nn.Module, input_size: Sequence[int] | None = None,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None
                      ) -> ImagePreprocessor:
    """The evaluation transform timm defines for ``model`` (its ``pretrained_cfg``).

    Uses ``timm.data.resolve_data_config(model=model)`` and ``timm.data.create_transform``:
    the model's input size, interpolation, crop percentage and mean/std. ``input_size``
    ``(C, H, W)``, ``mean`` and ``std`` override those (for weights trained otherwise than
    timm's config says); the rest stays timm's.
    """
    from timm.data import create_transform, resolve_data_config

    args: dict[str, Any] = {"input_size": tuple(input_size)} if input_size is not None else {}
    if mean is not None and std is not None:
        args.update(mean=tuple(mean), std=tuple(std))
    cfg = resolve_data_config(args, model=model)
    transform = create_transform(**cfg, is_training=False)
    c, h, w = cfg["input_size"]
    source = "timm data config" + (f" with mean {tuple(mean)}, std {tuple(std)}"
                                   if mean is not None and std is not None else "")
    return ImagePreprocessor(transform, (c, h, w), tuple(cfg["mean"]), tuple(cfg["std"]),
                             mode="RGB" if c == 3 else "L", source=source)


def torchvision_weights(model_name: str, weights: Any) -> Any:
    """A torchvision weights enum member from its name (``"IMAGENET1K_V1"``,
    ``"DEFAULT"``, or the full ``"ResNet18_Weights.IMAGENET1K_V1"``).

    Raises
    ------
    ValueError
        No such weights for this model; the message lists the ones that exist.
    """
    from torchvision.models import get_model_weights

    if not isinstance(weights, str):
        return weights
    enum = get_model_weights(model_name)
    name = weights.split(".")[-1]
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        known = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise ValueError(f"torchvision model {model_name!r} has no weights {weights!r}; "
                         f"known: {known}") from None


def _sha256_prefix_ok(path: Path, prefix: str) -> bool:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest().startswith(prefix)


def torchvision_state_dict(weights: Any) -> dict[str, Any]:
    """The state dict of torchvision weights (``ResNet18_Weights.IMAGENET1K_V1``), read safely.

    From torch's hub cache if the file is there, after checking it against the SHA-256 prefix
    in its name (torch checks it only when it downloads: a file put in the cache by hand was
    trusted as is); else downloaded with ``check_hash=True``. Always read with
    ``weights_only=True``: torchvision's own ``weights.get_state_dict()`` unpickles with
    ``weights_only=False``, so a planted file could run code.

    Raises
    ------
    ValueError
        A cached file whose hash is not the one in its name, or that holds more than tensors;
        offline and not cached (the message says to pass a state-dict file instead).
    """
    name = f"{type(weights).__name__}.{weights.name}"
    file_name = Path(weights.url).name
    match = torch.hub.HASH_REGEX.search(file_name)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if cached.is_file():
        if match is None or not _sha256_prefix_ok(cached, match.group(1)):
            raise ValueError(f"{name}: the cached file {cached} does not have the SHA-256 its "
                             "name promises, so it is not these weights: delete it")
        try:
            return torch.load(cached, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a corrupt cache file
            raise ValueError(f"{name}: cannot read {cached} with weights_only=True "
                             f"({str(e).strip().splitlines()[0]})") from e
    try:
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu",
                                                  progress=False, check_hash=True,
                                                  weights_only=True)
    except Exception as e:  # noqa: BLE001 - offline, the download fails in many ways
        raise ValueError(f"cannot download torchvision weights {name} "
                         f"({str(e).strip().splitlines()[0]}); without network access, "
                         f"download {weights.url} elsewhere and pass that file as the weights "
                         "(a state-dict file: --weights FILE)") from e


def torchvision_preprocessor(weights: Any, model_name: str | None = None) -> ImagePreprocessor:
    """The transform of torchvision weights (``weights.transforms()``; offline).

    Parameters
    ----------
    weights
        A weights enum member (``ResNet18_Weights.IMAGENET1K_V1``) or its name, with
        ``model_name``.
    model_name
        The torchvision model name, needed when ``weights`` is a string.
    """
    if isinstance(weights, str):
        if model_name is None:
            raise ValueError("model_name is needed to look up torchvision weights by name")
        weights = torchvision_weights(model_name, weights)
    transform = weights.transforms()
    crop = transform.crop_size
    size = crop[0] if isinstance(crop, (list, tuple)) else int(crop)
    mean = tuple(getattr(transform, "mean", IMAGENET_MEAN))
    std = tuple(getattr(transform, "std", IMAGENET_STD))
    return ImagePreprocessor(transform, (3, size, size), mean, std,
                             source=f"torchvision weights {type(weights).__name__}.{weights.name}")


def hf_preprocessor(processor: Any) -> ImagePreprocessor:
    """A Hugging Face image processor (or the local path of one, loaded with
    ``AutoImageProcessor.from_pretrained``) as an :class:`ImagePreprocessor`."""
    if isinstance(processor, (str, os.PathLike)):
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(str(processor))

    def transform(image: Any) -> Tensor:
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    def side(d: Any) -> int | None:
        if isinstance(d, int):
            return d
        d = dict(d or {})
        return d.get("height") or d.get("shortest_edge")

    size = None
    if getattr(processor, "do_center_crop", False):
        size = side(getattr(processor, "crop_size", None))
    size = size or side(getattr(processor, "size", None)) or 224
    mean = getattr(processor, "image_mean", None) if getattr(processor, "do_normalize", True) \
        else None
    std = getattr(processor, "image_std", None) if mean is not None else None
    as_tuple = lambda v: None if v is None else tuple(float(a) for a in np.atleast_1d(v))
    return ImagePreprocessor(transform, (3, int(size), int(size)), as_tuple(mean), as_tuple(std),
                             source=f"Hugging Face {type(processor).__name__}")


def digits_preprocessor(size: int = 16) -> ImagePreprocessor:
    """Photos or scans of a single handwritten digit for :mod:`lrpfx.data.digits` models.

    Grey scale, inverted when the background is light (the training digits are bright ink on
    black), resized to ``size × size`` and standardised like
    :func:`lrpfx.data.digits.load_digits_tensors`.
    """
    from lrpfx.data.digits import DIGITS_MEAN, DIGITS_STD

    def transform(image: Any) -> Tensor:
        ink = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None, None]
        # the border is background: if it is light, the ink is dark and the image is inverted
        border = torch.cat([ink[..., 0, :].flatten(), ink[..., -1, :].flatten(),
                            ink[..., :, 0].flatten(), ink[..., :, -1].flatten()])
        if float(border.mean()) > 0.5:
            ink = 1 - ink
        if ink.shape[-2:] != (size, size):
            ink = torch.nn.functional.interpolate(ink, size=(size, size), mode="bilinear",
                                                  align_corners=False, antialias=True)
        return ((ink - DIGITS_MEAN) / DIGITS_STD)[0]

    return ImagePreprocessor(transform, (1, size, size), (DIGITS_MEAN,), (DIGITS_STD,),
                             mode="L", source="digits (grey, bright ink on black, "
                             f"{size}×{size}, standardised)")
