"""The "fashion_mnist" and "mnist" sources: the four standard IDX files of a directory.

Fashion-MNIST defaults to the directory of the Debian package `dataset-fashion-mnist`; MNIST has
no such package, so `jaxdd.data.load` reads it from TFDS when no directory is given.
"""

from __future__ import annotations

import gzip
import math
import pathlib

import numpy as np

from jaxdd.data import splits

__all__ = [
    "FASHION_MNIST_CLASS_NAMES",
    "FASHION_MNIST_DIR",
    "read_fashion_mnist",
    "read_idx",
    "read_mnist",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08  # IDX type code for unsigned bytes, the only type the (Fashion-)MNIST files use.


def read_fashion_mnist(data_dir: str | None) -> splits.Raw:
    """Fashion-MNIST from `data_dir` (None: `FASHION_MNIST_DIR`)."""
    directory = pathlib.Path(data_dir or FASHION_MNIST_DIR)
    fix = (
        "install the Debian package with `apt-get install -y dataset-fashion-mnist` "
        f"(it puts them in {FASHION_MNIST_DIR}), or pass data_dir=... containing the four "
        "*-ubyte.gz files"
    )
    return _read_idx_dataset(directory, FASHION_MNIST_CLASS_NAMES, fix=fix)


def read_mnist(data_dir: str) -> splits.Raw:
    """MNIST from the IDX files in `data_dir`."""
    fix = "pass data_dir=... containing the four *-ubyte.gz files (or load 'tfds:mnist')"
    return _read_idx_dataset(pathlib.Path(data_dir), splits.digit_names(10), fix=fix)


def _read_idx_dataset(
    directory: pathlib.Path, class_names: tuple[str, ...], *, fix: str
) -> splits.Raw:
    paths = {key: _find_idx_file(directory, stem, fix=fix) for key, stem in _IDX_FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise ValueError(
                f"{paths[f'{split}_images']} / {paths[f'{split}_labels']}: expected 3-d images "
                f"and 1-d labels; got {images.ndim}-d and {labels.ndim}-d."
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{paths[f'{split}_images']} has {len(images)} images but "
                f"{paths[f'{split}_labels']} has {len(labels)} labels."
            )
        splits.check_label_range(labels, len(class_names), str(paths[f"{split}_labels"]))
    return splits.Raw(
        train=(
            splits.with_channel_axis(arrays["train_images"]),
            arrays["train_labels"].astype(np.int32),
        ),
        test=(
            splits.with_channel_axis(arrays["test_images"]),
            arrays["test_labels"].astype(np.int32),
        ),
        pixel_scale=255.0,
        class_names=class_names,
    )


def _find_idx_file(directory: pathlib.Path, stem: str, *, fix: str) -> pathlib.Path:
    """The gzipped or the uncompressed `stem` in `directory`, preferring the gzipped one."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"No {stem}[.gz] in {directory}. To fix: {fix}.")


def read_idx(path: pathlib.Path) -> np.ndarray:
    """Parses an IDX file of unsigned bytes (gzipped or not) into an array of its dims."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic: sniffed rather than trusting the file name.
        data = gzip.decompress(data)
    # Header: two zero bytes, the element type code, the number of dims, then one big-endian
    # uint32 per dim (http://yann.lecun.com/exdb/mnist/).
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != _IDX_UBYTE or data[3] == 0:
        raise ValueError(
            f"{path} is not an IDX file of unsigned bytes: magic number {data[:4].hex()!r}, "
            "expected 00000801 (labels) or 00000803 (images)."
        )
    num_dims = data[3]
    header_size = 4 + 4 * num_dims
    if len(data) < header_size:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, header alone is {header_size}.")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=num_dims, offset=4))
    expected = header_size + math.prod(dims)
    if len(data) != expected:
        raise ValueError(
            f"{path} has {len(data)} bytes but its header {dims} implies {expected}; "
            "the file is truncated or corrupt."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)
