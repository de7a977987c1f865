"""The spurious-correlation benchmark (Colored-MNIST style): `make_spurious` -> `RareDataset`.

The protocol of the bias-aware distillation papers (FairDD; Cui et al.): every image is
coloured. In train and validation a fraction `1 - conflict_fraction` of each class wears its
class's colour (bias-aligned) and the rest another class's colour, drawn uniformly
(bias-conflicting); in test every image gets a uniformly random colour, so a network that
learned "colour = class" fails on most of it. The groups are (class, conflicting), as the rare
benchmark's (class, minority): worst-group and minority accuracy measure the bias-conflicting
images, so the result is a `RareDataset` whose minority masks mark them.
"""

from __future__ import annotations

import colorsys

import numpy as np

from jaxdd.data import rare, splits

__all__ = ["SPURIOUS_ATTRIBUTES", "make_spurious", "palette"]

# `data.spurious` choices.
SPURIOUS_ATTRIBUTES = ("color",)
# ITU-R BT.601 luma weights: RGB inputs are made grayscale before they are coloured.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def palette(num_classes: int) -> np.ndarray:
    """`(C, 3)` float32 RGB colours in [0, 1]: C hues evenly spaced around the HSV circle at
    full saturation and value (for 10 classes 36 degrees apart: red, orange, ..., magenta)."""
    return np.array(
        [colorsys.hsv_to_rgb(c / num_classes, 1.0, 1.0) for c in range(num_classes)], np.float32
    )


def colorize(pixels: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """`(N, H, W, 1 or 3)` pixels in [0, 1] and `(N, 3)` colours -> `(N, H, W, 3)`: the
    grayscale intensity times the colour (a white stroke takes the colour, black stays black)."""
    gray = pixels[..., 0] if pixels.shape[-1] == 1 else pixels @ _LUMA
    return gray[..., None] * colors[:, None, None, :]


def make_spurious(
    dataset: splits.Dataset,
    *,
    attribute: str = "color",
    conflict_fraction: float = 0.05,
    seed: int = 0,
) -> rare.RareDataset:
    """Builds the spurious-correlation benchmark: colour correlated with the class in training.

    Per class of n train images, `rare.rare_count(n, conflict_fraction)` (at least one) wear a
    colour of another class drawn uniformly, the others their class's colour (`palette`); the
    same for validation, so model selection sees the conflict. Every test image wears a
    uniformly random colour of the C, and is bias-conflicting when that is not its class's
    (a share (C - 1) / C of the test split). Colours are applied in [0, 1] pixel space to the
    grayscale intensity (RGB inputs are converted with BT.601 luma); mean/std are recomputed
    on the new train split and every split renormalised with them.

    Args:
      dataset: the source dataset (e.g. from `jaxdd.data.load`), grayscale or RGB.
      attribute: a name in `SPURIOUS_ATTRIBUTES` ('color').
      conflict_fraction: share of each class's train and validation images that conflict with
        the bias, in (0, 0.5).
      seed: chooses the conflicting rows and their colours, and the test colours.

    Returns:
      A `RareDataset` (3-channel images) named `"<name>+color"`, whose minority masks mark the
      bias-conflicting images and whose `transform` is `attribute`.

    Raises:
      ValueError: unknown `attribute`, `conflict_fraction` outside (0, 0.5), fewer than 2
        classes or a class with fewer than 2 train images.
    """
    if attribute not in SPURIOUS_ATTRIBUTES:
        raise ValueError(
            f"Unknown spurious attribute {attribute!r}; expected one of {SPURIOUS_ATTRIBUTES}."
        )
    rare.check_minority_split(
        dataset,
        conflict_fraction,
        name="conflict_fraction",
        benchmark="a spurious-correlation benchmark",
    )
    num_classes = dataset.num_classes
    colors = palette(num_classes)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    masks, pixels = {}, {}
    for name, rng in zip(splits.SPLIT_NAMES, rngs, strict=True):
        labels = dataset.split(name).labels
        if name == "test":
            color_of = rng.integers(num_classes, size=len(labels))
            masks[name] = color_of != labels
        else:
            masks[name] = rare.minority_mask(
                labels, num_classes, lambda n: rare.rare_count(n, conflict_fraction), rng
            )
            # A conflicting image takes one of the other C - 1 colours, uniformly.
            shift = rng.integers(1, num_classes, size=len(labels))
            color_of = np.where(masks[name], (labels + shift) % num_classes, labels)
        pixels[name] = colorize(dataset.denormalize(dataset.split(name).images), colors[color_of])
    return rare.RareDataset(
        dataset=rare.renormalised(dataset, pixels, name=f"{dataset.name}+{attribute}"),
        transform=attribute,
        fraction=conflict_fraction,
        train_minority=masks["train"],
        validation_minority=masks["validation"],
        test_minority=masks["test"],
    )
