"""Independent NumPy references shared by several test files (pixel transforms, digits)."""

import numpy as np

from jaxdd import data


def raw_digit_rows(dataset: data.Dataset, split: data.Split) -> np.ndarray:
    """The original 0..16 digit pixels of `split`, recovered through `denormalize`."""
    rows = dataset.denormalize(split.images).reshape(len(split), -1) * 16
    np.testing.assert_allclose(rows, np.round(rows), atol=1e-4)  # Recovery is exact.
    return np.round(rows).astype(np.int64)


def invert(pixels: np.ndarray) -> np.ndarray:
    return 1.0 - pixels


def rotate90(pixels: np.ndarray) -> np.ndarray:
    """Counter-clockwise quarter turn by explicit indexing: out[i, j] = in[j, W - 1 - i]."""
    size = pixels.shape[1]
    i, j = np.arange(size)[:, None], np.arange(size)[None, :]
    return pixels[:, j, size - 1 - i]


def binomial_blur(pixels: np.ndarray) -> np.ndarray:
    """3x3 binomial blur, one output pixel at a time, edges replicated by clamping the index."""
    _, height, width, _ = pixels.shape
    weights = {-1: 0.25, 0: 0.5, 1: 0.25}
    out = np.zeros_like(pixels, dtype=np.float64)
    for i in range(height):
        for j in range(width):
            for di, wi in weights.items():
                for dj, wj in weights.items():
                    row = min(max(i + di, 0), height - 1)
                    col = min(max(j + dj, 0), width - 1)
                    out[:, i, j] += wi * wj * pixels[:, row, col]
    return out
