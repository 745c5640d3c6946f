"""The guarded image loader: what it accepts, what it refuses and how it says so."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from fixtures import bomb_png
from PIL import Image

from captum_gradeclip.image_io import DEFAULT_MAX_PIXELS, ImageLoadError, is_image_file, load_image


def _png_bytes(size=(12, 7), mode="RGB", color=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(size=(64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["path", "str", "bytes", "file", "pil"])
def test_every_source_kind_gives_the_same_rgb_pixels(tmp_path: Path, kind: str) -> None:
    data = _png_bytes(mode="RGBA", color=(10, 200, 30, 255))
    path = tmp_path / "x.png"
    path.write_bytes(data)
    source = {"path": path, "str": str(path), "bytes": data, "file": io.BytesIO(data),
              "pil": Image.open(io.BytesIO(data))}[kind]
    img = load_image(source)
    assert img.mode == "RGB" and img.size == (12, 7)
    assert np.asarray(img)[3, 5].tolist() == [10, 200, 30]


def test_jpeg_loads(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg_bytes())
    assert load_image(path).size == (64, 48)
    assert is_image_file(path) and not is_image_file(tmp_path / "missing.jpg")


def test_decompression_bomb_refused_before_decoding() -> None:
    data = bomb_png()
    assert len(data) < 200
    with pytest.raises(ImageLoadError, match=r"pixels.*decompression bomb") as info:
        load_image(data, name="bomb.png")
    assert info.value.source == "bomb.png"
    with pytest.raises(ImageLoadError, match=r"4000 x 4000 = 16,000,000 pixels, more than the limit of 1,000,000"):
        load_image(bomb_png(4000, 4000), max_pixels=1_000_000)
    assert isinstance(info.value, ValueError)


def test_pixel_limit_is_a_parameter() -> None:
    data = _png_bytes(size=(100, 100))
    with pytest.raises(ImageLoadError, match="10,000 pixels, more than the limit of 9,999"):
        load_image(data, max_pixels=9_999)
    assert load_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageLoadError, match="pixels"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=50)
    assert DEFAULT_MAX_PIXELS >= 4096 * 4096


def test_byte_limit_for_paths_bytes_and_streams(tmp_path: Path) -> None:
    data = _jpeg_bytes()
    path = tmp_path / "big.jpg"
    path.write_bytes(data)
    for source in (path, data, io.BytesIO(data)):
        with pytest.raises(ImageLoadError, match=f"limit of {len(data) - 1:,} bytes"):
            load_image(source, max_bytes=len(data) - 1)


def test_truncated_jpeg_is_a_clear_error(tmp_path: Path) -> None:
    data = _jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.jpg: truncated or corrupt"):
        load_image(path)


@pytest.mark.parametrize("payload, reason", [
    (b"this is not an image at all", "not an image in a supported format"),
    (b"", "empty"),
])
def test_not_an_image(tmp_path: Path, payload: bytes, reason: str) -> None:
    path = tmp_path / "fake.png"
    path.write_bytes(payload)
    with pytest.raises(ImageLoadError, match=reason):
        load_image(path)


def test_unsupported_format_is_refused() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PPM")  # PIL reads PPM, but it is not in the supported list
    with pytest.raises(ImageLoadError, match="supported format"):
        load_image(buf.getvalue())


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="image not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(tmp_path)
    with pytest.raises(TypeError, match="path, bytes"):
        load_image(123)  # type: ignore[arg-type]


def test_exif_orientation_applied() -> None:
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert load_image(buf.getvalue()).size == (10, 30)


def test_global_pil_settings_untouched_and_threads_independent() -> None:
    before = Image.MAX_IMAGE_PIXELS
    good, bomb = _png_bytes(), bomb_png()
    results: dict = {}

    def work(i: int) -> None:
        try:
            results[i] = load_image(bomb if i % 2 else good).size
        except ImageLoadError as err:
            results[i] = err.reason

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == (12, 7) for i in range(0, 8, 2))
    assert all("decompression bomb" in results[i] for i in range(1, 8, 2))
    assert Image.MAX_IMAGE_PIXELS == before
