"""The "folder:<path>" source: PNG/JPEG files in one sub-folder per class, as torchvision's
`ImageFolder` lays them out; and `write`, which lays a dataset out that way.

Layout: `<path>/<class>/<image>` is the train data (validation and test are carved from it), or
`<path>/train/<class>/<image>` with an optional `<path>/test/<class>/<image>` as the official
test split, whose classes must then be the same. Class names are the sub-folder names, sorted:
label c is the c-th, as in `ImageFolder`. Only `.png`, `.jpg` and `.jpeg` files (any case) are
read, from a class folder and the folders beneath it; other files (a README, `.DS_Store`) and
anything hidden (a name starting with '.') are skipped.

Pixels are uint8 (`pixel_scale` 255). Each file is grayscale (PIL modes 1, L, LA, I, I;16) or
colour (RGB, RGBA, P, CMYK, ...); an alpha channel is dropped (not composited), 16-bit gray is
scaled to 8 bits. A dataset must be all grayscale (1 channel) or all colour (3 channels): a mix
is an error rather than a silent conversion. `image_size` resizes every image to that square
(bilinear); without it every image must already have the same size.
"""

from __future__ import annotations

import os
import pathlib
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

from jaxdd.data import splits

__all__ = ["EXTENSIONS", "folder_name", "read", "write"]

EXTENSIONS = (".png", ".jpg", ".jpeg")  # Compared case-insensitively.
_FORMATS = ("PNG", "JPEG")  # What PIL may decode them as: no other format's decoder runs.
_GRAY_MODES = frozenset({"1", "L", "LA", "La"})
_GRAY_16_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})  # 16-bit PNGs.
# What PIL raises on a file that is not a complete PNG/JPEG (UnidentifiedImageError and
# "image file is truncated" are OSErrors; a broken PNG chunk is a SyntaxError).
_UNREADABLE = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
_LAYOUT = (
    "data.name=folder:<path> expects <path>/<class name>/<image>.png (or .jpg), one sub-folder "
    "per class, optionally beneath <path>/train/ and <path>/test/"
)


def read(path: pathlib.Path, *, image_size: int = 0) -> splits.Raw:
    """The images of the class folders under `path` (see the module docstring).

    Args:
      path: the root folder.
      image_size: resize every image to `image_size` x `image_size` (bilinear); 0 keeps the
        files' size, which must then be the same for all.

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: the layout, a file or the images' channels or sizes are not as described,
        or there are fewer than 2 classes; the message names the folder or file and the fix.
    """
    train_tree, test_tree = _trees(path)
    train = _class_files(train_tree)
    test = _class_files(test_tree) if test_tree is not None else None
    if test is not None and sorted(test) != sorted(train):
        raise ValueError(
            f"The class folders of {train_tree} and {test_tree} differ: only in train/: "
            f"{sorted(set(train) - set(test))}, only in test/: {sorted(set(test) - set(train))}; "
            "both must hold the same classes."
        )
    class_names = sorted(train)
    parts = [train] if test is None else [train, test]
    labels = [
        np.repeat(np.arange(len(class_names), dtype=np.int32), [len(p[n]) for n in class_names])
        for p in parts
    ]
    # One pass over both splits, so that channels and sizes are checked across them too.
    images = _load([file for p in parts for name in class_names for file in p[name]], image_size)
    num_train = len(labels[0])
    return splits.Raw(
        train=(images[:num_train], labels[0]),
        test=(images[num_train:], labels[1]) if test is not None else None,
        pixel_scale=255.0,
        class_names=tuple(class_names),
    )


def write(
    path: pathlib.Path | str,
    images: npt.ArrayLike,
    labels: npt.ArrayLike,
    class_names: Sequence[str],
) -> None:
    """Writes a dataset as `<path>/<class name>/<index>.png`, the layout `read` takes.

    `index` is the example's position in `images`, zero-padded to at least 5 digits so that a
    class folder lists its files in order. `read` gives back the same pixels; its labels follow
    the sorted class names, so they are the same labels when `class_names` is sorted. A '/' or
    '\\' in a class name becomes '_' in its folder name.

    Args:
      path: a folder that does not exist yet or is empty.
      images: `(N, H, W, C)` uint8 pixels with C = 1 (grayscale PNGs) or 3 (RGB PNGs).
      labels: `(N,)` integers in `0..len(class_names)-1`; every class needs an image.
      class_names: one name per class, indexed by label.

    Raises:
      ValueError: malformed images, labels or class names.
      FileExistsError: `path` is a file or a non-empty folder (nothing is overwritten).
    """
    path = pathlib.Path(path)
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            "The folder writer takes uint8 images (N, H, W, C) with C = 1 or 3; got "
            f"{images.dtype} {images.shape}."
        )
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"The folder writer takes (N,) integer labels, one per image; got {labels.dtype} "
            f"{labels.shape} for {len(images)} images."
        )
    splits.check_label_range(labels, len(class_names), "The folder writer")
    folders = [folder_name(str(name)) for name in class_names]
    if len(set(folders)) != len(folders):
        raise ValueError(
            f"The folder writer: class names {list(class_names)} give duplicate folder names "
            f"{folders}; make them distinct."
        )
    empty = [class_names[c] for c in np.setdiff1d(np.arange(len(folders)), labels).tolist()]
    if empty:
        raise ValueError(
            f"The folder writer: classes {empty} have no images, and the folder source rejects an "
            "empty class; drop them from class_names and renumber the labels."
        )
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(
            f"The path {path} already exists and is not an empty folder; the folder writer "
            "never overwrites: choose a new path or remove it first."
        )
    for folder in folders:
        (path / folder).mkdir(parents=True)
    digits = max(5, len(str(len(images) - 1)))
    for index, (pixels, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        image.save(path / folders[label] / f"{index:0{digits}d}.png", format="PNG")


def folder_name(class_name: str) -> str:
    """The folder `write` puts class `class_name` in; raises unless `read` would find it."""
    folder = class_name.replace("/", "_").replace("\\", "_")
    if not folder or folder.startswith(".") or "\0" in folder:
        raise ValueError(
            f"The folder writer: class name {class_name!r} cannot be a visible folder name (empty, "
            "starting with '.' or holding a NUL); rename the class."
        )
    return folder


def _visible_dirs(directory: pathlib.Path) -> list[pathlib.Path]:
    """The sub-folders of `directory` whose names do not start with '.', sorted by name."""
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _trees(path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path | None]:
    """`(train folder, test folder or None)` of the dataset at `path`."""
    if not path.exists():
        raise FileNotFoundError(f"No folder {path}; {_LAYOUT}.")
    if not path.is_dir():
        raise ValueError(f"The path {path} is a file, not a folder; {_LAYOUT}.")
    names = {p.name for p in _visible_dirs(path)}
    if "train" not in names:
        if "test" in names:
            raise ValueError(
                f"The folder {path} has test/ but no train/; put the training classes in "
                f"{path / 'train'}, or the classes of test/ directly in {path}."
            )
        return path, None
    others = sorted(names - {"train", "test"})
    if others:
        raise ValueError(
            f"The folder {path} holds train/ beside other folders {others}; with train/ every "
            "class folder goes beneath train/ (and test/), and validation is carved from train/."
        )
    return path / "train", path / "test" if "test" in names else None


def _class_files(tree: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """The image files of each class folder of `tree`, by class name."""
    class_dirs = _visible_dirs(tree)
    if not class_dirs:
        loose = [p for p in tree.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS]
        where = f" ({len(loose)} images lie directly in it, outside any)" if loose else ""
        raise ValueError(f"The folder {tree} has no class sub-folders{where}; {_LAYOUT}.")
    files = {}
    for class_dir in class_dirs:
        files[class_dir.name] = _image_files(class_dir)
        if not files[class_dir.name]:
            raise ValueError(
                f"Class {class_dir.name!r} ({class_dir}) has no {'/'.join(EXTENSIONS)} images; "
                "add some or remove the folder."
            )
    return files


def _image_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """The visible image files in `directory` and its visible sub-folders, sorted by path."""
    found = []
    # followlinks=False: a symlink loop would otherwise never end.
    for parent, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            pathlib.Path(parent, name)
            for name in names
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in EXTENSIONS
        ]
    return sorted(found)


def _load(files: list[pathlib.Path], image_size: int) -> np.ndarray:
    """The `(N, H, W, C)` uint8 pixels of `files`, checked to share one size and channel count."""
    first = _read_image(files[0], image_size)
    images = np.empty((len(files), *first.shape), np.uint8)
    images[0] = first
    for index, path in enumerate(files[1:], start=1):
        pixels = _read_image(path, image_size)
        if (pixels.ndim == 3) != (first.ndim == 3):
            gray, colour = (path, files[0]) if first.ndim == 3 else (files[0], path)
            raise ValueError(
                f"The folder dataset mixes grayscale images (e.g. {gray}) and colour images "
                f"(e.g. {colour}); convert them all to one kind, e.g. with PIL's "
                "image.convert('RGB') or image.convert('L')."
            )
        if pixels.shape != first.shape:
            raise ValueError(
                f"Images {files[0]} ({_size(first)}) and {path} ({_size(pixels)}) differ in "
                "size; set --config.data.image_size=N (image_size=N in jaxdd.data.load) to "
                "resize every image to N x N."
            )
        images[index] = pixels
    return splits.with_channel_axis(images)


def _size(pixels: np.ndarray) -> str:
    return f"{pixels.shape[1]}x{pixels.shape[0]} pixels"


def _read_image(path: pathlib.Path, image_size: int) -> np.ndarray:
    """`(H, W)` grayscale or `(H, W, 3)` colour uint8 pixels of the file at `path`."""
    try:
        with Image.open(path, formats=_FORMATS) as image:
            image.load()  # Decodes now, so a truncated file fails here and is named.
            if image.mode in _GRAY_16_BIT_MODES:
                values = np.clip(np.asarray(image, np.int64), 0, 65535)
                image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
            else:
                image = image.convert("L" if image.mode in _GRAY_MODES else "RGB")
    except _UNREADABLE as e:
        raise ValueError(
            f"Cannot read the image file {path} ({type(e).__name__}: {e}); it is not a "
            "readable PNG or JPEG: re-save it as one, or delete it."
        ) from e
    if image_size:
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, np.uint8)
