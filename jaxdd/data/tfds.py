"""The "tfds:<name>" source: a prepared TensorFlow Datasets image-classification dataset.

Read through `tfds.data_source` (random access, no TensorFlow) where the prepared format allows
it (array_record); a dataset prepared as tfrecord falls back to `tfds.load`, which needs
TensorFlow. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdd.data import splits

__all__ = ["READ_CHUNK", "TFDS_ALIASES", "read"]

# Bare names that mean `tfds:<name>`: these datasets exist here only through TFDS.
TFDS_ALIASES = ("svhn_cropped", "cifar10", "cifar100")
# Records read per `__getitems__` call: large enough to amortise the per-call cost, small enough
# that a batch of decoded 32x32x3 images stays a few tens of MB.
READ_CHUNK = 8192


def read(name: str, data_dir: str | None) -> splits.Raw:
    """The train and test splits of TFDS dataset `name` in `data_dir` (None: TFDS's default)."""
    # Imported here: TFDS costs about half a second to import and only this source needs it.
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
    train = _read_split(tfds, builder, name, "train", data_dir)
    test = _read_split(tfds, builder, name, "test", data_dir)
    for split, (_, labels) in (("train", train), ("test", test)):
        splits.check_label_range(labels, len(class_names), f"TFDS {name} {split}")
    return splits.Raw(train=train, test=test, pixel_scale=255.0, class_names=class_names)


def _read_split(
    tfds: Any, builder: Any, name: str, split: str, data_dir: str | None
) -> splits.Examples:
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
        return _read_split_with_tensorflow(tfds, builder, name, split, data_dir)
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
            for start in range(0, len(source), READ_CHUNK)
            for record in source.__getitems__(
                list(range(start, min(start + READ_CHUNK, len(source))))
            )
        ]
    except TypeError:
        # `tfds.testing.mock_data` (TFDS 4.9.10) installs `__getitems__` on its mock as a plain
        # attribute holding an unbound function, so the batched call raises TypeError there.
        # Reading one record at a time is always valid; a genuine TypeError in decoding
        # resurfaces from it, so nothing is swallowed.
        return [source[i] for i in range(len(source))]


def _stack_examples(records: Sequence[dict[str, Any]], source: str) -> splits.Examples:
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
    return _checked_images(images, source), labels


def _checked_images(images: np.ndarray, source: str) -> np.ndarray:
    """`images` as `(N, H, W, C)` uint8; other dtypes would need a scale jaxdd cannot guess."""
    if images.dtype != np.uint8:
        raise ValueError(f"{source} has {images.dtype} images; jaxdd reads uint8 images only.")
    return splits.with_channel_axis(images)


def _read_split_with_tensorflow(
    tfds: Any, builder: Any, name: str, split: str, data_dir: str | None
) -> splits.Examples:
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
    images = _checked_images(np.asarray(batch["image"]), f"TFDS {name} {split}")
    return images, np.asarray(batch["label"], dtype=np.int32)
