"""Data and models that ship with lrpfx: scikit-learn's digits as a small benchmark
(:mod:`~lrpfx.data.digits`) and the trained digits model zoo (:mod:`~lrpfx.data.zoo`).
"""
