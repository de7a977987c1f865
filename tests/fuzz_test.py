"""Property tests of the user-data loaders ("npz:<path>", "folder:<path>") on malformed input.

The property: `jaxdd.data.load` either returns a sound `Dataset` or raises exactly ValueError or
FileNotFoundError with a message that is a full sentence; never another exception type, never a
bare numpy/zipfile/PIL error. Inputs are kept tiny so that the whole file runs in seconds.
"""

import io
import pathlib
import re
import tempfile
import warnings

import hypothesis
import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import strategies as st
from PIL import Image

from jaxdd import data
from jaxdd.data import folder

_SETTINGS = hypothesis.settings(max_examples=40, deadline=None)


def _load_or_explain(name: str, image_size: int = 0) -> data.Dataset | None:
    """`data.load(name)` if it succeeds, None if it raised an allowed, well-worded error."""
    try:
        with warnings.catch_warnings():
            # A numpy warning (overflow, a mean of nothing) would mean a bad input got through.
            warnings.simplefilter("error", RuntimeWarning)
            dataset = data.load(
                name, validation_fraction=0.25, test_fraction=0.25, image_size=image_size
            )
    except (ValueError, FileNotFoundError) as e:
        assert type(e) in (ValueError, FileNotFoundError), f"{type(e).__name__}: {e}"
        message = str(e)
        assert re.fullmatch(r"[A-Z].*\.", message, re.DOTALL), message
        assert len(message.split()) >= 6, message
        return None
    _assert_sound(dataset)
    return dataset


def _assert_sound(dataset: data.Dataset) -> None:
    assert dataset.num_classes >= 2
    assert dataset.image_shape[-1] in (1, 3)
    for name in data.SPLIT_NAMES:
        split = dataset.split(name)
        assert np.isfinite(split.images).all()
        assert split.labels.min() >= 0 and split.labels.max() < dataset.num_classes


# --- npz ---------------------------------------------------------------------------------------

_DTYPES = [
    np.uint8,
    np.uint16,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
    np.bool_,
    np.complex64,
    np.dtype("U3"),
]


def _any_array(max_dims: int, max_side: int) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(
        dtype=st.sampled_from(_DTYPES),
        shape=hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side),
    )


def _valid_npz() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 4)
    return {"images": rng.integers(0, 256, (12, 4, 4), dtype=np.uint8), "labels": labels}


_IMAGES = st.one_of(
    _any_array(max_dims=5, max_side=4),
    # Right rank and size, any channel count and pixel values (NaN, inf, out of [0, 1]).
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.float32, np.float64]),
        shape=st.tuples(st.just(12), st.integers(1, 3), st.integers(1, 3), st.integers(0, 5)),
    ),
)
_LABELS = st.one_of(
    _any_array(max_dims=2, max_side=14),
    # Right shape, any integer values: negative, gaps, out of range, huge.
    hnp.arrays(dtype=st.sampled_from([np.int8, np.int64, np.uint64]), shape=12),
    hnp.arrays(dtype=np.int64, shape=12, elements=st.integers(0, 3)),
)
_MUTATIONS = st.fixed_dictionaries(
    {},
    optional={
        "images": st.one_of(st.none(), _IMAGES),
        "labels": st.one_of(st.none(), _LABELS),
        "test_images": _IMAGES,
        "test_labels": _LABELS,
        "class_names": _any_array(max_dims=2, max_side=4),
    },
)


@_SETTINGS
@hypothesis.given(mutations=_MUTATIONS)
def test_npz_with_malformed_arrays_loads_or_explains(mutations):
    arrays = {**_valid_npz(), **mutations}
    arrays = {key: value for key, value in arrays.items() if value is not None}
    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory, "user.npz")
        np.savez(path, **arrays)
        _load_or_explain(f"npz:{path}")


def test_npz_unmutated_base_loads():
    # Guards the properties above against passing vacuously: their base input is valid.
    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory, "user.npz")
        np.savez(path, **_valid_npz())
        assert _load_or_explain(f"npz:{path}") is not None


@_SETTINGS
@hypothesis.given(compressed=st.booleans(), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_npz_truncated_at_any_byte_explains(compressed, cut):
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **_valid_npz())
    content = buffer.getvalue()
    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory, "user.npz")
        path.write_bytes(content[: int(cut * len(content))])
        assert _load_or_explain(f"npz:{path}") is None


@_SETTINGS
@hypothesis.given(
    content=st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=200).map(lambda b: b"PK\x03\x04" + b),  # A zip's magic.
        st.binary(max_size=200).map(lambda b: b"\x93NUMPY" + b),  # An .npy's magic.
    )
)
def test_npz_random_bytes_explain(content):
    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory, "user.npz")
        path.write_bytes(content)
        assert _load_or_explain(f"npz:{path}") is None


def test_npz_other_files_explain():
    with tempfile.TemporaryDirectory() as directory:
        root = pathlib.Path(directory)
        np.save(root / "single.npy", np.zeros((3, 2, 2)))
        np.savez(root / "objects.npz", images=np.array([{"a": 1}], dtype=object), labels=[0])
        for name in ("missing.npz", "single.npy", "objects.npz", "."):
            assert _load_or_explain(f"npz:{root / name}") is None, name


# --- folder ------------------------------------------------------------------------------------

_MODES = ("L", "RGB", "RGBA", "P", "1", "LA", "I;16")
_IMAGE_SPEC = st.tuples(
    st.sampled_from(_MODES), st.integers(1, 4), st.integers(1, 4), st.sampled_from(["png", "jpg"])
)
_TREE = st.dictionaries(
    st.sampled_from(["a", "b", "c", "Dog", "ünï"]),
    st.lists(_IMAGE_SPEC, min_size=0, max_size=3),
    max_size=3,
)


def _write_image(path: pathlib.Path, mode: str, width: int, height: int, fmt: str) -> None:
    pixels = np.random.default_rng(width * 7 + height).integers(0, 256, (height, width, 3))
    image = Image.fromarray(pixels.astype(np.uint8)).convert(mode)
    if fmt == "jpg" and mode not in ("L", "RGB"):
        fmt = "png"  # JPEG holds neither alpha, palettes nor 16 bits.
    image.save(path.with_suffix(f".{fmt}"))


def _write_tree(root: pathlib.Path, tree: dict[str, list[tuple]]) -> None:
    for name, images in tree.items():
        (root / name).mkdir(parents=True)
        for i, spec in enumerate(images):
            _write_image(root / name / str(i), *spec)


@_SETTINGS
@hypothesis.given(
    train=_TREE,
    test=st.one_of(st.none(), _TREE),
    image_size=st.sampled_from([0, 0, 2, 3]),
)
def test_folder_trees_load_or_explain(train, test, image_size):
    with tempfile.TemporaryDirectory() as directory:
        root = pathlib.Path(directory)
        if test is None:
            _write_tree(root, train)
        else:
            _write_tree(root / "train", train)
            _write_tree(root / "test", test)
        dataset = _load_or_explain(f"folder:{root}", image_size=image_size)
        if dataset is not None and image_size:
            assert dataset.image_shape[:2] == (image_size, image_size)


_VALID_PNG = io.BytesIO()
Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(_VALID_PNG, format="PNG")
_VALID_JPEG = io.BytesIO()
Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(_VALID_JPEG, format="JPEG")


@_SETTINGS
@hypothesis.given(
    content=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),  # A PNG's magic.
        st.binary(max_size=300).map(lambda b: b"\xff\xd8\xff" + b),  # A JPEG's magic.
        st.integers(0, len(_VALID_PNG.getvalue()) - 1).map(lambda n: _VALID_PNG.getvalue()[:n]),
        st.integers(0, len(_VALID_JPEG.getvalue()) - 1).map(lambda n: _VALID_JPEG.getvalue()[:n]),
    )
)
def test_folder_random_or_truncated_image_bytes_explain(content):
    with tempfile.TemporaryDirectory() as directory:
        root = pathlib.Path(directory)
        for name in ("a", "b"):
            (root / name).mkdir()
            for i in range(6):
                (root / name / f"{i}.png").write_bytes(_VALID_PNG.getvalue())
        assert _load_or_explain(f"folder:{root}") is not None  # The base is valid.
        (root / "b" / "bad.png").write_bytes(content)
        _load_or_explain(f"folder:{root}")


@_SETTINGS
@hypothesis.given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.sampled_from([1, 3])),
    labels=st.lists(st.integers(0, 2), min_size=1, max_size=8).map(lambda x: [0, 1, 2, *x]),
    seed=st.integers(0, 2**32 - 1),
)
def test_folder_write_then_read_round_trips(shape, labels, seed):
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), *shape), dtype=np.uint8)
    labels = np.array(labels)
    with tempfile.TemporaryDirectory() as directory:
        folder.write(pathlib.Path(directory, "out"), images, labels, ["x", "y", "z"])
        raw = folder.read(pathlib.Path(directory, "out"))
    # Read class by class, each in index order: a stable sort by label.
    order = np.argsort(labels, kind="stable")
    np.testing.assert_array_equal(raw.train[0], images[order])
    np.testing.assert_array_equal(raw.train[1], labels[order])


# --- config validation ------------------------------------------------------------------------


def _leaves(config, prefix=""):
    """(dotted field, value) of every leaf of a ConfigDict."""
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


_DEFAULT_FIELDS = None


def _default_fields():
    global _DEFAULT_FIELDS
    if _DEFAULT_FIELDS is None:
        from configs import default

        _DEFAULT_FIELDS = [(f, v) for f, v in _leaves(default.get_config()) if v is not None]
    return _DEFAULT_FIELDS


def _malformed(value):
    """Values of the field's own type (what ml_collections lets through) that may be invalid."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.sampled_from([-(2**40), -2, -1, 0, 1, 2, 3, 7, 2**31, 2**62])
    if isinstance(value, float):
        return st.one_of(
            st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1.0, 1.5]),
            st.floats(-1e9, 1e9),
        )
    if isinstance(value, str):
        special = st.sampled_from(["", " ", "none", "npz:", "x" * 300])
        return st.one_of(special, st.text(max_size=12))
    return st.just(value)


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(st.data())
def test_config_validation_names_the_field_or_passes(draw):
    from configs import default
    from jaxdd import config as config_lib

    config = default.get_config()
    changed = []
    for _ in range(draw.draw(st.integers(1, 3))):
        field, value = draw.draw(st.sampled_from(_default_fields()))
        new = draw.draw(_malformed(value))
        section, _, key = field.rpartition(".")
        (config[section] if section else config)[key] = new
        changed.append(field)
    try:
        config_lib.validate(config)
    except ValueError as e:
        # A named error: the field, its value and what is expected.
        assert re.match(r"config\.[\w.]+", str(e)), str(e)
        assert str(e).endswith("."), str(e)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    st.sampled_from(["", "data.", "model.", "match.", "robust.", "syn.", "eval."]),
    st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True),
)
def test_an_undeclared_field_is_named(section, key):
    from configs import default
    from jaxdd import config as config_lib

    config = default.get_config()
    field = section + key
    hypothesis.assume(field not in config_lib.declared_fields() and key not in config)
    parent = config[section[:-1]] if section else config
    hypothesis.assume(not hasattr(parent, key))
    parent[key] = 1
    try:
        config_lib.validate(config)
    except ValueError as e:
        assert str(e).startswith(f"config.{field} ") or "no longer exists" in str(e), str(e)
    else:
        raise AssertionError(f"config.{field} was accepted")
