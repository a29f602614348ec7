"""Reading weights files safely.

Every file a user or a folder supplies is read with ``torch.load(weights_only=True)``: tensors and
plain containers only, never pickled code. Named torchvision weights come from torch's hub cache
and are checked against the SHA-256 prefix in their file name before they are read (torch itself
checks it only when it downloads the file, so a file put in the cache by hand was trusted as is).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrpfx.apps.cli.errors import CLIError, first_line

__all__ = ["fit_state_dict", "read_state_dict", "torchvision_state_dict"]


def read_state_dict(path: str | os.PathLike, flag: str = "--weights") -> dict[str, Any]:
    """A state dict from a file: plain, or under a ``"state_dict"``/``"model"`` key (training
    checkpoints); a ``module.`` prefix (DataParallel) is removed.

    Raises
    ------
    CLIError
        No such file, not loadable with ``weights_only=True``, or not a state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{flag} {p}: no such file")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
        raise CLIError(f"{flag} {p}: not a PyTorch state dict readable with weights_only=True "
                       f"({first_line(e)})") from e
    for key in ("state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not isinstance(blob, dict) or not all(isinstance(k, str) for k in blob):
        raise CLIError(f"{flag} {p}: expected a state dict (names to tensors), found "
                       f"{type(blob).__name__}")
    return {k.removeprefix("module."): v for k, v in blob.items()}


def fit_state_dict(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Load ``state`` into ``model``, every key and shape matching, or say what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and isinstance(state[k], torch.Tensor)
             and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s), e.g. {missing[0]!r}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r}")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} tensor(s) of another shape, e.g. {k!r} is "
                     f"{tuple(state[k].shape)} in the file and {tuple(own[k].shape)} in the "
                     "model (another --num-classes?)")
    if parts:
        raise CLIError(f"{source} does not fit the model: {'; '.join(parts)}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:  # e.g. a non-tensor value
        raise CLIError(f"{source} does not fit the model: {first_line(e)}") from e


def _sha256_prefix_ok(path: Path, prefix: str) -> bool:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest().startswith(prefix)


def torchvision_state_dict(enum: Any) -> dict[str, Any]:
    """The state dict of torchvision weights (``ResNet18_Weights.IMAGENET1K_V1``): from torch's
    hub cache if there, hash-checked, else downloaded with ``check_hash=True``; always read with
    ``weights_only=True`` (torchvision's own ``get_state_dict`` reads it with
    ``weights_only=False``).

    Raises
    ------
    CLIError
        Offline and not cached, or a cached file whose hash is not the one in its name.
    """
    name = f"{type(enum).__name__}.{enum.name}"
    file_name = Path(enum.url).name
    match = torch.hub.HASH_REGEX.search(file_name)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if cached.is_file():
        if match is None or not _sha256_prefix_ok(cached, match.group(1)):
            raise CLIError(f"--weights {enum.name}: the cached file {cached} does not have the "
                           f"SHA-256 its name promises; it is not {name}: delete it")
        try:
            return torch.load(cached, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a corrupt cache file
            raise CLIError(f"--weights {enum.name}: cannot read {cached} ({first_line(e)})") \
                from e
    try:
        return torch.hub.load_state_dict_from_url(enum.url, map_location="cpu", progress=False,
                                                  check_hash=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - offline, the download fails in many ways
        raise CLIError(f"cannot download torchvision weights {name} ({first_line(e)}); "
                       f"without network access, download {enum.url} elsewhere and pass the "
                       "file: --weights FILE") from e
