"""The "npz:<path>" source: the user's own arrays, checked with messages that say the fix.

The file holds `images` and `labels` and optionally `test_images`/`test_labels` (an official
test split) and `class_names`. It is read without pickles, so a data file runs no code.
"""

from __future__ import annotations

import pathlib
import zipfile
import zlib

import numpy as np

from jaxdd.data import splits

__all__ = ["read", "read_arrays"]

_NPZ_EXPECTED = (
    "expected arrays 'images' (N, H, W) or (N, H, W, C) with C = 1 or 3 as uint8 0..255 or "
    "float in [0, 1], 'labels' (N,) integers covering 0..C-1, and optionally "
    "'test_images'/'test_labels' and 'class_names' (C,)"
)
# What numpy, zipfile and zlib raise on a file that is not a complete .npz archive of plain
# arrays (a truncated download, another format, an object array that needs pickles).
_UNREADABLE = (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError)


def read(path: pathlib.Path) -> splits.Raw:
    """The checked arrays of the `.npz` file at `path`."""
    arrays = read_arrays(path)
    where = f"The npz file {path}"
    for key in ("images", "labels"):
        if key not in arrays:
            raise ValueError(
                f"{where} has no {key!r} array (has {sorted(arrays)}); {_NPZ_EXPECTED}."
            )
    if ("test_images" in arrays) != ("test_labels" in arrays):
        raise ValueError(
            f"{where} has only one of 'test_images'/'test_labels'; give both or "
            "neither (without them a stratified test split is carved)."
        )
    images, pixel_scale = _images(arrays["images"], f"{where}: 'images'")
    labels = _labels(arrays["labels"], len(images), f"{where}: 'labels'")
    present = np.unique(labels)
    num_classes = int(present[-1]) + 1
    if len(present) != num_classes:
        # The first few absent labels, found without building 0..max (max may be huge).
        seen = set(present.tolist())
        missing = [c for c in range(min(num_classes, len(present) + 5)) if c not in seen][:5]
        more = " (and more)" if num_classes - len(present) > len(missing) else ""
        raise ValueError(
            f"{where}: 'labels' must cover every integer 0..{num_classes - 1} so that class c "
            f"is label c; classes {missing}{more} have no examples."
        )
    return splits.Raw(
        train=(images, labels.astype(np.int32)),
        test=_test(arrays, images, num_classes, where) if "test_images" in arrays else None,
        pixel_scale=pixel_scale,
        class_names=_class_names(arrays.get("class_names"), num_classes, where),
    )


def read_arrays(path: pathlib.Path, expected: str = _NPZ_EXPECTED) -> dict[str, np.ndarray]:
    """Every array of the archive at `path`, read without pickles, so a data file runs no code;
    `expected` (what the file should hold) ends the error messages."""
    if not path.exists():
        raise FileNotFoundError(
            f"No npz file at {path}; data.name=npz:<path> needs a file saved with "
            f"np.savez(path, images=..., labels=...), {expected}."
        )
    if not path.is_file():
        raise ValueError(
            f"The npz path {path} is not a file; npz:<path> needs a .npz file, {expected}."
        )
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not named arrays")
        with loaded as archive:
            arrays = {key: archive[key] for key in archive.files}
        for key, value in arrays.items():
            if not isinstance(value, np.ndarray):  # A zip member that is not an .npy file.
                raise ValueError(f"its member {key!r} is not an .npy array")
    except _UNREADABLE as e:
        raise ValueError(
            f"The npz file {path} is not a readable .npz archive of plain arrays ({e}); re-save "
            f"it with np.savez(path, images=..., labels=...), {expected}."
        ) from e
    return arrays


def _test(
    arrays: dict[str, np.ndarray], train_images: np.ndarray, num_classes: int, where: str
) -> splits.Examples:
    """Checks the user's official test split against the train images and classes."""
    images, _ = _images(arrays["test_images"], f"{where}: 'test_images'")
    # Same dtype too: uint8 and float pixels are scaled differently, so they cannot be mixed.
    if images.shape[1:] != train_images.shape[1:] or (images.dtype == np.uint8) != (
        train_images.dtype == np.uint8
    ):
        raise ValueError(
            f"{where}: 'test_images' are {images.dtype} {images.shape[1:]} but "
            f"'images' are {train_images.dtype} {train_images.shape[1:]}; they must match."
        )
    labels = _labels(arrays["test_labels"], len(images), f"{where}: 'test_labels'")
    splits.check_label_range(labels, num_classes, f"{where}: 'test_labels'")
    return images, labels.astype(np.int32)


def _images(images: np.ndarray, where: str) -> tuple[np.ndarray, float]:
    """Checks user images; returns them `(N, H, W, C)` with the scale that maps them to [0, 1]."""
    if images.ndim not in (3, 4):
        raise ValueError(f"{where} has shape {images.shape}; expected (N, H, W) or (N, H, W, C).")
    if images.ndim == 4 and images.shape[-1] not in (1, 3):
        raise ValueError(
            f"{where} has {images.shape[-1]} channels (shape {images.shape}); expected 1 "
            "(grayscale) or 3 (RGB): drop an alpha channel, or save (N, H, W) for grayscale."
        )
    if 0 in images.shape[:3]:
        raise ValueError(
            f"{where} has shape {images.shape}; expected at least one image of at least 1x1 pixels."
        )
    if images.dtype == np.uint8:
        return splits.with_channel_axis(images), 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"{where} has dtype {images.dtype}; expected uint8 (0..255) or float (in [0, 1])."
        )
    if not np.isfinite(images).all():
        raise ValueError(f"{where} contains NaN or infinite pixels; all pixels must be finite.")
    # Float pixels must already be in [0, 1]: guessing a rescale could silently be wrong, and
    # `Dataset.denormalize` promises that range.
    if images.min() < 0.0 or images.max() > 1.0:
        raise ValueError(
            f"{where} spans {images.min()}..{images.max()}; float pixels must lie in [0, 1] "
            "(divide 0..255 pixels by 255, or save them as uint8)."
        )
    return splits.with_channel_axis(images), 1.0


def _labels(labels: np.ndarray, num_images: int, where: str) -> np.ndarray:
    """Checks user labels: `(N,)` non-negative integers, one per image, in their own dtype.

    Not yet cast to int32: a huge uint64 label would wrap round to a valid-looking one.
    """
    if labels.ndim != 1:
        raise ValueError(f"{where} has shape {labels.shape}; expected (N,).")
    if len(labels) != num_images:
        raise ValueError(f"{where} has {len(labels)} entries but there are {num_images} images.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where} has dtype {labels.dtype}; expected integers 0..C-1 "
            "(e.g. save labels.astype(np.int64))."
        )
    if labels.size == 0:
        raise ValueError(f"{where} is empty; expected at least one example per class.")
    if labels.min() < 0:
        raise ValueError(f"{where} contains negative values; expected integers 0..C-1.")
    return labels


def _class_names(names: np.ndarray | None, num_classes: int, where: str) -> tuple[str, ...]:
    if names is None:
        return splits.digit_names(num_classes)
    if names.shape != (num_classes,):
        raise ValueError(
            f"{where}: 'class_names' has shape {names.shape}; expected ({num_classes},), one "
            "name per class."
        )
    return tuple(str(n) for n in names.tolist())
