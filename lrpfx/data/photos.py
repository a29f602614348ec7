"""Real photos for demos and checks: scikit-image's bundled pictures of ImageNet-like objects
(no download), as RGB PIL images.

>>> from lrpfx.data.photos import sample_photos                       # doctest: +SKIP
>>> [name for name, image in sample_photos(["chelsea", "coffee"])]    # doctest: +SKIP
['chelsea', 'coffee']
"""

from __future__ import annotations

from typing import Any

from lrpfx.data.models import ModelLoadError

__all__ = ["PHOTOS", "sample_photos"]

#: scikit-image's bundled photos of ImageNet-like objects (no download needed), with the class
#: pretrained EfficientNet-Lite0 ranks first: chelsea (tabby/tiger cat), coffee (espresso),
#: rocket (missile), camera (tripod), stereo_motorcycle (moped), astronaut (a person: no
#: ImageNet class, a hard case).
PHOTOS = ("chelsea", "coffee", "rocket", "camera", "stereo_motorcycle", "astronaut")


def sample_photos(names: tuple[str, ...] | list[str] = PHOTOS) -> list[tuple[str, Any]]:
    """Real photos that ship with scikit-image, as ``(name, RGB PIL image)`` pairs.

    Parameters
    ----------
    names
        Names of ``skimage.data`` functions (grey images become RGB; a stereo pair gives its
        left image).

    Raises
    ------
    ModelLoadError
        scikit-image is missing (``pip install 'lrpfx[demo]'``) or has no such photo offline.
    """
    try:
        import skimage.data
    except ImportError as e:
        raise ModelLoadError("the photos ship with scikit-image: pip install 'lrpfx[demo]'") from e
    from PIL import Image

    out = []
    for name in names:
        fn = getattr(skimage.data, name, None)
        if not callable(fn):
            raise ModelLoadError(f"scikit-image has no photo {name!r}; e.g. {', '.join(PHOTOS)}")
        try:
            arr = fn()
        except Exception as e:  # noqa: BLE001 - some photos need a download (pooch)
            raise ModelLoadError(f"scikit-image photo {name!r} is not available offline ({e})"
                                 ) from e
        if isinstance(arr, tuple):
            arr = arr[0]
        out.append((name, Image.fromarray(arr).convert("RGB")))
    return out
