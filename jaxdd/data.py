"""Loads labelled image datasets into normalised train/validation/test splits.

This is the only module that touches files and dataset libraries. Everything downstream sees a
`Dataset`: three immutable `Split`s of float32 images `(N, H, W, C)` standardised with the
per-channel mean/std of the final train split, plus the statistics needed to go back to pixel
space.

Sources (the `name` argument of `load`):

* `"digits"`: scikit-learn's 1,797 8x8 handwritten digits; needs no files (the default).
* `"fashion_mnist"`, `"mnist"`: the four standard IDX files in `data_dir`; Fashion-MNIST defaults
  to the Debian package `dataset-fashion-mnist`; `"mnist"` without `data_dir` reads TFDS.
* `"tfds:<name>"` (and the aliases `svhn_cropped`, `cifar10`, `cifar100`): a prepared TensorFlow
  Datasets image-classification dataset, read without TensorFlow where its format allows.
* `"npz:<path>"`: the user's arrays `images`, `labels` and optionally `test_images`,
  `test_labels` and `class_names`.

Splits are always stratified and seeded: where a source has no official test split one is carved
out first, and validation is always carved from train, so the test split is only ever returned.

`make_rare` turns a `Dataset` into the rare-subpopulation benchmark of SPEC's evaluation protocol
(a `RareDataset`): every class gets a minority made by a fixed pixel-space transform
(`RARE_TRANSFORMS`) of a few percent of its train and validation images and of half its test
images, so worst-group accuracy over the (class, minority) groups measures the rare subgroup.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import math
import pathlib
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn import datasets as sk_datasets
from sklearn import model_selection

SPLIT_NAMES = ("train", "validation", "test")

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
# Bare names that mean `tfds:<name>`: these datasets exist here only through TFDS.
TFDS_ALIASES = ("svhn_cropped", "cifar10", "cifar100")
KNOWN_NAMES = (
    "digits",
    "fashion_mnist",
    "mnist",
    *TFDS_ALIASES,
    "tfds:<tfds name>",
    "npz:<path to .npz>",
)

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08  # IDX type code for unsigned bytes, the only type the (Fashion-)MNIST files use.
# A channel that is constant over the train split has std 0; flooring it keeps normalised pixels
# finite, and because the floored value is what `Dataset.std` stores, `denormalize` stays exact.
_MIN_STD = 1e-6
# Records read per `__getitems__` call: large enough to amortise the per-call cost, small enough
# that a batch of decoded 32x32x3 images stays a few tens of MB.
_TFDS_READ_CHUNK = 8192


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: array fields make `==` ambiguous.
class Split:
    """One split of a dataset.

    Attributes:
      images: `(N, H, W, C)` float32, normalised with the dataset's train mean/std.
      labels: `(N,)` int32 class indices in `0..num_classes-1`.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        images = np.asarray(self.images, dtype=np.float32)
        labels = np.asarray(self.labels)
        if images.ndim != 4:
            raise ValueError(f"Split images must be (N, H, W, C); got shape {images.shape}.")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"Split labels must be a 1-d integer array; got {labels.dtype} {labels.shape}."
            )
        if len(images) != len(labels):
            raise ValueError(f"Split has {len(images)} images but {len(labels)} labels.")
        # `frozen` only stops rebinding the fields; read-only views stop in-place edits too.
        object.__setattr__(self, "images", _read_only(images))
        object.__setattr__(self, "labels", _read_only(labels.astype(np.int32, copy=False)))

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: array fields make `==` ambiguous.
class Dataset:
    """A normalised dataset with its train/validation/test splits.

    Attributes:
      name: the `name` it was loaded with.
      train, validation, test: the splits; validation was carved from train.
      mean: `(C,)` float32 per-channel mean of the [0, 1]-scaled train pixels.
      std: `(C,)` float32 per-channel standard deviation of the same pixels.
      class_names: one name per class, indexed by label.
      num_classes: `len(class_names)`.
    """

    name: str
    train: Split
    validation: Split
    test: Split
    mean: np.ndarray
    std: np.ndarray
    class_names: tuple[str, ...]
    num_classes: int

    def __post_init__(self) -> None:
        if self.num_classes != len(self.class_names):
            raise ValueError(
                f"num_classes={self.num_classes} but {len(self.class_names)} class names given."
            )
        shapes = {s.images.shape[1:] for s in (self.train, self.validation, self.test)}
        if len(shapes) != 1:
            raise ValueError(f"Splits disagree on the image shape: {sorted(shapes)}.")
        channels = self.train.images.shape[-1]
        for field in ("mean", "std"):
            value = np.asarray(getattr(self, field), dtype=np.float32)
            if value.shape != (channels,):
                raise ValueError(f"{field} must have shape ({channels},); got {value.shape}.")
            object.__setattr__(self, field, _read_only(value))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(H, W, C)` of every image."""
        height, width, channels = self.train.images.shape[1:]
        return height, width, channels

    def denormalize(self, images: npt.ArrayLike) -> np.ndarray:
        """Maps normalised images `(..., C)` back to [0, 1] pixel space (float32)."""
        return np.asarray(images, dtype=np.float32) * self.std + self.mean

    def split(self, name: str) -> Split:
        """Returns the split called `name`: one of 'train', 'validation', 'test'."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"Unknown split {name!r}; expected one of {SPLIT_NAMES}.")
        return getattr(self, name)


# `(images, labels)`: images `(N, H, W, C)` in the source's own pixel scale, labels `(N,)`.
_Examples = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class _Raw:
    """A source's examples before splitting and normalisation.

    Dividing images by `pixel_scale` maps them to [0, 1]. `test` is None when the source has no
    official test split.
    """

    train: _Examples
    test: _Examples | None
    pixel_scale: float
    class_names: tuple[str, ...]


def load(
    name: str,
    *,
    data_dir: str | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Loads dataset `name` as normalised train/validation/test splits.

    Args:
      name: "digits", "fashion_mnist", "mnist", "svhn_cropped", "cifar10", "cifar100",
        "tfds:<tfds name>" or "npz:<path>" (see the module docstring).
      data_dir: where the files are: the IDX directory for "fashion_mnist"/"mnist", the TFDS
        data dir for TFDS names (None: TFDS's default). Ignored by "digits" and "npz:".
      validation_fraction: fraction of the train examples held out as validation.
      test_fraction: fraction of all examples held out as test; used only by sources without an
        official test split ("digits", "npz:" files without test arrays).
      seed: seeds every stratified carve-out, so the same arguments give the same splits.

    Returns:
      The `Dataset`; its mean/std are those of the final train split in [0, 1] pixel scale.

    Raises:
      ValueError: unknown `name`, invalid fractions, or malformed data.
      FileNotFoundError: the data is not on this machine; the message says how to get it.
    """
    _check_fraction("validation_fraction", validation_fraction)
    _check_fraction("test_fraction", test_fraction)
    raw = _read_source(name, data_dir)
    train, test = raw.train, raw.test
    if test is None:
        train, test = _stratified_split(train, fraction=test_fraction, seed=seed, held="test")
    train, validation = _stratified_split(
        train, fraction=validation_fraction, seed=seed, held="validation"
    )
    train_pixels = _to_unit_scale(train[0], raw.pixel_scale)
    # Statistics come from the final train split only, so nothing about validation or test
    # leaks into the preprocessing.
    mean, std = _channel_stats(train_pixels)

    def normalised(pixels: np.ndarray, labels: np.ndarray) -> Split:
        pixels -= mean  # In place: pixels are fresh copies, and a dataset can be large.
        pixels /= std
        return Split(images=pixels, labels=labels)

    return Dataset(
        name=name,
        train=normalised(train_pixels, train[1]),
        validation=normalised(_to_unit_scale(validation[0], raw.pixel_scale), validation[1]),
        test=normalised(_to_unit_scale(test[0], raw.pixel_scale), test[1]),
        mean=mean,
        std=std,
        class_names=raw.class_names,
        num_classes=len(raw.class_names),
    )


# --- Rare subpopulations -----------------------------------------------------------------------
# The pixel-space transforms map float32 `(N, H, W, C)` pixels in [0, 1] to the same shape and
# range; each is a fixed, seed-free function, so "the minority" is one well-defined subpopulation.


def _invert(pixels: np.ndarray) -> np.ndarray:
    """Colour inversion, `1 - x`."""
    return 1.0 - pixels


def _rotate90(pixels: np.ndarray) -> np.ndarray:
    """A quarter turn counter-clockwise in the (H, W) plane (`np.rot90`)."""
    height, width = pixels.shape[1:3]
    if height != width:
        raise ValueError(
            f"The 'rotate90' transform needs square images (a quarter turn would change the "
            f"image shape); got H x W = {height} x {width}. Use 'invert' or 'blur' instead."
        )
    return np.rot90(pixels, k=1, axes=(1, 2))


def _blur(pixels: np.ndarray) -> np.ndarray:
    """A 3x3 binomial blur (`[1, 2, 1] / 4` along H and W) per channel, replicating the edges.

    Edge replication keeps a constant image constant, and the kernel sums to 1, so pixels stay in
    [0, 1]. Small enough to blur an 8x8 digit without erasing it.
    """
    padded = np.pad(pixels, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    rows = 0.25 * padded[:, :-2] + 0.5 * padded[:, 1:-1] + 0.25 * padded[:, 2:]
    return 0.25 * rows[:, :, :-2] + 0.5 * rows[:, :, 1:-1] + 0.25 * rows[:, :, 2:]


# Read-only: which transform a name means is part of the benchmark's definition.
RARE_TRANSFORMS: Mapping[str, Callable[[np.ndarray], np.ndarray]] = types.MappingProxyType(
    {"invert": _invert, "rotate90": _rotate90, "blur": _blur}
)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: array fields make `==` ambiguous.
class RareDataset:
    """A dataset in which every class has a transformed minority subpopulation (`make_rare`).

    The groups are the (class, minority) pairs: example i of a split is in group
    `2 * label_i + minority_i`, so groups `2c` and `2c + 1` are the majority and the minority of
    class c, and worst-group accuracy over the `num_groups` groups is exact.

    Attributes:
      dataset: the `Dataset` with the minority transformed, renormalised with the statistics of
        its own train split; rows keep the order and labels of the source dataset.
      transform: the `RARE_TRANSFORMS` name applied to the minority.
      fraction: the target minority share of each class in train and validation.
      train_minority, validation_minority, test_minority: `(N,)` read-only bool arrays aligned
        with the rows of the split, True where the example was transformed.
    """

    dataset: Dataset
    transform: str
    fraction: float
    train_minority: np.ndarray
    validation_minority: np.ndarray
    test_minority: np.ndarray

    def __post_init__(self) -> None:
        for name in SPLIT_NAMES:
            mask = np.asarray(getattr(self, f"{name}_minority"))
            expected = (len(self.dataset.split(name)),)
            if mask.dtype != np.bool_ or mask.shape != expected:
                raise ValueError(
                    f"{name}_minority must be a bool array of shape {expected} (one entry per "
                    f"{name} example); got {mask.dtype} {mask.shape}."
                )
            object.__setattr__(self, f"{name}_minority", _read_only(mask))

    @property
    def num_groups(self) -> int:
        """`2 * num_classes`: a majority and a minority group per class."""
        return 2 * self.dataset.num_classes

    def minority(self, split: str) -> np.ndarray:
        """The `(N,)` bool minority mask of split 'train', 'validation' or 'test'."""
        self.dataset.split(split)  # Rejects unknown split names with the list of valid ones.
        return getattr(self, f"{split}_minority")

    def group_of(self, split: str) -> np.ndarray:
        """`(N,)` int32 group `2 * label + minority` of every example of `split`."""
        labels = self.dataset.split(split).labels
        return _read_only((2 * labels + self.minority(split)).astype(np.int32))


def make_rare(
    dataset: Dataset, *, transform: str = "invert", fraction: float = 0.05, seed: int = 0
) -> RareDataset:
    """Builds the rare-subpopulation benchmark: a transformed minority inside every class.

    Per class, `max(1, round(fraction * n))` of its n train images and as many of its validation
    images (so model selection on validation sees the minority; a class with a single validation
    image keeps it in the majority) are replaced by `RARE_TRANSFORMS[transform]` of themselves;
    its test images are split in two halves, `n // 2` transformed and the rest not, so the test
    set is balanced between majority and minority. The transform is applied in [0, 1] pixel
    space; the mean/std are then recomputed on the new train split and every split renormalised
    with them, so the stored statistics are those of the training data actually used.

    Args:
      dataset: the source dataset (e.g. from `load`).
      transform: a name in `RARE_TRANSFORMS`: 'invert' (`1 - x`), 'rotate90' (a quarter turn;
        square images only) or 'blur' (3x3 binomial).
      fraction: target minority share of each class in train and validation, in (0, 0.5).
      seed: chooses the minority rows of each class of each split.

    Returns:
      A `RareDataset` whose dataset is named `"<name>+rare-<transform>"`.

    Raises:
      ValueError: unknown `transform`, `fraction` outside (0, 0.5), a class with fewer than 2
        train images (it could not have both a minority and a majority), or non-square images
        for 'rotate90'.
    """
    if transform not in RARE_TRANSFORMS:
        raise ValueError(
            f"Unknown rare transform {transform!r}; expected one of {tuple(RARE_TRANSFORMS)}."
        )
    if not 0.0 < fraction < 0.5:
        raise ValueError(
            f"fraction must be strictly between 0 and 0.5 so that the minority stays a "
            f"minority; got {fraction}."
        )
    counts = np.bincount(dataset.train.labels, minlength=dataset.num_classes)
    if counts.min() < 2:
        sparse = np.flatnonzero(counts < 2).tolist()
        raise ValueError(
            f"Cannot make a rare subpopulation: class(es) {sparse} have fewer than 2 train "
            "examples; every class needs at least one minority and one majority example."
        )
    apply = RARE_TRANSFORMS[transform]
    # One independent stream per split: each split's minority depends only on the seed and on
    # that split's labels.
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    num_minority = {
        "train": lambda n: _rare_count(n, fraction),
        "validation": lambda n: _rare_count(n, fraction),
        "test": lambda n: n // 2,
    }
    masks, pixels = {}, {}
    for name, rng in zip(SPLIT_NAMES, rngs, strict=True):
        split = dataset.split(name)
        masks[name] = _minority_mask(split.labels, dataset.num_classes, num_minority[name], rng)
        pixels[name] = dataset.denormalize(split.images)  # A fresh float32 copy.
        pixels[name][masks[name]] = apply(pixels[name][masks[name]])
    mean, std = _channel_stats(pixels["train"])
    splits = {}
    for name in SPLIT_NAMES:
        pixels[name] -= mean  # In place, as in `load`: these are fresh copies.
        pixels[name] /= std
        splits[name] = Split(images=pixels[name], labels=dataset.split(name).labels)
    rare = Dataset(
        name=f"{dataset.name}+rare-{transform}",
        **splits,
        mean=mean,
        std=std,
        class_names=dataset.class_names,
        num_classes=dataset.num_classes,
    )
    return RareDataset(
        dataset=rare,
        transform=transform,
        fraction=fraction,
        train_minority=masks["train"],
        validation_minority=masks["validation"],
        test_minority=masks["test"],
    )


def _rare_count(num_examples: int, fraction: float) -> int:
    """Minority size of a class of `num_examples`: `round(fraction * n)`, at least 1, at most n//2.

    Rounds half up (not Python's half-to-even) so the count is within 0.5 of the target, except
    that a class of 2 or more always gets at least one minority example and never loses its
    majority (for fraction < 0.5, `n // 2` only binds at n = 1, which gets none).
    """
    return min(max(1, math.floor(fraction * num_examples + 0.5)), num_examples // 2)


def _minority_mask(
    labels: np.ndarray,
    num_classes: int,
    num_minority: Callable[[int], int],
    rng: np.random.Generator,
) -> np.ndarray:
    """`(N,)` bool: `num_minority(n_c)` rows of each class c, drawn without replacement."""
    mask = np.zeros(len(labels), dtype=bool)
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        mask[rng.choice(members, size=num_minority(len(members)), replace=False)] = True
    return mask


def _read_source(name: str, data_dir: str | None) -> _Raw:
    """Dispatches `name` to the reader of its source."""
    if name.startswith("tfds:"):
        return _read_tfds(name.removeprefix("tfds:"), data_dir)
    if name.startswith("npz:"):
        return _read_npz(pathlib.Path(name.removeprefix("npz:")).expanduser())
    if name == "mnist" and data_dir is None:
        # MNIST has no system package here, so without a directory TFDS is the only place to look.
        return _read_tfds("mnist", None)
    if name in TFDS_ALIASES:
        return _read_tfds(name, data_dir)
    readers: dict[str, Callable[[str | None], _Raw]] = {
        "digits": lambda _: _read_digits(),
        "fashion_mnist": _read_fashion_mnist,
        "mnist": _read_mnist,
    }
    if name not in readers:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {', '.join(KNOWN_NAMES)}.")
    return readers[name](data_dir)


def _stratified_split(
    examples: _Examples, *, fraction: float, seed: int, held: str
) -> tuple[_Examples, _Examples]:
    """Splits `examples` into `(kept, held_out)`, stratified by label and seeded.

    `held_out` has `ceil(fraction * N)` examples, as in sklearn. The checks up front replace
    sklearn's terse errors with ones that name the offending class and the fix.
    """
    images, labels = examples
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        sparse = classes[counts < 2].tolist()
        raise ValueError(
            f"Cannot carve a stratified {held} split: class(es) {sparse} have fewer than 2 "
            "examples; every class needs at least 2 (one to keep, one to hold out)."
        )
    num_held = math.ceil(fraction * len(labels))
    if min(num_held, len(labels) - num_held) < len(classes):
        raise ValueError(
            f"Cannot carve a stratified {held} split of {fraction} x {len(labels)} examples "
            f"({num_held} held out): each side needs at least as many examples as there are "
            f"classes ({len(classes)}); choose a fraction nearer 0.5 or supply more examples."
        )
    kept, held_out = model_selection.train_test_split(
        np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed
    )
    # Sorted: each split keeps the source order, so its content depends only on the seed.
    kept, held_out = np.sort(kept), np.sort(held_out)
    return (images[kept], labels[kept]), (images[held_out], labels[held_out])


def _to_unit_scale(images: np.ndarray, pixel_scale: float) -> np.ndarray:
    """A fresh float32 copy of `images` divided by `pixel_scale`."""
    pixels = images.astype(np.float32)
    pixels /= np.float32(pixel_scale)
    return pixels


def _channel_stats(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std `(C,)` float32 of `(N, H, W, C)` pixels."""
    means, stds = [], []
    # One full reduction per channel: numpy sums those pairwise in float64, which is accurate and
    # ~8x faster than reducing over axes (0, 1, 2) of an RGB array in one call.
    for channel in np.moveaxis(pixels, -1, 0):
        mean = channel.mean(dtype=np.float64)
        # Centre before squaring: E[x^2] - E[x]^2 cancels catastrophically on low-contrast data.
        centred = channel - np.float32(mean)
        np.square(centred, out=centred)
        means.append(mean)
        stds.append(max(math.sqrt(centred.mean(dtype=np.float64)), _MIN_STD))
    return np.array(means, dtype=np.float32), np.array(stds, dtype=np.float32)


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of `array` (the caller's own handle stays writeable)."""
    view = array.view()
    view.flags.writeable = False
    return view


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1; got {value}.")


def _digit_names(num_classes: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(num_classes))


def _with_channel_axis(images: np.ndarray) -> np.ndarray:
    """`(N, H, W)` -> `(N, H, W, 1)`; `(N, H, W, C)` unchanged."""
    return images[..., np.newaxis] if images.ndim == 3 else images


def _check_label_range(labels: np.ndarray, num_classes: int, source: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{source}: labels span {labels.min()}..{labels.max()} but the dataset has "
            f"{num_classes} classes (expected 0..{num_classes - 1})."
        )


# --- digits ------------------------------------------------------------------------------------


def _read_digits() -> _Raw:
    digits = sk_datasets.load_digits()
    return _Raw(
        train=(_with_channel_axis(digits.images), digits.target.astype(np.int32)),
        test=None,
        pixel_scale=16.0,  # load_digits pixels are counts 0..16 of set bits in 4x4 blocks.
        class_names=_digit_names(10),
    )


# --- IDX (MNIST, Fashion-MNIST) ----------------------------------------------------------------


def _read_fashion_mnist(data_dir: str | None) -> _Raw:
    directory = pathlib.Path(data_dir or FASHION_MNIST_DIR)
    fix = (
        "install the Debian package with `apt-get install -y dataset-fashion-mnist` "
        f"(it puts them in {FASHION_MNIST_DIR}), or pass data_dir=... containing the four "
        "*-ubyte.gz files"
    )
    return _read_idx_dataset(directory, FASHION_MNIST_CLASS_NAMES, fix=fix)


def _read_mnist(data_dir: str | None) -> _Raw:
    assert data_dir is not None  # `_read_source` sends data_dir=None to TFDS instead.
    fix = "pass data_dir=... containing the four *-ubyte.gz files (or load 'tfds:mnist')"
    return _read_idx_dataset(pathlib.Path(data_dir), _digit_names(10), fix=fix)


def _read_idx_dataset(directory: pathlib.Path, class_names: tuple[str, ...], *, fix: str) -> _Raw:
    paths = {key: _find_idx_file(directory, stem, fix=fix) for key, stem in _IDX_FILES.items()}
    arrays = {key: _read_idx(path) for key, path in paths.items()}
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
        _check_label_range(labels, len(class_names), str(paths[f"{split}_labels"]))
    return _Raw(
        train=(_with_channel_axis(arrays["train_images"]), arrays["train_labels"].astype(np.int32)),
        test=(_with_channel_axis(arrays["test_images"]), arrays["test_labels"].astype(np.int32)),
        pixel_scale=255.0,
        class_names=class_names,
    )


def _find_idx_file(directory: pathlib.Path, stem: str, *, fix: str) -> pathlib.Path:
    """The gzipped or the uncompressed `stem` in `directory`, preferring the gzipped one."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"No {stem}[.gz] in {directory}. To fix: {fix}.")


def _read_idx(path: pathlib.Path) -> np.ndarray:
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


# --- TFDS --------------------------------------------------------------------------------------


def _read_tfds(name: str, data_dir: str | None) -> _Raw:
    # Imported here: TFDS costs about half a second to import and only this path needs it.
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise ValueError(
            f"TFDS has no dataset {name!r}; see `tfds.list_builders()` for the names."
        ) from err
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"TFDS dataset {name!r} has features {sorted(features)}; jaxdd needs an image "
            "classification dataset with 'image' and 'label' features."
        )
    class_names = tuple(features["label"].names)
    train = _read_tfds_split(tfds, builder, name, "train", data_dir)
    test = _read_tfds_split(tfds, builder, name, "test", data_dir)
    for split, (_, labels) in (("train", train), ("test", test)):
        _check_label_range(labels, len(class_names), f"TFDS {name} {split}")
    return _Raw(
        train=train,
        test=test,
        pixel_scale=255.0,
        class_names=class_names,
    )


def _read_tfds_split(
    tfds: Any, builder: Any, name: str, split: str, data_dir: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """`(images (N, H, W, C) uint8, labels (N,) int32)` of one split of a TFDS dataset."""
    try:
        # download=False: this machine may have no internet, and a silent multi-GB download
        # is never what a loader should start.
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except (ValueError, NotImplementedError) as err:
        if not builder.is_prepared():
            raise FileNotFoundError(_not_prepared_message(name, builder.data_dir)) from err
        if not isinstance(err, NotImplementedError):
            raise
        # Prepared, but in a format without random access (tfrecord): only TensorFlow reads it.
        return _read_tfds_split_with_tensorflow(tfds, builder, name, split, data_dir)
    return _stack_examples(_read_all_records(source), f"TFDS {name} {split}")


def _not_prepared_message(name: str, builder_dir: str) -> str:
    return (
        f"TFDS dataset {name!r} is not prepared (looked in {builder_dir}). On a machine with "
        f"internet run `tfds build {name} --data_dir=DIR --file_format=array_record` (or "
        f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
        "data_dir='DIR', file_format='array_record').download_and_prepare()\"`), then copy "
        "DIR here and pass data_dir=DIR. array_record data can be read without TensorFlow."
    )


def _read_all_records(source: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every record of a TFDS data source, in order."""
    if not hasattr(source, "__getitems__"):
        return [source[i] for i in range(len(source))]
    try:
        # Batched reads let array_record fetch many records per call instead of one at a time.
        return [
            record
            for start in range(0, len(source), _TFDS_READ_CHUNK)
            for record in source.__getitems__(
                list(range(start, min(start + _TFDS_READ_CHUNK, len(source))))
            )
        ]
    except TypeError:
        # `tfds.testing.mock_data` (TFDS 4.9.10) installs `__getitems__` on its mock as a plain
        # attribute holding an unbound function, so the batched call raises TypeError there.
        # Reading one record at a time is always valid; a genuine TypeError in decoding
        # resurfaces from it, so nothing is swallowed.
        return [source[i] for i in range(len(source))]


def _stack_examples(
    records: Sequence[dict[str, Any]], source: str
) -> tuple[np.ndarray, np.ndarray]:
    if not records:
        raise ValueError(f"{source} is empty.")
    shapes = {np.shape(record["image"]) for record in records}
    if len(shapes) != 1:
        raise ValueError(
            f"{source} has images of {len(shapes)} different shapes (e.g. {sorted(shapes)[:3]}); "
            "jaxdd needs a fixed image size."
        )
    images = np.stack([record["image"] for record in records])
    labels = np.array([record["label"] for record in records], dtype=np.int32)
    return _checked_tfds_images(images, source), labels


def _checked_tfds_images(images: np.ndarray, source: str) -> np.ndarray:
    """`images` as `(N, H, W, C)` uint8; other dtypes would need a scale jaxdd cannot guess."""
    if images.dtype != np.uint8:
        raise ValueError(f"{source} has {images.dtype} images; jaxdd reads uint8 images only.")
    return _with_channel_axis(images)


def _read_tfds_split_with_tensorflow(
    tfds: Any, builder: Any, name: str, split: str, data_dir: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads a split stored as tfrecord, which needs TensorFlow, as one numpy batch."""
    try:
        importlib.import_module("tensorflow")
    except ImportError as err:
        raise ImportError(
            f"TFDS dataset {name!r} in {builder.data_dir} is stored as tfrecord, which only "
            "TensorFlow can read: `pip install tensorflow` (the 'tf' extra of jaxdd), or "
            f"re-prepare it with `tfds build {name} --file_format=array_record`."
        ) from err
    # The real example count as batch size gives exactly one batch. Never batch_size=-1: under
    # `tfds.testing.mock_data` it aborts the whole process.
    num_examples = builder.info.splits[split].num_examples
    dataset = tfds.load(
        name, split=split, batch_size=num_examples, data_dir=data_dir, download=False
    )
    batch = next(iter(tfds.as_numpy(dataset)))
    images = _checked_tfds_images(np.asarray(batch["image"]), f"TFDS {name} {split}")
    return images, np.asarray(batch["label"], dtype=np.int32)


# --- npz ---------------------------------------------------------------------------------------

_NPZ_EXPECTED = (
    "expected arrays 'images' (N, H, W) or (N, H, W, C) as uint8 0..255 or float in [0, 1], "
    "'labels' (N,) integers covering 0..C-1, and optionally 'test_images'/'test_labels' and "
    "'class_names' (C,)"
)


def _read_npz(path: pathlib.Path) -> _Raw:
    with np.load(path, allow_pickle=False) as archive:  # No pickles: a data file runs no code.
        arrays = {key: archive[key] for key in archive.files}
    where = f"npz file {path}"
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
    images, pixel_scale = _npz_images(arrays["images"], f"{where}: 'images'")
    labels = _npz_labels(arrays["labels"], len(images), f"{where}: 'labels'")
    missing = np.setdiff1d(np.arange(labels.max() + 1), labels)
    if missing.size:
        raise ValueError(
            f"{where}: 'labels' must cover every integer 0..{labels.max()} so that class c is "
            f"label c; classes {missing.tolist()} have no examples."
        )
    num_classes = int(labels.max()) + 1
    return _Raw(
        train=(images, labels),
        test=_npz_test(arrays, images, num_classes, where) if "test_images" in arrays else None,
        pixel_scale=pixel_scale,
        class_names=_npz_class_names(arrays.get("class_names"), num_classes, where),
    )


def _npz_test(
    arrays: dict[str, np.ndarray], train_images: np.ndarray, num_classes: int, where: str
) -> _Examples:
    """Checks the user's official test split against the train images and classes."""
    images, _ = _npz_images(arrays["test_images"], f"{where}: 'test_images'")
    # Same dtype too: uint8 and float pixels are scaled differently, so they cannot be mixed.
    if images.shape[1:] != train_images.shape[1:] or (images.dtype == np.uint8) != (
        train_images.dtype == np.uint8
    ):
        raise ValueError(
            f"{where}: 'test_images' are {images.dtype} {images.shape[1:]} but "
            f"'images' are {train_images.dtype} {train_images.shape[1:]}; they must match."
        )
    labels = _npz_labels(arrays["test_labels"], len(images), f"{where}: 'test_labels'")
    _check_label_range(labels, num_classes, f"{where}: 'test_labels'")
    return images, labels


def _npz_images(images: np.ndarray, where: str) -> tuple[np.ndarray, float]:
    """Checks user images; returns them `(N, H, W, C)` with the scale that maps them to [0, 1]."""
    if images.ndim not in (3, 4):
        raise ValueError(f"{where} has shape {images.shape}; expected (N, H, W) or (N, H, W, C).")
    if images.dtype == np.uint8:
        return _with_channel_axis(images), 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"{where} has dtype {images.dtype}; expected uint8 (0..255) or float (in [0, 1])."
        )
    if not np.isfinite(images).all():
        raise ValueError(f"{where} contains NaN or infinite pixels; all pixels must be finite.")
    # Float pixels are taken as already in [0, 1]: guessing a rescale could silently be wrong.
    return _with_channel_axis(images), 1.0


def _npz_labels(labels: np.ndarray, num_images: int, where: str) -> np.ndarray:
    """Checks user labels: `(N,)` non-negative integers, one per image."""
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
    return labels.astype(np.int32)


def _npz_class_names(names: np.ndarray | None, num_classes: int, where: str) -> tuple[str, ...]:
    if names is None:
        return _digit_names(num_classes)
    if names.shape != (num_classes,):
        raise ValueError(
            f"{where}: 'class_names' has shape {names.shape}; expected ({num_classes},), one "
            "name per class."
        )
    return tuple(str(n) for n in names.tolist())
