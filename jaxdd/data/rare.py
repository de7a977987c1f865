"""The rare-subpopulation benchmark of SPEC's evaluation protocol: `make_rare` -> `RareDataset`.

Every class of a `Dataset` gets a minority made by a fixed pixel-space transform
(`RARE_TRANSFORMS`, computed by `jaxdd.shifts`) of a few percent of its train and validation
images and of half its test images, so worst-group accuracy over the (class, minority) groups
measures the rare subgroup.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Mapping

import jax
import numpy as np
from jax.typing import ArrayLike

from jaxdd import shifts
from jaxdd.data import splits

__all__ = [
    "RARE_TRANSFORMS",
    "RareDataset",
    "check_minority_split",
    "make_rare",
    "minority_mask",
    "rare_count",
    "renormalised",
]

# Each transform maps float32 `(N, H, W, C)` pixels in [0, 1] to the same shape and range, and is
# a fixed, seed-free function, so "the minority" is one well-defined subpopulation. Read-only:
# which transform a name means is part of the benchmark's definition.
RARE_TRANSFORMS: Mapping[str, Callable[[ArrayLike], jax.Array]] = types.MappingProxyType(
    {"invert": shifts.invert, "rotate90": shifts.rotate90, "blur": shifts.binomial_blur}
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
      transform: the `RARE_TRANSFORMS` name applied to the minority (or, for the
        spurious-correlation benchmark of `jaxdd.data.spurious`, its attribute: 'color').
      fraction: the target minority share of each class in train and validation.
      train_minority, validation_minority, test_minority: `(N,)` read-only bool arrays aligned
        with the rows of the split, True where the example was transformed.
    """

    dataset: splits.Dataset
    transform: str
    fraction: float
    train_minority: np.ndarray
    validation_minority: np.ndarray
    test_minority: np.ndarray

    def __post_init__(self) -> None:
        for name in splits.SPLIT_NAMES:
            mask = np.asarray(getattr(self, f"{name}_minority"))
            expected = (len(self.dataset.split(name)),)
            if mask.dtype != np.bool_ or mask.shape != expected:
                raise ValueError(
                    f"{name}_minority must be a bool array of shape {expected} (one entry per "
                    f"{name} example); got {mask.dtype} {mask.shape}."
                )
            object.__setattr__(self, f"{name}_minority", splits.read_only(mask))

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
        return splits.read_only((2 * labels + self.minority(split)).astype(np.int32))


def make_rare(
    dataset: splits.Dataset, *, transform: str = "invert", fraction: float = 0.05, seed: int = 0
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
      dataset: the source dataset (e.g. from `jaxdd.data.load`).
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
    _check_arguments(dataset, transform, fraction)
    apply = RARE_TRANSFORMS[transform]
    # One independent stream per split: each split's minority depends only on the seed and on
    # that split's labels.
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    num_minority = {
        "train": lambda n: rare_count(n, fraction),
        "validation": lambda n: rare_count(n, fraction),
        "test": lambda n: n // 2,
    }
    masks, pixels = {}, {}
    for name, rng in zip(splits.SPLIT_NAMES, rngs, strict=True):
        split = dataset.split(name)
        masks[name] = minority_mask(split.labels, dataset.num_classes, num_minority[name], rng)
        pixels[name] = dataset.denormalize(split.images)  # A fresh float32 copy.
        pixels[name][masks[name]] = np.asarray(apply(pixels[name][masks[name]]))
    return RareDataset(
        dataset=renormalised(dataset, pixels, name=f"{dataset.name}+rare-{transform}"),
        transform=transform,
        fraction=fraction,
        train_minority=masks["train"],
        validation_minority=masks["validation"],
        test_minority=masks["test"],
    )


def _check_arguments(dataset: splits.Dataset, transform: str, fraction: float) -> None:
    """Raises the `ValueError`s of `make_rare`, each naming the fix."""
    if transform not in RARE_TRANSFORMS:
        raise ValueError(
            f"Unknown rare transform {transform!r}; expected one of {tuple(RARE_TRANSFORMS)}."
        )
    check_minority_split(dataset, fraction, name="fraction", benchmark="a rare subpopulation")
    height, width, _ = dataset.image_shape
    if transform == "rotate90" and height != width:
        raise ValueError(
            f"The 'rotate90' transform needs square images (a quarter turn would change the "
            f"image shape); got H x W = {height} x {width}. Use 'invert' or 'blur' instead."
        )


def renormalised(
    dataset: splits.Dataset, pixels: dict[str, np.ndarray], *, name: str
) -> splits.Dataset:
    """`dataset` with its splits' images replaced by `pixels` (split name -> [0, 1] images in
    the same row order), standardised with the new train split's statistics (IN PLACE, as
    `splits.normalised_split`), under `name`."""
    mean, std = splits.channel_stats(pixels["train"])
    return splits.Dataset(
        name=name,
        **{
            split: splits.normalised_split(pixels[split], dataset.split(split).labels, mean, std)
            for split in splits.SPLIT_NAMES
        },
        mean=mean,
        std=std,
        class_names=dataset.class_names,
        num_classes=dataset.num_classes,
    )


def check_minority_split(
    dataset: splits.Dataset, fraction: float, *, name: str, benchmark: str
) -> None:
    """The checks every minority benchmark (rare, spurious) shares: the minority share
    `fraction` (argument `name`) in (0, 0.5), and two or more train images in every class so
    that each has a minority and a majority example."""
    if not 0.0 < fraction < 0.5:
        raise ValueError(
            f"{name} must be strictly between 0 and 0.5 so that the minority stays a "
            f"minority; got {fraction}."
        )
    counts = np.bincount(dataset.train.labels, minlength=dataset.num_classes)
    if counts.min() < 2:
        sparse = np.flatnonzero(counts < 2).tolist()
        raise ValueError(
            f"Cannot make {benchmark}: class(es) {sparse} have fewer than 2 train examples; "
            "every class needs at least one minority and one majority example."
        )


def rare_count(num_examples: int, fraction: float) -> int:
    """Minority size of a class of `num_examples`: `round(fraction * n)`, at least 1, at most n//2.

    Rounds half up (not Python's half-to-even) so the count is within 0.5 of the target, except
    that a class of 2 or more always gets at least one minority example and never loses its
    majority (for fraction < 0.5, `n // 2` only binds at n = 1, which gets none).
    """
    return min(max(1, math.floor(fraction * num_examples + 0.5)), num_examples // 2)


def minority_mask(
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
