"""Guarded image loading: the one loader behind the CLI, dataset jobs and the web app.

Images come from places nobody on the team chose (uploads, millions of files of unknown quality), so every image
the library opens goes through :func:`load_image`, which refuses, with one clear :class:`ImageLoadError`, what
would otherwise cost the job or the process:

* files or uploads larger than ``max_bytes``;
* images that *declare* more than ``max_pixels`` pixels (decompression bombs: a small PNG can declare
  20,000 x 20,000 pixels); the size is read from the header and checked **before** anything is decoded;
* formats outside :data:`SUPPORTED_FORMATS` (PIL is asked to try only those decoders);
* truncated or corrupt files (the image is decoded completely inside the guard).

PIL's process-wide settings (``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``) are read, never
changed, so the loader is safe to call from several threads.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Optional, Union

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "ImageLoadError", "ImageSource",
           "SUPPORTED_FORMATS", "is_image_file", "load_image"]

#: Default limit on the decoded size: 40 megapixels (e.g. 8,000 x 5,000), far above what CLIP looks at.
DEFAULT_MAX_PIXELS = 40_000_000
#: Default limit on the encoded size: 50 MiB.
DEFAULT_MAX_BYTES = 50 * 2 ** 20
#: The PIL decoders :func:`load_image` tries; anything else is refused as an unsupported format.
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
#: File name endings taken for images when a folder is searched.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image]


class ImageLoadError(ValueError):
    """An image that cannot or must not be loaded.

    Attributes:
        source: what was asked for (a path, or a short description of in-memory data).
        reason: why it was refused, in words a user can act on.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason


def is_image_file(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` names a file whose ending is one of :data:`IMAGE_SUFFIXES` (its content is not read)."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()


def _describe(source: ImageSource, name: Optional[str]) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return f"<PIL image {source.width}x{source.height}>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{getattr(source, 'name', type(source).__name__)}>"


def _read_bounded(source: ImageSource, label: str, max_bytes: int) -> bytes:
    """The encoded bytes of ``source``, refusing more than ``max_bytes`` without reading past the limit."""
    too_big = f"more than the limit of {max_bytes:,} bytes"
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > max_bytes:
            raise ImageLoadError(label, f"{len(source):,} bytes, {too_big}")
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageLoadError(label, "image not found")
        if not path.is_file():
            raise ImageLoadError(label, "not a regular file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageLoadError(label, f"{size:,} bytes, {too_big}")
        try:
            with open(path, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except OSError as err:
            raise ImageLoadError(label, f"cannot open the file ({err.strerror or err})") from None
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise ImageLoadError(label, "the file object must be opened in binary mode")
    else:
        raise TypeError(f"load_image takes a path, bytes, a binary file object or a PIL image, got "
                        f"{type(source).__name__}")
    if len(data) > max_bytes:
        raise ImageLoadError(label, too_big)
    if not data:
        raise ImageLoadError(label, "the file is empty")
    return bytes(data)


def _check_pixels(width: int, height: int, label: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageLoadError(label, f"it declares {width} x {height} = {width * height:,} pixels, more than the "
                                    f"limit of {max_pixels:,} (a decompression bomb is refused before decoding)")
    if width < 1 or height < 1:
        raise ImageLoadError(label, f"it declares an empty size {width} x {height}")


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
               name: Optional[str] = None) -> Image.Image:
    """Open, check and fully decode one image as RGB.

    Args:
        source: a file path, the encoded bytes, a binary file object, or an already opened PIL image (then only
            the pixel limit applies, and a converted copy is returned).
        max_pixels: largest accepted ``width * height``, checked from the header before decoding.
        max_bytes: largest accepted encoded size.
        name: how the image is named in error messages (default: the path, or a short description).

    Returns:
        A decoded ``PIL.Image.Image`` in mode ``"RGB"``, rotated as its EXIF orientation says, detached from
        any file.

    Raises:
        ImageLoadError: missing or unreadable file, too many bytes or pixels, a format outside
            :data:`SUPPORTED_FORMATS`, a truncated or corrupt file. ``ImageLoadError`` is a ``ValueError``.
        TypeError: ``source`` is none of the accepted kinds.

    Examples:
        >>> from captum_gradeclip.image_io import load_image
        >>> img = load_image("photo.jpg")                               # doctest: +SKIP
        >>> img = load_image(upload_bytes, max_pixels=4096 * 4096)      # doctest: +SKIP
    """
    if max_pixels < 1 or max_bytes < 1:
        raise ValueError(f"max_pixels and max_bytes must be positive, got {max_pixels} and {max_bytes}")
    label = _describe(source, name)
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, label, max_pixels)
        return source.convert("RGB")
    data = _read_bounded(source, label, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(SUPPORTED_FORMATS)) as im:
                _check_pixels(im.width, im.height, label, max_pixels)
                im.load()  # decodes the first frame completely: truncated data fails here
                rgb = ImageOps.exif_transpose(im).convert("RGB")
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(label, "not an image in a supported format "
                                    f"({', '.join(SUPPORTED_FORMATS)})") from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(label, f"too many pixels, refused by PIL's limit before decoding (a decompression "
                                    f"bomb?): {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = str(err) or type(err).__name__
        raise ImageLoadError(label, f"truncated or corrupt image data ({reason})") from None
    return rgb
