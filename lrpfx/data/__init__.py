"""Data and models that ship with lrpfx or load safely: scikit-learn's digits as a small
benchmark (:mod:`~lrpfx.data.digits`), the trained digits model zoo (:mod:`~lrpfx.data.zoo`),
pretrained models from ``timm:``/``torchvision:``/a file with their preprocessing
(:mod:`~lrpfx.data.models`) and real photos for demos and checks (:mod:`~lrpfx.data.photos`).
"""
