"""Tests for jaxdd.data.folder: the "folder:<path>" source (ImageFolder layout) and `write`."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from configs import default
from jaxdd import build, data
from jaxdd.data import folder

_RNG = np.random.default_rng(0)


def _save(path: pathlib.Path, pixels: np.ndarray, mode: str | None = None) -> pathlib.Path:
    """Writes `pixels` ((H, W) gray or (H, W, 3|4) colour uint8) as the image file `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)
    return path


def _tree(root: pathlib.Path, counts: dict[str, int], shape=(6, 5), seed: int = 0) -> np.ndarray:
    """One folder of random gray PNGs per class under `root`; returns their pixels in read order
    (classes sorted by name, files by name)."""
    rng = np.random.default_rng(seed)
    pixels = []
    for name in sorted(counts):
        for i in range(counts[name]):
            image = rng.integers(0, 256, shape, dtype=np.uint8)
            _save(root / name / f"{i:03d}.png", image)
            pixels.append(image)
    return np.stack(pixels)[..., np.newaxis] if len(shape) == 2 else np.stack(pixels)


# --- layouts and labels ------------------------------------------------------------------------


def test_flat_layout_reads_sorted_classes_pixel_exactly(tmp_path):
    # Created out of order: the labels must still follow the sorted names, as ImageFolder's.
    pixels = _tree(tmp_path, {"zebra": 4, "ant": 5, "mole": 6})
    raw = folder.read(tmp_path)
    assert raw.class_names == ("ant", "mole", "zebra")
    assert raw.test is None and raw.pixel_scale == 255.0
    images, labels = raw.train
    assert images.dtype == np.uint8 and images.shape == (15, 6, 5, 1)
    np.testing.assert_array_equal(images, pixels)
    np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], [5, 6, 4]))


def test_flat_layout_loads_with_carved_splits(tmp_path):
    _tree(tmp_path, {"a": 10, "b": 10})
    dataset = data.load(f"folder:{tmp_path}", test_fraction=0.2, validation_fraction=0.25)
    assert dataset.name == f"folder:{tmp_path}"
    assert dataset.image_shape == (6, 5, 1) and dataset.class_names == ("a", "b")
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (12, 4, 4)
    assert np.bincount(dataset.test.labels).tolist() == [2, 2]


def test_train_test_layout_keeps_the_official_test_split(tmp_path):
    _tree(tmp_path / "train", {"cat": 6, "dog": 6})
    test_pixels = _tree(tmp_path / "test", {"cat": 2, "dog": 3}, seed=1)
    raw = folder.read(tmp_path)
    assert raw.class_names == ("cat", "dog")
    np.testing.assert_array_equal(raw.test[0], test_pixels)
    np.testing.assert_array_equal(raw.test[1], [0, 0, 1, 1, 1])
    dataset = data.load(f"folder:{tmp_path}", validation_fraction=0.2)
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (9, 3, 5)


def test_train_without_test_carves_the_test_split(tmp_path):
    _tree(tmp_path / "train", {"cat": 5, "dog": 5})
    raw = folder.read(tmp_path)
    assert raw.test is None and raw.class_names == ("cat", "dog") and len(raw.train[1]) == 10


def test_skips_other_files_and_hidden_entries_and_reads_nested_and_uppercase(tmp_path):
    pixels = _tree(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "README.md").write_text("about")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\1junk")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    _save(tmp_path / "a" / ".hidden.png", np.zeros((6, 5), np.uint8))
    _save(tmp_path / ".ipynb_checkpoints" / "x.png", np.zeros((6, 5), np.uint8))
    _save(tmp_path / "b" / ".cache" / "x.png", np.zeros((6, 5), np.uint8))
    nested = _save(tmp_path / "b" / "more" / "z.PNG", np.full((6, 5), 7, np.uint8))
    upper = _save(tmp_path / "b" / "zz.JPEG", np.full((6, 5), 200, np.uint8))
    images, labels = folder.read(tmp_path).train
    assert folder.read(tmp_path).class_names == ("a", "b")
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(images[:4], pixels)
    # Sorted by path: b/000, b/001, b/more/z.PNG, b/zz.JPEG.
    assert nested.name == "z.PNG" and np.all(images[4] == 7)
    assert upper.suffix == ".JPEG" and np.all(np.abs(images[5].astype(int) - 200) <= 2)


# --- channels ----------------------------------------------------------------------------------


def test_rgb_and_rgba_read_as_three_channels_dropping_alpha(tmp_path):
    rgb = _RNG.integers(0, 256, (4, 3, 3), dtype=np.uint8)
    rgba = _RNG.integers(0, 256, (4, 3, 4), dtype=np.uint8)
    _save(tmp_path / "a" / "rgb.png", rgb)
    _save(tmp_path / "b" / "rgba.png", rgba)
    images, _ = folder.read(tmp_path).train
    assert images.shape == (2, 4, 3, 3)
    np.testing.assert_array_equal(images[0], rgb)
    np.testing.assert_array_equal(images[1], rgba[..., :3])


def test_palette_images_read_as_rgb(tmp_path):
    rgb = _RNG.integers(0, 256, (4, 3, 3), dtype=np.uint8)
    _save(tmp_path / "a" / "p.png", rgb, mode="P")
    _save(tmp_path / "b" / "rgb.png", rgb)
    images, _ = folder.read(tmp_path).train
    assert images.shape == (2, 4, 3, 3)
    # The palette quantises colours; what matters is that it decodes to the palette's RGB.
    expected = np.asarray(Image.fromarray(rgb).convert("P").convert("RGB"))
    np.testing.assert_array_equal(images[0], expected)


def test_gray_modes_read_as_one_channel(tmp_path):
    gray = _RNG.integers(0, 256, (4, 3), dtype=np.uint8)
    _save(tmp_path / "a" / "l.png", gray)
    _save(tmp_path / "a" / "la.png", np.stack([gray, 255 - gray], -1))  # LA: alpha dropped.
    _save(tmp_path / "b" / "one_bit.png", gray, mode="1")
    sixteen = gray.astype(np.uint16) * 257  # 16-bit gray: 257 * v maps back to v exactly.
    Image.fromarray(sixteen).save(tmp_path / "b" / "sixteen.png")
    assert Image.open(tmp_path / "b" / "sixteen.png").mode.startswith("I")
    images, labels = folder.read(tmp_path).train
    assert images.shape == (4, 4, 3, 1)
    np.testing.assert_array_equal(images[0, ..., 0], gray)
    np.testing.assert_array_equal(images[1, ..., 0], gray)
    # Mode '1' is thresholded to black and white by PIL's own conversion.
    assert set(np.unique(images[2]).tolist()) <= {0, 255}
    np.testing.assert_array_equal(images[3, ..., 0], gray)


def test_jpeg_gray_and_colour(tmp_path):
    smooth = np.add.outer(np.arange(8), np.arange(8)).astype(np.uint8) * 8
    _save(tmp_path / "gray" / "a.jpg", smooth)
    _save(tmp_path / "gray2" / "b.jpeg", smooth)
    images, _ = folder.read(tmp_path).train
    assert images.shape == (2, 8, 8, 1)
    np.testing.assert_allclose(images[0, ..., 0], smooth, atol=8)
    colour = tmp_path / "colour"
    _save(colour / "a" / "a.jpg", np.stack([smooth] * 3, -1))
    _save(colour / "b" / "b.jpg", np.stack([smooth] * 3, -1))
    assert folder.read(colour).train[0].shape == (2, 8, 8, 3)


def test_mixed_gray_and_colour_is_an_error_naming_one_of_each(tmp_path):
    gray = _save(tmp_path / "a" / "g.png", np.zeros((4, 4), np.uint8))
    colour = _save(tmp_path / "b" / "c.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="mixes grayscale") as error:
        data.load(f"folder:{tmp_path}")
    assert str(gray) in str(error.value) and str(colour) in str(error.value)
    assert "convert" in str(error.value)


def test_mixed_channels_across_train_and_test_is_an_error(tmp_path):
    _tree(tmp_path / "train", {"a": 2, "b": 2})
    _save(tmp_path / "test" / "a" / "c.png", np.zeros((6, 5, 3), np.uint8))
    _save(tmp_path / "test" / "b" / "c.png", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="mixes grayscale"):
        folder.read(tmp_path)


# --- sizes -------------------------------------------------------------------------------------


def test_different_sizes_without_image_size_name_two_files_and_the_fix(tmp_path):
    first = _save(tmp_path / "a" / "a.png", np.zeros((4, 4), np.uint8))
    other = _save(tmp_path / "b" / "b.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match=r"data\.image_size=N") as error:
        data.load(f"folder:{tmp_path}")
    message = str(error.value)
    assert str(first) in message and str(other) in message
    assert "4x4 pixels" in message and "4x5 pixels" in message  # Width x height.


def test_image_size_resizes_every_image_bilinearly(tmp_path):
    small = _RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    _save(tmp_path / "a" / "a.png", small)
    _save(tmp_path / "b" / "b.png", np.full((9, 7, 3), 90, np.uint8))
    images, _ = folder.read(tmp_path, image_size=5).train
    assert images.shape == (2, 5, 5, 3)
    expected = Image.fromarray(small).resize((5, 5), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(images[0], np.asarray(expected))
    # Independent of PIL: bilinear resampling keeps a constant image constant.
    assert np.all(images[1] == 90)


def test_image_size_is_threaded_from_the_config(tmp_path):
    _tree(tmp_path, {"a": 10, "b": 10}, shape=(7, 9))
    config = default.get_config()
    config.data.name = f"folder:{tmp_path}"
    config.data.image_size = 4
    dataset, rare = build.load_data(config)
    assert dataset.image_shape == (4, 4, 1) and rare is None


def test_image_size_for_another_source_is_an_error():
    with pytest.raises(ValueError, match=r"image_size=8 applies to folder:<path> datasets only"):
        data.load("digits", image_size=8)


@pytest.mark.parametrize("image_size", [-1, 2.5, True])
def test_image_size_must_be_a_non_negative_integer(image_size):
    with pytest.raises(ValueError, match="image_size must be a non-negative integer"):
        data.load("folder:/nonexistent", image_size=image_size)


# --- layout errors -----------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No folder .*nope; .*one sub-folder per class"):
        data.load(f"folder:{tmp_path / 'nope'}")


def test_a_file_instead_of_a_folder(tmp_path):
    path = _save(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="is a file, not a folder"):
        data.load(f"folder:{path}")


def test_no_class_folders_and_loose_images(tmp_path):
    with pytest.raises(ValueError, match="has no class sub-folders; data.name=folder:<path>"):
        data.load(f"folder:{tmp_path}")
    _save(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"no class sub-folders \(1 images lie directly in it"):
        data.load(f"folder:{tmp_path}")


def test_empty_class_is_named(tmp_path):
    _tree(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "README").write_text("no images here")
    with pytest.raises(ValueError, match=r"Class 'c' \(.*\) has no .png/.jpg/.jpeg images"):
        data.load(f"folder:{tmp_path}")


def test_single_class_needs_at_least_two(tmp_path):
    _tree(tmp_path, {"only": 10})
    with pytest.raises(ValueError, match=r"1 class\(es\) \['only'\]; .*at least 2 classes"):
        data.load(f"folder:{tmp_path}")


@pytest.mark.parametrize(
    "content",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40],
    ids=["empty", "text", "png header only"],
)
def test_unreadable_image_is_named(tmp_path, content):
    _tree(tmp_path, {"a": 2, "b": 2})
    bad = tmp_path / "b" / "bad.png"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="is not a readable PNG or JPEG") as error:
        data.load(f"folder:{tmp_path}")
    assert str(bad) in str(error.value)


def test_truncated_image_is_named(tmp_path):
    _tree(tmp_path, {"a": 2, "b": 2})
    good = _save(tmp_path / "b" / "big.png", _RNG.integers(0, 256, (6, 5), dtype=np.uint8))
    good.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(ValueError, match=rf"{good}.*not a readable PNG or JPEG"):
        data.load(f"folder:{tmp_path}")


def test_other_formats_are_not_decoded(tmp_path):
    _tree(tmp_path, {"a": 2, "b": 2})
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(tmp_path / "b" / "gif.png", format="GIF")
    with pytest.raises(ValueError, match=r"gif\.png .*not a readable PNG or JPEG"):
        data.load(f"folder:{tmp_path}")


def test_train_test_class_mismatch_names_the_classes(tmp_path):
    _tree(tmp_path / "train", {"cat": 2, "dog": 2, "emu": 2})
    _tree(tmp_path / "test", {"cat": 2, "dog": 2, "fox": 2})
    with pytest.raises(
        ValueError, match=r"only in train/: \['emu'\], only in test/: \['fox'\]; both must"
    ):
        data.load(f"folder:{tmp_path}")


def test_test_without_train_and_train_beside_other_folders(tmp_path):
    _tree(tmp_path / "test", {"cat": 2, "dog": 2})
    with pytest.raises(ValueError, match="has test/ but no train/"):
        data.load(f"folder:{tmp_path}")
    _tree(tmp_path / "train", {"cat": 2, "dog": 2})
    _tree(tmp_path / "val", {"cat": 2, "dog": 2})
    with pytest.raises(ValueError, match=r"train/ beside other folders \['val'\]"):
        data.load(f"folder:{tmp_path}")


def test_folder_names_are_known():
    assert data.is_known_name("folder:/a:b/c") and data.is_known_name("folder:")
    assert "folder:<path>" in data.NAME_FORMS


# --- write -------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_write_then_read_round_trips_pixel_exactly(tmp_path, channels):
    images = _RNG.integers(0, 256, (13, 7, 5, channels), dtype=np.uint8)
    labels = np.array([2, 0, 1, 1, 0, 2, 2, 0, 1, 0, 1, 2, 0])
    folder.write(tmp_path / "out", images, labels, ["ant", "bee", "cow"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ant", "bee", "cow"]
    assert (tmp_path / "out" / "ant" / "00001.png").is_file()
    mode = Image.open(tmp_path / "out" / "ant" / "00001.png").mode
    assert mode == ("L" if channels == 1 else "RGB")
    raw = folder.read(tmp_path / "out")
    assert raw.class_names == ("ant", "bee", "cow")
    # Files are read class by class, each in index order: the same as a stable sort by label.
    order = np.argsort(labels, kind="stable")
    np.testing.assert_array_equal(raw.train[0], images[order])
    np.testing.assert_array_equal(raw.train[1], labels[order])


def test_write_relabels_by_sorted_name_and_sanitises_slashes(tmp_path):
    images = _RNG.integers(0, 256, (4, 3, 3, 1), dtype=np.uint8)
    folder.write(tmp_path, images, np.array([0, 1, 0, 1]), ["T-shirt/top", "Bag"])
    raw = folder.read(tmp_path)
    assert raw.class_names == ("Bag", "T-shirt_top")
    np.testing.assert_array_equal(raw.train[0], images[[1, 3, 0, 2]])
    np.testing.assert_array_equal(raw.train[1], [0, 0, 1, 1])


def test_write_pads_indices_to_keep_their_order(tmp_path):
    images = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1).repeat(2, 1)
    folder.write(tmp_path, images, np.array([0, 1, 0, 1]), ["a", "b"])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["00000.png", "00002.png"]


def test_write_refuses_a_non_empty_folder_and_a_file(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    images, labels = np.zeros((2, 2, 2, 1), np.uint8), np.array([0, 1])
    with pytest.raises(FileExistsError, match="not an empty folder; the folder writer never"):
        folder.write(tmp_path, images, labels, ["a", "b"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    with pytest.raises(FileExistsError, match="not an empty folder"):
        folder.write(tmp_path / "keep.txt", images, labels, ["a", "b"])


@pytest.mark.parametrize(
    ("images", "labels", "names", "message"),
    [
        (np.zeros((2, 2, 2, 1), np.float32), [0, 1], ["a", "b"], r"uint8 images"),
        (np.zeros((2, 2, 2), np.uint8), [0, 1], ["a", "b"], r"\(N, H, W, C\) with C = 1 or 3"),
        (np.zeros((2, 2, 2, 4), np.uint8), [0, 1], ["a", "b"], r"C = 1 or 3; got uint8"),
        (np.zeros((2, 2, 2, 1), np.uint8), [0], ["a", "b"], r"one per image"),
        (np.zeros((2, 2, 2, 1), np.uint8), [0.0, 1.0], ["a", "b"], r"integer labels"),
        (np.zeros((2, 2, 2, 1), np.uint8), [0, 2], ["a", "b"], r"labels span 0\.\.2"),
        (np.zeros((2, 2, 2, 1), np.uint8), [0, 0], ["a", "b"], r"\['b'\] have no images"),
        (np.zeros((2, 2, 2, 1), np.uint8), [0, 1], ["a/b", "a_b"], r"duplicate folder names"),
        (np.zeros((2, 2, 2, 1), np.uint8), [0, 1], [".a", "b"], r"'\.a' cannot be a visible"),
        (np.zeros((2, 2, 2, 1), np.uint8), [0, 1], ["", "b"], r"'' cannot be a visible"),
    ],
)
def test_write_rejects_malformed_input_before_writing(tmp_path, images, labels, names, message):
    with pytest.raises(ValueError, match=message):
        folder.write(tmp_path / "out", images, np.asarray(labels), names)
    assert not (tmp_path / "out").exists()
