"""Image loading: EXIF, modes, truncated files, header-only sizes and safe paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_lora.data.images import load_image_rgb, read_image_size, resolve_in_dataset
from sam3_lora.errors import DatasetError
from tests.data_factory import write_image


def _exif_rotated_jpeg(path: Path) -> Path:
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.fromarray(array).save(path, exif=exif.tobytes())
    return path


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = _exif_rotated_jpeg(tmp_path / "rotated.jpg")
    assert read_image_size(path) == (20, 40)
    image = load_image_rgb(path)
    assert image.size == (20, 40)
    array = np.asarray(image)
    assert array[:20].mean() > 200 and array[20:].mean() < 50  # white half is now on top


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I", "F", "1"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    path = write_image(tmp_path / "x.tiff", 8, 6, mode=mode)
    image = load_image_rgb(path)
    assert image.mode == "RGB" and image.size == (8, 6)


def test_sixteen_bit_png_is_rescaled(tmp_path: Path) -> None:
    array = np.array([[0, 1000, 4095]], dtype=np.uint16)  # 12-bit data in a 16-bit file
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_image_rgb(path))
    assert rgb[0, 0, 0] == 0 and rgb[0, 2, 0] == 255 and 50 < rgb[0, 1, 0] < 70


def test_transparent_palette_png(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    assert np.asarray(load_image_rgb(path))[0, 0].tolist() == [255, 0, 0]


def test_truncated_jpeg_names_file(tmp_path: Path) -> None:
    path = write_image(tmp_path / "whole.jpg", 64, 64)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DatasetError, match=r"cut\.jpg.*truncated"):
        load_image_rgb(cut)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(DatasetError, match=r"notes\.png"):
        read_image_size(path)
    with pytest.raises(DatasetError, match=r"missing\.png does not exist"):
        load_image_rgb(tmp_path / "missing.png")


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(path)
    assert read_image_size(path) == (4000, 3000)
    image = load_image_rgb(path, max_side=500)
    assert max(image.size) <= 500


def test_resolve_in_dataset(tmp_path: Path) -> None:
    assert resolve_in_dataset(tmp_path, "sub/a.jpg") == tmp_path / "sub" / "a.jpg"
    assert resolve_in_dataset(tmp_path, "sub\\a.jpg") == tmp_path / "sub" / "a.jpg"
    for bad in ("../../etc/passwd", "/etc/passwd", "C:\\images\\a.jpg", "a/../../b.jpg"):
        with pytest.raises(DatasetError, match="dataset folder|absolute"):
            resolve_in_dataset(tmp_path, bad)
    (tmp_path / "link.jpg").symlink_to("/etc/hostname")
    with pytest.raises(DatasetError, match=r"'link\.jpg'.*outside"):
        resolve_in_dataset(tmp_path, "link.jpg")
