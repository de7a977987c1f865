"""The "digits" source: scikit-learn's 1,797 8x8 handwritten digits, which need no files."""

from __future__ import annotations

import numpy as np
from sklearn import datasets as sk_datasets

from jaxdd.data import splits

__all__ = ["read"]


def read() -> splits.Raw:
    """All 1,797 digits as one train set (the source has no official test split)."""
    digits = sk_datasets.load_digits()
    return splits.Raw(
        train=(splits.with_channel_axis(digits.images), digits.target.astype(np.int32)),
        test=None,
        pixel_scale=16.0,  # load_digits pixels are counts 0..16 of set bits in 4x4 blocks.
        class_names=splits.digit_names(10),
    )
