"""Tests for jaxdd.data: `load` and its registry, every source, the split invariants, the errors."""

import dataclasses
import gzip
import pathlib
import struct
import sys
import tempfile
import types

import hypothesis
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import references
import tensorflow_datasets as tfds
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from jaxdd import data
from jaxdd.data import idx, splits
from jaxdd.data import tfds as tfds_source

# --- digits ------------------------------------------------------------------------------------


def test_digits_shapes_dtypes_and_names(digits):
    assert digits.image_shape == (8, 8, 1)
    assert digits.num_classes == 10
    assert digits.class_names == tuple(str(i) for i in range(10))
    for name in data.SPLIT_NAMES:
        split = digits.split(name)
        assert split.images.shape == (len(split), 8, 8, 1)
        assert split.images.dtype == np.float32
        assert split.labels.dtype == np.int32
    assert digits.mean.shape == digits.std.shape == (1,)
    assert digits.mean.dtype == digits.std.dtype == np.float32


def test_digits_split_sizes(digits):
    # sklearn holds out ceil(fraction * n): 360 of 1797 for test, then 144 of 1437.
    assert (len(digits.train), len(digits.validation), len(digits.test)) == (1293, 144, 360)


def test_digits_splits_partition_the_raw_rows(digits):
    raw = load_digits()
    rows = {
        name: {row.tobytes() for row in references.raw_digit_rows(digits, digits.split(name))}
        for name in data.SPLIT_NAMES
    }
    assert not rows["train"] & rows["test"]
    assert not rows["validation"] & rows["test"]
    assert not rows["train"] & rows["validation"]
    all_rows = {row.tobytes() for row in raw.data.astype(np.int64)}
    assert rows["train"] | rows["validation"] | rows["test"] == all_rows


def test_digits_splits_are_stratified(digits):
    overall = np.bincount(load_digits().target) / 1797
    for name in data.SPLIT_NAMES:
        labels = digits.split(name).labels
        assert set(labels.tolist()) == set(range(10))
        # Stratified: each class within one example of its overall share.
        np.testing.assert_array_less(np.abs(np.bincount(labels) - overall * len(labels)), 1.0)


def test_digits_is_deterministic_per_seed(digits):
    again = data.load("digits")
    other = data.load("digits", seed=1)
    for name in data.SPLIT_NAMES:
        np.testing.assert_array_equal(again.split(name).images, digits.split(name).images)
        np.testing.assert_array_equal(again.split(name).labels, digits.split(name).labels)
    assert not np.array_equal(other.test.images, digits.test.images)


def test_digits_normalised_with_train_statistics(digits):
    images = digits.train.images
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(images.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    # Independent reference: the statistics of the raw train rows in [0, 1].
    train_pixels = references.raw_digit_rows(digits, digits.train) / 16.0
    np.testing.assert_allclose(digits.mean, [train_pixels.mean()], rtol=1e-6)
    np.testing.assert_allclose(digits.std, [train_pixels.std()], rtol=1e-6)


def test_digits_denormalize_returns_unit_range(digits):
    for name in data.SPLIT_NAMES:
        pixels = digits.denormalize(digits.split(name).images)
        assert pixels.dtype == np.float32
        assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert digits.denormalize(digits.train.images).max() == pytest.approx(1.0, abs=1e-6)


def test_dataset_is_immutable(digits):
    for array in (digits.train.images, digits.test.labels, digits.mean, digits.std):
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        digits.train = digits.test  # type: ignore[misc]


def test_split_lookup_rejects_unknown_names(digits):
    assert digits.split("validation") is digits.validation
    with pytest.raises(ValueError, match="'val'.*'train', 'validation', 'test'"):
        digits.split("val")


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match=r"'imagenet'.*digits.*fashion_mnist.*tfds:.*npz:"):
        data.load("imagenet")


def test_known_names_and_forms_are_known():
    for name in (*data.KNOWN_NAMES, *data.NAME_FORMS, "tfds:mnist", "npz:/a:b/c.npz", "cifar100"):
        assert data.is_known_name(name), name
    for name in ("imagenet", "folders:/x", "npz", "tfds", "folder", "digits:", "Digits", ""):
        assert not data.is_known_name(name), name
    assert data.NAME_FORMS == (
        "digits",
        "fashion_mnist",
        "mnist",
        "tfds:<name>",
        "npz:<path>",
        "folder:<path>",
    )


def test_public_names_are_reexported():
    assert data.Dataset is splits.Dataset and data.Split is splits.Split
    assert data.SPLIT_NAMES == ("train", "validation", "test")
    assert data.FASHION_MNIST_DIR == idx.FASHION_MNIST_DIR
    assert data.TFDS_ALIASES == tfds_source.TFDS_ALIASES == ("svhn_cropped", "cifar10", "cifar100")
    assert len(data.FASHION_MNIST_CLASS_NAMES) == 10
    assert set(data.__all__) <= set(dir(data))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_fractions_must_lie_strictly_inside_unit_interval(fraction):
    with pytest.raises(ValueError, match="validation_fraction must be strictly between 0 and 1"):
        data.load("digits", validation_fraction=fraction)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    counts=st.lists(st.integers(2, 30), min_size=2, max_size=6),
    fraction=st.floats(0.05, 0.6),
    seed=st.integers(0, 2**31 - 1),
)
def test_stratified_split_partitions_and_keeps_class_shares(counts, fraction, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    indices = np.arange(len(labels))
    try:
        (kept, _), (held, _) = splits.stratified_split(
            (indices, labels), fraction=fraction, seed=seed, held="test"
        )
    except ValueError as err:  # Only the documented "too small for this many classes" case.
        assert "at least as many examples as there are classes" in str(err)
        return
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(labels)))
    assert len(held) == np.ceil(fraction * len(labels))
    expected = np.asarray(counts) * len(held) / len(labels)
    np.testing.assert_array_less(
        np.abs(np.bincount(labels[held], minlength=len(counts)) - expected), 1.0
    )


# --- IDX (Fashion-MNIST, MNIST) ----------------------------------------------------------------


def _write_idx(path: pathlib.Path, array: np.ndarray, *, magic: int | None = None) -> None:
    """Writes `array` (uint8) as an IDX file, gzipped when `path` ends in .gz."""
    magic = 0x0800 + array.ndim if magic is None else magic
    payload = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(images=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6)))
def test_idx_parser_round_trips_any_shape(images):
    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory) / "any.gz"
        _write_idx(path, images)
        np.testing.assert_array_equal(idx.read_idx(path), images)


def _write_idx_dataset(directory: pathlib.Path, *, gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (100, 6, 5), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.repeat(np.arange(10, dtype=np.uint8), 10),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (20, 6, 5), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 20, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        _write_idx(directory / (f"{stem}.gz" if gz else stem), array)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_as_fashion_mnist(tmp_path, gz):
    arrays = _write_idx_dataset(tmp_path, gz=gz)
    dataset = data.load("fashion_mnist", data_dir=str(tmp_path))
    assert dataset.image_shape == (6, 5, 1)  # Non-square, so a transposed parse would show.
    assert dataset.class_names == data.FASHION_MNIST_CLASS_NAMES
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (90, 10, 20)
    # The official test split comes back untouched, in file order.
    np.testing.assert_array_equal(dataset.test.labels, arrays["t10k-labels-idx1-ubyte"])
    pixels = dataset.denormalize(dataset.test.images)[..., 0] * 255
    np.testing.assert_allclose(pixels, arrays["t10k-images-idx3-ubyte"], atol=1e-3)


def test_idx_files_load_as_mnist_with_digit_names(tmp_path):
    _write_idx_dataset(tmp_path)
    assert data.load("mnist", data_dir=str(tmp_path)).class_names == tuple("0123456789")


def test_idx_wrong_magic_names_the_file(tmp_path):
    _write_idx_dataset(tmp_path)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    _write_idx(bad, np.zeros(100, np.uint8), magic=0x0D01)  # Float type code, not ubyte.
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz is not an IDX file"):
        data.load("fashion_mnist", data_dir=str(tmp_path))


def test_idx_truncated_file_names_the_file(tmp_path):
    arrays = _write_idx_dataset(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    _write_idx(path, arrays["t10k-images-idx3-ubyte"])
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte has \d+ bytes .* truncated"):
        data.load("fashion_mnist", data_dir=str(tmp_path))


def test_idx_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        data.load("fashion_mnist", data_dir=str(tmp_path / "missing"))


def test_idx_missing_mnist_asks_for_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pass data_dir=\.\.\. containing the four"):
        data.load("mnist", data_dir=str(tmp_path))


@pytest.mark.skipif(
    not pathlib.Path(data.FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist():
    dataset = data.load("fashion_mnist")
    assert len(dataset.train) + len(dataset.validation) == 60_000
    assert len(dataset.test) == 10_000
    assert dataset.image_shape == (28, 28, 1)
    assert np.bincount(dataset.test.labels).tolist() == [1000] * 10
    np.testing.assert_allclose(dataset.train.images.mean(), 0.0, atol=1e-4)


# --- TFDS --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tfds_name", "shape"),
    [
        ("tfds:mnist", "mnist", (28, 28, 1)),
        ("mnist", "mnist", (28, 28, 1)),  # Without data_dir, "mnist" means TFDS.
        ("svhn_cropped", "svhn_cropped", (32, 32, 3)),
        ("cifar10", "cifar10", (32, 32, 3)),
    ],
)
def test_tfds_under_mock_data(name, tfds_name, shape):
    # 200 random labels per split leave every class enough examples to stratify.
    with tfds.testing.mock_data(num_examples=200):
        dataset = data.load(name)
        expected_names = tuple(tfds.builder(tfds_name).info.features["label"].names)
    assert dataset.image_shape == shape
    assert dataset.num_classes == 10
    assert dataset.class_names == expected_names
    assert len(dataset.train) + len(dataset.validation) == 200
    assert len(dataset.test) == 200
    assert dataset.train.images.dtype == np.float32
    assert dataset.test.labels.dtype == np.int32
    assert dataset.mean.shape == (shape[-1],)


def test_tfds_not_prepared_names_the_build_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build mnist --data_dir="):
        data.load("tfds:mnist", data_dir=str(tmp_path))


def test_tfds_unknown_dataset():
    with pytest.raises(ValueError, match="TFDS has no dataset 'no_such_dataset'"):
        data.load("tfds:no_such_dataset")


def _fake_builder(monkeypatch, *, num_train: int, num_test: int) -> None:
    """Replaces `tfds.builder` with a prepared 10-class 4x4x3 dataset's builder."""
    info = types.SimpleNamespace(
        features={"image": None, "label": types.SimpleNamespace(names=list("abcdefghij"))},
        splits={
            "train": types.SimpleNamespace(num_examples=num_train),
            "test": types.SimpleNamespace(num_examples=num_test),
        },
    )
    builder = types.SimpleNamespace(info=info, data_dir="/fake", is_prepared=lambda: True)
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir: builder)


def _examples(num: int) -> list[dict[str, np.ndarray]]:
    return [{"image": np.full((4, 4, 3), i % 256, np.uint8), "label": i % 10} for i in range(num)]


class _BatchedSource:
    """A random-access source like TFDS's, counting batched reads."""

    def __init__(self, records):
        self.records, self.batches = records, 0

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __getitems__(self, keys):
        self.batches += 1
        return [self.records[k] for k in keys]


def test_tfds_reads_in_order_in_chunks(monkeypatch):
    _fake_builder(monkeypatch, num_train=100, num_test=30)
    sources = {"train": _BatchedSource(_examples(100)), "test": _BatchedSource(_examples(30))}
    monkeypatch.setattr(tfds, "data_source", lambda name, split, **kwargs: sources[split])
    monkeypatch.setattr(tfds_source, "READ_CHUNK", 16)
    dataset = data.load("tfds:fake")
    assert (sources["train"].batches, sources["test"].batches) == (7, 2)
    assert dataset.class_names == tuple("abcdefghij")
    np.testing.assert_array_equal(dataset.test.labels, np.arange(30) % 10)
    pixels = dataset.denormalize(dataset.test.images)[:, 0, 0, 0] * 255
    np.testing.assert_allclose(pixels, np.arange(30), atol=1e-3)


def _tfrecord_only(name, split, **kwargs):
    raise NotImplementedError("Random access data source for file format tfrecord")


def test_tfds_tfrecord_fallback_reads_one_batch_of_the_real_size(monkeypatch):
    _fake_builder(monkeypatch, num_train=100, num_test=20)
    monkeypatch.setattr(tfds, "data_source", _tfrecord_only)
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    batch_sizes = {}

    def fake_load(name, *, split, batch_size, data_dir, download):
        batch_sizes[split] = batch_size
        records = _examples(batch_size)
        image = np.stack([r["image"] for r in records])
        return [{"image": image, "label": np.array([r["label"] for r in records])}]

    monkeypatch.setattr(tfds, "load", fake_load)
    monkeypatch.setattr(tfds, "as_numpy", lambda dataset: dataset)
    dataset = data.load("tfds:fake")
    assert batch_sizes == {"train": 100, "test": 20}  # Never -1.
    assert len(dataset.train) + len(dataset.validation) == 100
    assert dataset.image_shape == (4, 4, 3)


def test_tfds_tfrecord_without_tensorflow_says_what_to_install(monkeypatch):
    _fake_builder(monkeypatch, num_train=50, num_test=20)
    monkeypatch.setattr(tfds, "data_source", _tfrecord_only)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # Makes `import tensorflow` fail.
    with pytest.raises(ImportError, match="pip install tensorflow.*--file_format=array_record"):
        data.load("tfds:fake")


# --- npz ---------------------------------------------------------------------------------------


def _npz(tmp_path: pathlib.Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "user.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


def _valid_arrays(num_per_class: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), num_per_class)
    images = rng.integers(0, 256, (len(labels), 5, 4), dtype=np.uint8)
    return {"images": images, "labels": labels}


def test_npz_without_test_arrays_carves_a_stratified_test_split(tmp_path):
    dataset = data.load(_npz(tmp_path, **_valid_arrays()), test_fraction=0.3)
    assert dataset.image_shape == (5, 4, 1)
    assert dataset.class_names == ("0", "1", "2")
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (18, 3, 9)
    assert np.bincount(dataset.test.labels).tolist() == [3, 3, 3]
    np.testing.assert_allclose(dataset.denormalize(dataset.train.images).max(), 1.0, atol=0.01)


def test_npz_with_test_arrays_and_class_names(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "images": rng.random((30, 5, 4, 3)).astype(np.float32),
        "labels": np.repeat(np.arange(3), 10),
        "test_images": rng.random((6, 5, 4, 3)),
        "test_labels": np.array([2, 1, 0, 0, 1, 2]),
        "class_names": np.array(["cat", "dog", "emu"]),
    }
    dataset = data.load(_npz(tmp_path, **arrays))
    assert dataset.class_names == ("cat", "dog", "emu")
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (27, 3, 6)
    # Float pixels are not rescaled, and the given test split is returned as is.
    np.testing.assert_allclose(
        dataset.denormalize(dataset.test.images), arrays["test_images"], atol=1e-6
    )
    np.testing.assert_array_equal(dataset.test.labels, arrays["test_labels"])


def test_npz_path_may_contain_colons(tmp_path):
    directory = tmp_path / "a:b"
    directory.mkdir()
    dataset = data.load(_npz(directory, **_valid_arrays()))
    assert dataset.num_classes == 3


def _replace(**changes: np.ndarray | None) -> dict[str, np.ndarray]:
    arrays = {**_valid_arrays(), **changes}
    return {key: value for key, value in arrays.items() if value is not None}


_LABELS = np.repeat(np.arange(3), 10)
_MALFORMED = {
    "missing labels": (_replace(labels=None), r"no 'labels' array .* expected arrays 'images'"),
    "missing images": (_replace(images=None), r"no 'images' array"),
    "images rank 2": (_replace(images=np.zeros((30, 20), np.uint8)), r"expected \(N, H, W\)"),
    "images rank 5": (_replace(images=np.zeros((30, 2, 2, 2, 1), np.uint8)), r"shape \(30, 2"),
    "count mismatch": (_replace(labels=_LABELS[:-1]), r"29 entries but there are 30 images"),
    "labels rank 2": (_replace(labels=_LABELS[:, None]), r"'labels' has shape \(30, 1\)"),
    "float labels": (_replace(labels=_LABELS + 0.5), r"dtype float64; expected integers"),
    "negative label": (_replace(labels=_LABELS - 1), r"negative values; expected integers 0"),
    "label gap": (_replace(labels=np.where(_LABELS == 1, 3, _LABELS)), r"classes \[1\] have no"),
    "non-finite": (
        _replace(
            images=np.where(np.arange(20).reshape(5, 4) == 3, np.nan, 0.5)[None].repeat(30, 0)
        ),
        r"NaN or infinite pixels",
    ),
    "int64 images": (_replace(images=np.zeros((30, 5, 4), np.int64)), r"expected uint8"),
    "class too small": (
        _replace(labels=np.r_[np.repeat(np.arange(2), 14), 2, 0]),
        r"class\(es\) \[2\] have fewer than 2 examples",
    ),
    "test_images alone": (_replace(test_images=np.zeros((3, 5, 4), np.uint8)), r"give both"),
    "test shape": (
        _replace(test_images=np.zeros((3, 4, 4), np.uint8), test_labels=np.arange(3)),
        r"they must match",
    ),
    "test label out of range": (
        _replace(test_images=np.zeros((3, 5, 4), np.uint8), test_labels=np.array([0, 1, 3])),
        r"labels span 0\.\.3 but the dataset has 3 classes",
    ),
    "class_names length": (_replace(class_names=np.array(["a", "b"])), r"one name per class"),
}


@pytest.mark.parametrize(("arrays", "message"), _MALFORMED.values(), ids=_MALFORMED.keys())
def test_npz_malformed_inputs_raise_helpful_errors(tmp_path, arrays, message):
    with pytest.raises(ValueError, match=message):
        data.load(_npz(tmp_path, **arrays))
