"""Synthetic sets in and out of jaxdd: anyone's set read for scoring, a run's set exported.

`read(path, dataset)` takes a set distilled anywhere and returns it in `dataset`'s normalised
space, ready for `report.evaluate_set`:

* a run's workdir or its `synthetic.npz` (normalised images with the `mean`/`std` they were
  normalised with; converted through pixels, so a set scored under another config's data is
  renormalised, not misread);
* an `.npz` of pixels: `images` (N, H, W), (N, H, W, C) or PyTorch's (N, C, H, W), uint8
  0..255 or float in [0, 1], and `labels` (N,) integers or (N, num_classes) soft labels
  (probabilities, rows summing to 1; scored as soft labels and reported as such); with `mean`
  and `std` (per channel,
  [0, 1] scale) the float images are taken as normalised with them (DC/DSA/DM save their sets
  normalised, as tensors: `np.savez(path, images=x.numpy(), labels=y.numpy(), mean=..., std=...)`);
  a `space` entry ('normalized' or 'unit') says which, where present (`export` writes it);
* a folder of class sub-folders of PNG/JPEG images (`jaxdd.data.folder`'s layout, which
  `export` writes); folder names must be the dataset's class names ('/' written as '_').

`export(synthetic, out)` writes a run's set for people who do not use jaxdd:
`out/images/<class>/<index>.png` and `out/synthetic.npz` with `images` (N, C, H, W) float32 in
[0, 1] (PyTorch's layout, clipped to the valid range: distillation can push pixels past it, and
the fraction clipped is stored and printed), `labels` int64 (or, for learned labels, (N, C)
float32 probabilities, `label_type` = 'soft'; the PNG folders then sort images by their most
likely class), the per-channel `mean`/`std` of the data it was distilled from ([0, 1] scale,
for `transforms.Normalize`), `class_names`, `space` = 'unit' and `layout` = 'NCHW'.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from jaxdd import artifacts, data
from jaxdd.data import folder, npz

__all__ = ["ForeignSet", "export", "read"]

_EXPECTED = (
    "a set's .npz holds 'images' (N, H, W[, C]) or (N, C, H, W) and 'labels' (N,), optionally "
    "'mean'/'std' when the images are normalised (see jaxdd.sets)"
)


@dataclasses.dataclass(frozen=True)
class ForeignSet:
    """A set read by `read`, in the dataset's normalised space."""

    images: np.ndarray  # (N, H, W, C) float32, normalised with the dataset's mean/std.
    # (N,) int32 class indices of the dataset, or (N, C) float32 probabilities (soft labels).
    labels: np.ndarray
    source: str  # What was read: 'jaxdd run', 'npz (pixels)', 'npz (normalised)', 'folder'.
    label_type: str  # 'hard': one class per image; 'soft': a distribution over classes.

    @property
    def per_class(self) -> np.ndarray:
        """Images per class (soft labels: by their most likely class)."""
        return np.bincount(hard_labels(self.labels))


def hard_labels(labels: np.ndarray) -> np.ndarray:
    """(N,) class indices: the labels themselves, or the most likely class of soft labels."""
    labels = np.asarray(labels)
    return labels.argmax(axis=1).astype(np.int32) if labels.ndim == 2 else labels


def read(path: str | pathlib.Path, dataset: data.Dataset) -> ForeignSet:
    """The set at `path` (see the module docstring) for `dataset`.

    Raises:
      FileNotFoundError: nothing at `path`.
      ValueError: the set cannot be read as described, or does not fit `dataset` (image shape,
        classes); the message says what to change.
    """
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"no synthetic set at {path}; pass a run's workdir, an .npz (images, labels) or a "
            "folder of class sub-folders."
        )
    if path.is_dir() and (path / "synthetic.npz").is_file():
        path = path / "synthetic.npz"
    if path.is_dir():
        raw = folder.read(path)
        pixels = raw.train[0].astype(np.float32) / raw.pixel_scale
        labels = _folder_labels(raw, dataset, path)
        return _fit(pixels, labels, dataset, path, source="folder")
    arrays = _load_npz(path)
    labels = _labels(arrays, dataset, path)
    images = _nhwc(arrays["images"], dataset, path)
    space = str(arrays["space"]) if "space" in arrays else None
    if space is None:
        space = "normalized" if {"mean", "std"} <= set(arrays) else "unit"
    if space == "normalized":
        for key in ("mean", "std"):
            if key not in arrays:
                raise ValueError(f"{path}: space='normalized' needs a {key!r} array (per channel).")
        pixels = images.astype(np.float32) * _channels(arrays, "std", dataset, path)
        pixels += _channels(arrays, "mean", dataset, path)
        source = "jaxdd run" if "class_names" in arrays else "npz (normalised)"
    elif space == "unit":
        pixels = _unit_pixels(images, path)
        source = "npz (pixels)"
    else:
        raise ValueError(f"{path}: space={space!r} is unknown; expected 'normalized' or 'unit'.")
    return _fit(pixels, labels, dataset, path, source=source)


def export(synthetic: artifacts.Synthetic, out: str | pathlib.Path) -> dict[str, float]:
    """Writes `synthetic` as `out/images/` and `out/synthetic.npz` (the module docstring);
    returns {'clipped_fraction': share of pixel values clipped to [0, 1]}.

    Raises:
      FileExistsError: `out` exists and is not an empty folder (nothing is overwritten).
    """
    out = pathlib.Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} already exists and is not an empty folder; export never overwrites: pass "
            "another --out or remove it first."
        )
    pixels = synthetic.pixels.astype(np.float32)
    clipped = np.clip(pixels, 0.0, 1.0)
    fraction = float(np.mean(clipped != pixels))
    labels = np.asarray(synthetic.labels)
    folder.write(
        out / "images",
        (clipped * 255).round().astype(np.uint8),
        hard_labels(labels),
        synthetic.class_names,
    )
    np.savez(
        out / "synthetic.npz",
        images=clipped.transpose(0, 3, 1, 2),
        labels=labels.astype(np.float32) if labels.ndim == 2 else labels.astype(np.int64),
        label_type="soft" if labels.ndim == 2 else "hard",
        mean=np.asarray(synthetic.mean, np.float32),
        std=np.asarray(synthetic.std, np.float32),
        class_names=np.asarray(synthetic.class_names),
        space="unit",
        layout="NCHW",
        clipped_fraction=fraction,
    )
    return {"clipped_fraction": fraction}


def _load_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    arrays = npz.read_arrays(path, expected=_EXPECTED)
    for key in ("images", "labels"):
        if key not in arrays:
            raise ValueError(f"{path} has no {key!r} array (has {sorted(arrays)}); {_EXPECTED}.")
    return arrays


def _labels(arrays: dict[str, np.ndarray], dataset: data.Dataset, path: pathlib.Path):
    labels = arrays["labels"]
    if labels.ndim == 2:
        return _soft_labels(labels, dataset, path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: 'labels' must be (N,) integers; got {labels.dtype} {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= dataset.num_classes):
        raise ValueError(
            f"{path}: labels span {labels.min()}..{labels.max()} but {dataset.name} has classes "
            f"0..{dataset.num_classes - 1}; score the set under the config of its dataset."
        )
    return labels.astype(np.int32)


def _nhwc(images: np.ndarray, dataset: data.Dataset, path: pathlib.Path) -> np.ndarray:
    """(N, H, W, C) from (N, H, W), (N, H, W, C) or (N, C, H, W), checked against `dataset`."""
    want = dataset.image_shape
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim == 4 and images.shape[1:] != want and images.shape[1:] == (want[2], *want[:2]):
        images = images.transpose(0, 2, 3, 1)  # PyTorch's layout.
    if images.ndim != 4 or images.shape[1:] != want:
        raise ValueError(
            f"{path}: 'images' have shape {images.shape} but {dataset.name}'s images are "
            f"{want} (N, H, W, C; or N, C, H, W); score the set under the config of the dataset "
            "it was distilled from."
        )
    if not (np.issubdtype(images.dtype, np.floating) or images.dtype == np.uint8):
        raise ValueError(f"{path}: 'images' have dtype {images.dtype}; expected uint8 or float.")
    if not np.isfinite(images).all():
        raise ValueError(f"{path}: 'images' contain NaN or infinite values.")
    return images


def _channels(arrays, key: str, dataset: data.Dataset, path: pathlib.Path) -> np.ndarray:
    value = np.asarray(arrays[key], np.float32).reshape(-1)
    if value.size not in (1, dataset.image_shape[-1]):
        raise ValueError(
            f"{path}: {key!r} has {value.size} values; expected one per channel "
            f"({dataset.image_shape[-1]})."
        )
    return value


def _unit_pixels(images: np.ndarray, path: pathlib.Path) -> np.ndarray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    low, high = float(images.min()), float(images.max())
    if low < -0.5 or high > 1.5:  # Far outside [0, 1]: normalised values, not pixels.
        raise ValueError(
            f"{path}: float 'images' span [{low:.2f}, {high:.2f}]: they look normalised, not "
            "pixels in [0, 1]; add the 'mean' and 'std' (per channel, [0, 1] scale) they were "
            "normalised with, or save pixels."
        )
    return images.astype(np.float32)


def _folder_labels(raw, dataset: data.Dataset, path: pathlib.Path) -> np.ndarray:
    """The folder's labels as the dataset's class indices, matched by (folder) name."""
    index = {folder.folder_name(name): c for c, name in enumerate(dataset.class_names)}
    unknown = [name for name in raw.class_names if name not in index]
    if unknown:
        raise ValueError(
            f"{path}: class folders {unknown} are not classes of {dataset.name} "
            f"({[folder.folder_name(n) for n in dataset.class_names]}); name each folder after "
            "its class."
        )
    mapping = np.asarray([index[name] for name in raw.class_names], np.int32)
    return mapping[raw.train[1]]


def _soft_labels(labels: np.ndarray, dataset: data.Dataset, path: pathlib.Path) -> np.ndarray:
    """(N, C) probabilities, checked: one column per class, finite, non-negative, rows summing
    to 1."""
    if labels.shape[1] != dataset.num_classes or not np.issubdtype(labels.dtype, np.floating):
        raise ValueError(
            f"{path}: soft 'labels' must be (N, {dataset.num_classes}) floats (one probability "
            f"per class of {dataset.name}); got {labels.dtype} {labels.shape}."
        )
    sums = labels.sum(axis=1)
    if not np.all(np.isfinite(labels)) or labels.min() < 0 or np.abs(sums - 1).max() > 1e-3:
        raise ValueError(
            f"{path}: soft 'labels' must be probabilities (finite, >= 0, rows summing to 1); "
            "pass softmax(logits), not logits."
        )
    return labels.astype(np.float32)


def _fit(pixels, labels, dataset: data.Dataset, path: pathlib.Path, *, source: str) -> ForeignSet:
    if pixels.shape[1:] != dataset.image_shape:
        raise ValueError(
            f"{path}: images are {pixels.shape[1:]} but {dataset.name}'s are "
            f"{dataset.image_shape}; score the set under the config of its dataset (or set "
            "data.image_size for a folder dataset)."
        )
    if len(pixels) == 0:
        raise ValueError(f"{path} holds no images.")
    images = (pixels - dataset.mean) / dataset.std
    return ForeignSet(
        images=images.astype(np.float32),
        labels=labels,
        source=source,
        label_type="soft" if labels.ndim == 2 else "hard",
    )
