"""Bad images and bad datasets: each file is converted as a viewer shows it, or skipped and counted."""

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthaug_pipeline.lib.config import DataConfig
from synthaug_pipeline.lib.datasets import DatasetError, check_dataset_available, dataset_class_ids, load_dataset
from synthaug_pipeline.lib.images import ImageDecodeError, decode_image


def _encode(pil: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png(value: int = 100, size: int = 10) -> bytes:
    return _encode(Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)))


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    data = _png()
    ihdr = data[16:29]  # IHDR payload: width, height, bit depth, colour type, ...
    payload = struct.pack(">II", width, height) + ihdr[8:]
    return data[:16] + payload + struct.pack(">I", zlib.crc32(b"IHDR" + payload)) + data[33:]


def _reason(data: bytes, channels: int = 3) -> str:
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(data, channels)
    return raised.value.reason


# --- one image ------------------------------------------------------------------------------


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 65535, 1000]], dtype=np.uint16)
    data = _encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert decode_image(data, 1)[..., 0].tolist() == [[0, 100, 255, 4]]
    assert decode_image(data, 3)[0, 1].tolist() == [100, 100, 100]
    tiff = _encode(Image.fromarray(np.full((2, 2), 257 * 50, dtype=np.int32)), "TIFF")  # opens as mode I
    assert decode_image(tiff, 1).max() == 50


def test_cmyk_jpeg_becomes_rgb():
    red = decode_image(_encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), 3)
    assert red.shape == (16, 16, 3)
    assert np.abs(red.astype(int) - [255, 0, 0]).max() <= 3


def test_palette_png_with_and_without_transparency():
    indices = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    pil = Image.fromarray(indices, mode="P")
    pil.putpalette([0, 0, 0, 200, 40, 10] + [0] * 762)
    assert decode_image(_encode(pil), 3).tolist() == [[[0, 0, 0], [200, 40, 10]], [[200, 40, 10], [0, 0, 0]]]
    transparent = decode_image(_encode(pil, transparency=0), 3)  # index 0 transparent: shown over white
    assert transparent.tolist() == [[[255, 255, 255], [200, 40, 10]], [[200, 40, 10], [255, 255, 255]]]


def test_alpha_is_composited_over_white():
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, :, 3] = [0, 255, 128]  # black at alpha 0, 255, 128
    decoded = decode_image(_encode(Image.fromarray(rgba, mode="RGBA")), 3)
    assert decoded[0, :, 0].tolist() == [255, 0, 127]
    la = np.array([[[0, 0], [90, 255]]], dtype=np.uint8)
    assert decode_image(_encode(Image.fromarray(la, mode="LA")), 1)[..., 0].tolist() == [[255, 90]]


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    assert decode_image(_encode(Image.new("RGB", (20, 10)), "JPEG", exif=exif), 3).shape == (20, 10, 3)


def test_bad_bytes_have_reasons(monkeypatch):
    assert _reason(b"") == "empty_file"
    assert _reason(b"just some text") == "not_an_image"
    assert _reason(_png(size=64)[:-40]) == "corrupt"  # truncated: never half-decoded
    assert _reason(_png_claiming(20000, 20000)) == "too_large"
    assert _reason(_encode(Image.fromarray(np.zeros((2, 2), np.float32)), "TIFF")) == "unsupported_mode"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL only warns between 1x and 2x its limit: refused here, silently
        assert _reason(_png(size=40)) == "too_large"


# --- a whole folder -------------------------------------------------------------------------


def _write_zoo(root: Path) -> None:
    """Class 'cat': 3 good files, 6 convertible, 5 bad or not images; class 'dog': 4 good files."""
    cat, dog = root / "cat", root / "dog"
    cat.mkdir(parents=True)
    dog.mkdir()
    for i in range(3):
        (cat / f"good{i}.png").write_bytes(_png(10))
    for i in range(4):
        (dog / f"good{i}.png").write_bytes(_png(200))
    (cat / "cmyk.jpg").write_bytes(_encode(Image.new("CMYK", (12, 12), (0, 255, 255, 0)), "JPEG"))
    palette = Image.fromarray(np.zeros((12, 12), np.uint8), mode="P")
    palette.putpalette([30, 60, 90] + [0] * 765)
    (cat / "palette.png").write_bytes(_encode(palette))
    (cat / "palette_alpha.png").write_bytes(_encode(palette, transparency=0))
    (cat / "rgba.PNG").write_bytes(_encode(Image.new("RGBA", (12, 12), (0, 0, 0, 0))))
    (cat / "la.png").write_bytes(_encode(Image.new("LA", (12, 12), (0, 0))))
    (cat / "deep.png").write_bytes(_encode(Image.fromarray(np.full((12, 12), 257 * 77, np.uint16))))
    (cat / "truncated.png").write_bytes(_png(size=64)[:-40])
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "huge.png").write_bytes(_png_claiming(20000, 20000))
    (cat / "notes.txt").write_text("photographer: me")
    (cat / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")


def test_folder_of_bad_images_converts_or_skips_and_counts(tmp_path):
    _write_zoo(tmp_path)
    cfg = DataConfig(source="folder", path=str(tmp_path), image_size=8, channels=3, test_fraction=0.2)
    check_dataset_available(cfg)
    data = load_dataset(cfg)
    assert data.class_ids == ["cat", "dog"]
    cat = np.concatenate([data.train.of_class(0), data.test.of_class(0)])
    assert len(cat) == 3 + 6 and len(data.train.of_class(1)) + len(data.test.of_class(1)) == 4
    assert data.skipped == {"cat": {"corrupt": 1, "empty_file": 1, "not_an_image_file": 2, "too_large": 1}}
    assert data.skipped_by_reason == {"corrupt": 1, "empty_file": 1, "not_an_image_file": 2, "too_large": 1}
    assert sorted(Path(name).name for name in data.skipped_files) == [
        ".DS_Store", "empty.jpg", "huge.png", "notes.txt", "truncated.png"
    ]
    means = sorted({int(round(image.mean())) for image in cat})
    assert 77 in means  # the 16-bit PNG, scaled by value, not clipped to 255
    assert 255 in means  # transparent images over white
    assert 60 in means  # the palette colour (30, 60, 90)


def test_empty_class_is_refused_naming_it(tmp_path):
    _write_zoo(tmp_path)
    (tmp_path / "bird").mkdir()
    (tmp_path / "bird" / "readme.txt").write_text("todo")
    cfg = DataConfig(source="folder", path=str(tmp_path), image_size=8)
    with pytest.raises(DatasetError, match="class folder 'bird' .* holds no image files") as raised:
        check_dataset_available(cfg)
    assert "\n" not in str(raised.value)
    with pytest.raises(DatasetError, match="class 'bird' .* no usable training images \\(skipped 1 not_an_image_file\\)"):
        load_dataset(cfg)
    (tmp_path / "bird" / "broken.png").write_bytes(b"")
    (tmp_path / "bird" / "worse.jpg").write_bytes(b"GIF89a nonsense")
    check_dataset_available(cfg)  # image files are there; whether they decode is known only when read
    with pytest.raises(DatasetError) as raised:
        load_dataset(cfg)
    assert str(raised.value).startswith("class 'bird' in ") and "1 empty_file, 1 not_an_image, 1 not_an_image_file" in str(raised.value)
    assert load_dataset(DataConfig(source="folder", path=str(tmp_path), image_size=8, classes=["cat", "dog"])).class_ids == ["cat", "dog"]


@pytest.mark.parametrize("name", ["a..b", "back\\slash", "x::y", "   ", "tab\there"])
def test_odd_class_folder_names_are_refused_at_listing(tmp_path, name):
    for class_id in ("fine", name):
        (tmp_path / class_id).mkdir()
        (tmp_path / class_id / "0.png").write_bytes(_png())
    cfg = DataConfig(source="folder", path=str(tmp_path))
    for check in (dataset_class_ids, check_dataset_available):
        with pytest.raises(DatasetError, match="class ids become partition keys") as raised:
            check(cfg)
        assert str(raised.value).startswith(f"class {name!r} in data.path")
        assert "\n" not in str(raised.value)


def test_spaces_unicode_kept_hidden_folders_ignored(tmp_path):
    for class_id in ("snow leopard", "café", "猫", ".ipynb_checkpoints"):
        (tmp_path / class_id).mkdir()
        (tmp_path / class_id / "0.png").write_bytes(_png())
    assert dataset_class_ids(DataConfig(source="folder", path=str(tmp_path))) == sorted(["snow leopard", "café", "猫"])


@pytest.mark.parametrize("label", ["", ".hidden", "a/b", "../up"])
def test_odd_parquet_labels_are_refused_at_listing(tmp_path, label):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"image": [_png(), _png()], "label": ["fine", label]}), path)
    with pytest.raises(DatasetError, match=f"class {label!r} in data.path"):
        check_dataset_available(DataConfig(source="folder", path=str(path)))


def test_parquet_rows_without_image_bytes_are_skipped_and_counted(tmp_path):
    structs = [{"bytes": _png(50), "path": None}] * 3 + [{"bytes": None, "path": "elsewhere.png"}, {"bytes": b"", "path": None}]
    path = tmp_path / "hf.parquet"
    pq.write_table(pa.table({"image": structs, "label": [0, 0, 0, 0, 0], "split": ["train"] * 5}), path)
    data = load_dataset(DataConfig(source="folder", path=str(path), image_size=8))
    assert len(data.train) == 3 and data.class_ids == ["0"]
    assert data.skipped == {"0": {"empty_file": 1, "missing_image": 1}}
    assert sorted(data.skipped_files) == ["row 3", "row 4"]

