"""spray.data: manifests and folders become samples; bad input is named, not fatal where it can be skipped."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from spray.config import DataConfig, ImageConfig
from spray.data import (
    Dataset,
    Sample,
    dataset_token,
    file_digest,
    load_dataset,
    load_pixels,
    read_pixels,
    to_model_input,
)
from spray.errors import DataError


def write_png(path: Path, value: int = 128, size: tuple[int, int] = (6, 4), mode: str = "L") -> Path:
    """A small image of one grey value; size is (width, height) as PIL takes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, value // 2, 255 - value)
    Image.new(mode, size, color).save(path)
    return path


def write_manifest(folder: Path, text: str, name: str = "manifest.csv") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def manifest_config(path: Path, **kwargs) -> DataConfig:
    return DataConfig(manifest=path, **kwargs)


GREY = ImageConfig(mode="L", size=(4, 6))


# --- manifests ---------------------------------------------------------------------------------------------


def test_a_manifest_with_int_labels_loads_with_ids_as_written(tmp_path):
    write_png(tmp_path / "img" / "a.png")
    write_png(tmp_path / "img" / "b.png")
    manifest = write_manifest(tmp_path, "path,label,note\nimg/a.png,0,first\n./img/b.png,2,second\n")

    dataset = load_dataset(manifest_config(manifest))

    assert [s.id for s in dataset.samples] == ["img/a.png", "./img/b.png"]
    assert [s.label for s in dataset.samples] == [0, 2]
    assert dataset.samples[1].path == (tmp_path / "img" / "b.png").resolve()
    assert all(s.path.is_absolute() for s in dataset.samples)
    assert dataset.class_names == ["0", "1", "2"]  # int labels without names: str(index)
    assert dataset.source == manifest.resolve()
    assert dataset.missing == []


def test_string_labels_map_to_sorted_unique_names_without_class_names(tmp_path):
    for name in "abc":
        write_png(tmp_path / f"{name}.png")
    manifest = write_manifest(tmp_path, "path,label\na.png,dog\nb.png,cat\nc.png,dog\n")

    dataset = load_dataset(manifest_config(manifest))

    assert dataset.class_names == ["cat", "dog"]
    assert [s.label for s in dataset.samples] == [1, 0, 1]


def test_string_labels_map_through_class_names(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    manifest = write_manifest(tmp_path, "path,label\na.png,dog\nb.png,cat\n")

    dataset = load_dataset(manifest_config(manifest, class_names=["zebra", "dog", "cat"]))

    assert dataset.class_names == ["zebra", "dog", "cat"]
    assert [s.label for s in dataset.samples] == [1, 2]


def test_a_label_not_in_class_names_is_named_with_row_and_column(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    manifest = write_manifest(tmp_path, "path,label\na.png,dog\nb.png,horse\n")

    with pytest.raises(DataError) as caught:
        load_dataset(manifest_config(manifest, class_names=["cat", "dog"]))

    message = str(caught.value)
    assert str(manifest) in message and "row 3" in message and "'label'" in message
    assert "'horse'" in message and "'cat', 'dog'" in message


def test_an_int_label_beyond_class_names_is_rejected(tmp_path):
    write_png(tmp_path / "a.png")
    manifest = write_manifest(tmp_path, "path,label\na.png,5\n")
    with pytest.raises(DataError, match=r"row 2, column 'label': index 5"):
        load_dataset(manifest_config(manifest, class_names=["cat", "dog"]))


def test_a_negative_label_is_rejected_with_row_and_column(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    manifest = write_manifest(tmp_path, "path,label\na.png,1\nb.png,-1\n")
    with pytest.raises(DataError, match=r"manifest\.csv, row 3, column 'label': -1 is negative"):
        load_dataset(manifest_config(manifest))


def test_an_empty_path_cell_is_rejected_with_row_and_column(tmp_path):
    write_png(tmp_path / "a.png")
    manifest = write_manifest(tmp_path, "path,label\na.png,1\n,0\n")
    with pytest.raises(DataError, match=r"manifest\.csv, row 3, column 'path': empty"):
        load_dataset(manifest_config(manifest))


def test_a_path_listed_twice_is_rejected(tmp_path):
    write_png(tmp_path / "a.png")
    manifest = write_manifest(tmp_path, "path,label\na.png,1\na.png,1\n")
    with pytest.raises(DataError, match=r"row 3, column 'path': 'a.png' is already listed at row 2"):
        load_dataset(manifest_config(manifest))


def test_a_missing_manifest_is_named(tmp_path):
    with pytest.raises(DataError, match=r"manifest not found: .*nowhere\.csv"):
        load_dataset(manifest_config(tmp_path / "nowhere.csv"))


def test_an_unreadable_manifest_is_named(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(b"path,label\n\xff\xfe\x00garbage,1\n")
    with pytest.raises(DataError, match=r"manifest .*manifest\.csv is not UTF-8"):
        load_dataset(manifest_config(manifest))


def test_a_manifest_without_the_label_column_lists_the_columns_found(tmp_path):
    manifest = write_manifest(tmp_path, "path,class\na.png,1\n")
    with pytest.raises(DataError) as caught:
        load_dataset(manifest_config(manifest))
    message = str(caught.value)
    assert str(manifest) in message and "no 'label' column" in message and "found: 'path', 'class'" in message


def test_an_empty_manifest_is_named(tmp_path):
    empty = write_manifest(tmp_path, "", name="empty.csv")
    with pytest.raises(DataError, match=r"empty\.csv is empty"):
        load_dataset(manifest_config(empty))
    header_only = write_manifest(tmp_path, "path,label\n\n", name="header.csv")
    with pytest.raises(DataError, match=r"header\.csv has a header but no rows"):
        load_dataset(manifest_config(header_only))


def test_missing_images_are_listed_not_fatal(tmp_path):
    write_png(tmp_path / "a.png")
    manifest = write_manifest(tmp_path, "path,label\na.png,0\ngone.png,1\n")

    dataset = load_dataset(manifest_config(manifest))

    assert [s.id for s in dataset.samples] == ["a.png"]
    assert len(dataset.missing) == 1
    sample_id, reason = dataset.missing[0]
    assert sample_id == "gone.png" and "file not found" in reason and "row 3" in reason
    assert dataset.class_names == ["0", "1"]  # a class whose only image is missing keeps its index


def test_a_manifest_whose_images_all_are_missing_is_an_error(tmp_path):
    manifest = write_manifest(tmp_path, "path,label\ngone.png,0\n")
    with pytest.raises(DataError, match=r"no image of .*manifest\.csv exists.*gone\.png: file not found"):
        load_dataset(manifest_config(manifest))


# --- folder layout -----------------------------------------------------------------------------------------


def test_a_folder_layout_loads_like_image_folder(tmp_path):
    write_png(tmp_path / "dog" / "1.png")
    write_png(tmp_path / "dog" / "nested" / "2.PNG")  # extensions match in any case
    write_png(tmp_path / "cat" / "x.bmp")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()

    dataset = load_dataset(DataConfig(root=tmp_path))

    assert dataset.class_names == ["cat", "dog"]
    assert [(s.id, s.label) for s in dataset.samples] == [("cat/x.bmp", 0), ("dog/1.png", 1), ("dog/nested/2.PNG", 1)]
    assert dataset.source == tmp_path.resolve()
    assert set(dataset.by_class()) == {0, 1} and len(dataset.by_class()[1]) == 2


def test_class_names_give_folders_their_model_indices(tmp_path):
    write_png(tmp_path / "dog" / "1.png")
    dataset = load_dataset(DataConfig(root=tmp_path, class_names=["cat", "dog"]))
    assert dataset.samples[0].label == 1 and dataset.class_names == ["cat", "dog"]


def test_a_folder_not_in_class_names_is_named(tmp_path):
    write_png(tmp_path / "dog" / "1.png")
    write_png(tmp_path / "horse" / "1.png")
    with pytest.raises(DataError, match=r"folder\(s\) 'horse' are not in data.class_names"):
        load_dataset(DataConfig(root=tmp_path, class_names=["cat", "dog"]))


def test_a_missing_root_or_one_without_class_folders_is_named(tmp_path):
    with pytest.raises(DataError, match=r"data root not found: .*absent"):
        load_dataset(DataConfig(root=tmp_path / "absent"))
    write_png(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match=r"data root .*flat has no class folder"):
        load_dataset(DataConfig(root=tmp_path / "flat"))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"has class folders \('cat'\) but no images"):
        load_dataset(DataConfig(root=tmp_path / "empty"))


# --- the dataset ---------------------------------------------------------------------------------------------


def test_class_index_accepts_index_name_or_digit_string_and_lists_classes_otherwise():
    dataset = Dataset(samples=[], class_names=["cat", "dog"], source=Path("/data"), missing=[])
    assert dataset.class_index(1) == 1
    assert dataset.class_index("cat") == 0
    assert dataset.class_index("1") == 1
    with pytest.raises(DataError, match=r"unknown class 'horse'.*'cat', 'dog'"):
        dataset.class_index("horse")
    with pytest.raises(DataError, match=r"unknown class 2.*0\.\.1"):
        dataset.class_index(2)


# --- pixels --------------------------------------------------------------------------------------------------


def test_read_pixels_converts_and_resizes_to_height_width(tmp_path):
    path = write_png(tmp_path / "a.png", value=51, size=(10, 8), mode="RGB")  # 10 wide, 8 high

    grey = read_pixels(path, ImageConfig(mode="L", size=(4, 6)))
    colour = read_pixels(path, ImageConfig(mode="RGB", size=(8, 10)))

    assert grey.shape == (4, 6, 1) and grey.dtype == np.float32
    assert colour.shape == (8, 10, 3)
    np.testing.assert_allclose(colour[0, 0], np.array([51, 25, 204]) / 255, atol=1e-6)  # no resize: exact
    assert grey.min() >= 0.0 and grey.max() <= 1.0


def _png_bytes() -> bytes:
    """A valid 16x16 PNG of noise (noise, so that the compressed pixel data is long enough to damage)."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:100] + b"\x00" * 200 + data[300:], id="garbage-in-the-pixel-data"),
        pytest.param(lambda data: b"this is not an image", id="not-an-image"),
    ],
)
def test_read_pixels_names_a_corrupt_image(tmp_path, corrupt):
    path = tmp_path / "broken.png"
    path.write_bytes(corrupt(_png_bytes()))
    with pytest.raises(DataError, match=r"broken\.png: cannot decode image"):
        read_pixels(path, GREY)


def test_read_pixels_names_a_missing_image(tmp_path):
    with pytest.raises(DataError, match=r"gone\.png: file not found"):
        read_pixels(tmp_path / "gone.png", GREY)


def test_truncated_images_are_not_silently_padded():
    # spray relies on Pillow's default: a truncated file is an error, not an image padded with grey
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_load_pixels_reports_bad_images_and_keeps_the_rest(tmp_path):
    good = write_png(tmp_path / "good.png", value=255)
    broken = tmp_path / "broken.png"
    broken.write_bytes(_png_bytes()[:200])
    also_good = write_png(tmp_path / "also.png", value=0)
    samples = [
        Sample("good.png", good, 0),
        Sample("broken.png", broken, 0),
        Sample("gone.png", tmp_path / "gone.png", 1),
        Sample("also.png", also_good, 1),
    ]

    pixels, ok, failed = load_pixels(samples, GREY)

    assert pixels.shape == (2, 4, 6, 1) and pixels.dtype == np.float32
    assert ok == [0, 3]
    assert pixels[0].min() == 1.0 and pixels[1].max() == 0.0
    assert [sample_id for sample_id, _ in failed] == ["broken.png", "gone.png"]
    assert failed[0][1].startswith("cannot decode image: ") and failed[1][1] == "file not found"


def test_load_pixels_of_nothing_readable_is_empty_with_the_right_shape(tmp_path):
    pixels, ok, failed = load_pixels([Sample("gone.png", tmp_path / "gone.png", 0)], ImageConfig(size=(3, 5)))
    assert pixels.shape == (0, 3, 5, 3) and ok == [] and len(failed) == 1


def test_to_model_input_normalises_per_channel_into_nchw():
    image = ImageConfig(mode="RGB", size=(2, 3), mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 2.0])
    pixels = np.ones((1, 2, 3, 3), dtype=np.float32)

    x = to_model_input(pixels, image)

    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (1, 3, 2, 3)
    assert torch.allclose(x[0, 0], torch.full((2, 3), 1.0))
    assert torch.allclose(x[0, 1], torch.full((2, 3), 3.0))
    assert torch.allclose(x[0, 2], torch.full((2, 3), 0.5))


def test_to_model_input_broadcasts_a_single_mean_and_rejects_a_wrong_shape():
    image = ImageConfig(mode="RGB", size=(2, 2), mean=[0.5], std=[0.5])
    x = to_model_input(np.zeros((2, 2, 2, 3), dtype=np.float32), image)
    assert torch.all(x == -1.0)
    with pytest.raises(ValueError, match=r"expected pixels of shape \(N, H, W, 3\)"):
        to_model_input(np.zeros((2, 2, 1), dtype=np.float32), image)


# --- digests -------------------------------------------------------------------------------------------------


def test_file_digest_changes_when_one_byte_changes(tmp_path):
    path = write_png(tmp_path / "a.png")
    before = file_digest(path)
    assert file_digest(path) == before
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert file_digest(path) != before


def test_dataset_token_depends_on_ids_labels_and_content(tmp_path):
    a = write_png(tmp_path / "a.png", value=10)
    b = write_png(tmp_path / "b.png", value=20)
    samples = [Sample("a.png", a, 0), Sample("b.png", b, 1)]
    token = dataset_token(samples)

    assert dataset_token(list(samples)) == token
    assert dataset_token([Sample("a.png", a, 1), samples[1]]) != token
    assert dataset_token([Sample("renamed.png", a, 0), samples[1]]) != token
    write_png(b, value=21)
    assert dataset_token(samples) != token
