"""Loads labelled image datasets into normalised train/validation/test splits.

This is the only package that touches files and dataset libraries. Everything downstream sees a
`Dataset`: three immutable `Split`s of float32 images `(N, H, W, C)` standardised with the
per-channel mean/std of the final train split, plus the statistics needed to go back to pixel
space.

Sources (the `name` argument of `load`), one module each, found through the `_SOURCES` registry:

* `"digits"` (`digits`): scikit-learn's 1,797 8x8 handwritten digits; needs no files (the
  default).
* `"fashion_mnist"`, `"mnist"` (`idx`): the four standard IDX files in `data_dir`; Fashion-MNIST
  defaults to the Debian package `dataset-fashion-mnist`; `"mnist"` without `data_dir` reads TFDS.
* `"tfds:<name>"` (`tfds`; also the aliases `svhn_cropped`, `cifar10`, `cifar100`): a prepared
  TensorFlow Datasets image-classification dataset, read without TensorFlow where its format
  allows.
* `"npz:<path>"` (`npz`): the user's arrays `images`, `labels` and optionally `test_images`,
  `test_labels` and `class_names`.
* `"folder:<path>"` (`folder`): PNG/JPEG files in one sub-folder per class, as torchvision's
  `ImageFolder`, optionally beneath `train/` and `test/`; `image_size` resizes them.

Splits are always stratified and seeded (`splits`): where a source has no official test split
one is carved out first, and validation is always carved from train, so the test split is only
ever returned.

`make_rare` (`rare`) turns a `Dataset` into the rare-subpopulation benchmark of SPEC's evaluation
protocol (a `RareDataset`); `make_spurious` (`spurious`) into the spurious-correlation
(Colored-MNIST) benchmark, a `RareDataset` whose minority is the bias-conflicting images.
"""

from __future__ import annotations

import pathlib
import types
from collections.abc import Callable, Mapping

from jaxdd.data import digits, folder, idx, npz, splits, tfds
from jaxdd.data.idx import FASHION_MNIST_CLASS_NAMES, FASHION_MNIST_DIR
from jaxdd.data.rare import RARE_TRANSFORMS, RareDataset, make_rare
from jaxdd.data.splits import SPLIT_NAMES, Dataset, Split
from jaxdd.data.spurious import SPURIOUS_ATTRIBUTES, make_spurious
from jaxdd.data.tfds import TFDS_ALIASES

__all__ = [
    "FASHION_MNIST_CLASS_NAMES",
    "FASHION_MNIST_DIR",
    "KNOWN_NAMES",
    "NAME_FORMS",
    "RARE_TRANSFORMS",
    "SPLIT_NAMES",
    "SPURIOUS_ATTRIBUTES",
    "TFDS_ALIASES",
    "Dataset",
    "RareDataset",
    "Split",
    "is_known_name",
    "load",
    "make_rare",
    "make_spurious",
]

# The names `load` accepts, as the "unknown dataset" message lists them.
KNOWN_NAMES = (
    "digits",
    "fashion_mnist",
    "mnist",
    *TFDS_ALIASES,
    "tfds:<tfds name>",
    "npz:<path to .npz>",
    "folder:<path to class folders>",
)
# The same, as a config error lists the forms a name can take.
NAME_FORMS = ("digits", "fashion_mnist", "mnist", "tfds:<name>", "npz:<path>", "folder:<path>")


def _read_mnist(_: str, data_dir: str | None, image_size: int) -> splits.Raw:
    if data_dir is None:
        # MNIST has no system package here, so without a directory TFDS is the only place to look.
        return tfds.read("mnist", None)
    return idx.read_mnist(data_dir)


# A source reads `(argument, data_dir, image_size)`: for a "prefix:" entry the argument is the
# rest of the name, for a bare name the name itself. A new source is one module and one entry
# here (plus its form in KNOWN_NAMES and NAME_FORMS, and in _RESIZES if it takes image_size).
_SOURCES: Mapping[str, Callable[[str, str | None, int], splits.Raw]] = types.MappingProxyType(
    {
        "digits": lambda _, data_dir, image_size: digits.read(),
        "fashion_mnist": lambda _, data_dir, image_size: idx.read_fashion_mnist(data_dir),
        "mnist": _read_mnist,
        **dict.fromkeys(TFDS_ALIASES, lambda name, data_dir, image_size: tfds.read(name, data_dir)),
        "tfds:": lambda name, data_dir, image_size: tfds.read(name, data_dir),
        "npz:": lambda path, data_dir, image_size: npz.read(pathlib.Path(path).expanduser()),
        "folder:": lambda path, data_dir, image_size: folder.read(
            pathlib.Path(path).expanduser(), image_size=image_size
        ),
    }
)
# The sources that resize their images to `image_size`; the others reject a non-zero one.
_RESIZES = frozenset({"folder:"})


def _source_key(name: str) -> tuple[str, str]:
    """`(registry key, argument)` of `name`: `('npz:', path)` for 'npz:path', else the name."""
    prefix, colon, rest = name.partition(":")
    return (prefix + colon, rest) if colon else (name, name)


def is_known_name(name: str) -> bool:
    """Whether `load` has a source for `name` (it may still fail to find the data)."""
    return _source_key(name)[0] in _SOURCES


def load(
    name: str,
    *,
    data_dir: str | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_size: int = 0,
) -> Dataset:
    """Loads dataset `name` as normalised train/validation/test splits.

    Args:
      name: "digits", "fashion_mnist", "mnist", "svhn_cropped", "cifar10", "cifar100",
        "tfds:<tfds name>", "npz:<path>" or "folder:<path>" (see the package docstring).
      data_dir: where the files are: the IDX directory for "fashion_mnist"/"mnist", the TFDS
        data dir for TFDS names (None: TFDS's default). Ignored by "digits", "npz:", "folder:".
      validation_fraction: fraction of the train examples held out as validation.
      test_fraction: fraction of all examples held out as test; used only by sources without an
        official test split ("digits", "npz:" files without test arrays, "folder:" trees
        without test/).
      seed: seeds every stratified carve-out, so the same arguments give the same splits.
      image_size: "folder:" only: resize every image to this square size (bilinear); 0 keeps
        the files' size, which must then be the same for all.

    Returns:
      The `Dataset`; its mean/std are those of the final train split in [0, 1] pixel scale.

    Raises:
      ValueError: unknown `name`, invalid fractions, or malformed data.
      FileNotFoundError: the data is not on this machine; the message says how to get it.
    """
    splits.check_fraction("validation_fraction", validation_fraction)
    splits.check_fraction("test_fraction", test_fraction)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 0:
        raise ValueError(
            f"image_size must be a non-negative integer (0 = keep the size); got {image_size!r}."
        )
    key, argument = _source_key(name)
    if key not in _SOURCES:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {', '.join(KNOWN_NAMES)}.")
    if image_size and key not in _RESIZES:
        raise ValueError(
            f"image_size={image_size} applies to folder:<path> datasets only, not {name!r}; "
            "leave it at 0 (data.image_size=0)."
        )
    raw = _SOURCES[key](argument, data_dir, image_size)
    return splits.build_dataset(
        name,
        raw,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
