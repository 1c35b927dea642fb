"""Safe image decoding: untrusted bytes in, upright 8-bit RGB out, or a typed refusal.

Every entry point (HTTP upload, `facemargin prepare`, enrolment) decodes through here, so this
module is the one place that has to survive hostile files.

Accepted formats, decided by content and never by file name: JPEG (including MPO, the
multi-picture JPEG that phones write), PNG (including APNG), WebP and BMP. Together they cover
camera output and web uploads. Everything else is refused with `UnsupportedImageType`. GIF is
refused by choice, not for lack of a decoder: faces in GIFs are rare, palette-reduced and tiny,
and a 1,000-frame GIF is a classic abuse file; refusing it is cheaper than defending against it.

Checks run cheapest first, and no pixel is decoded before the size is known to be acceptable:

1. byte count against `max_bytes` (`ImageTooLarge`), empty input (`InvalidImage`);
2. format from the header (`UnsupportedImageType`, or `InvalidImage` for a damaged header of
   an accepted format);
3. width * height declared by the header against `max_pixels` (`ImageTooLarge`);
4. decode of the first frame only (`InvalidImage` when truncated or corrupt); a JPEG larger
   than the working resolution is decoded at 1/2, 1/4 or 1/8 scale by the DCT decoder itself
   (Pillow's `draft`), the smallest scale whose long side is still >= `max_side`;
5. EXIF orientation, then conversion of any pixel mode to RGB, alpha composited over white.

Reduced decoding is what keeps a 12 MP phone photo cheap: decoding 4000x3000 costs ~100 ms,
decoding it at 2000x1500 a quarter of that, and no downstream stage needs more (the detectors
look at 640 px, the aligned crop is 112-128 px). `DecodedImage.scale` says how far the pixels
were reduced, so coordinates can be reported on the photo as sent. Other formats are decoded
at full size: their decoders cannot scale, decoding dominates their cost, and a resize after
the fact would add time, not save it.

`PIL.ImageFile.LOAD_TRUNCATED_IMAGES` must stay False process-wide: when it is True, Pillow
pads truncated files with grey instead of failing, and step 4 cannot tell.

Pillow's own decompression-bomb guard is left in place (its limits are global and shared with
other code); its warning is silenced while we decode because step 3 applies our own, tighter
cap, and its error becomes `ImageTooLarge`. `warnings.catch_warnings` is not thread-safe on
Python < 3.14: concurrent decodes may leave that one ignore filter installed, which is harmless.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from service.vision.errors import ImageTooLarge, InvalidImage, UnsupportedImageType

ACCEPTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP"})

# MPO is opened through Pillow's JPEG factory, so it needs no entry of its own here.
# The default limits; the service passes its own (FACEMARGIN_MAX_IMAGE_BYTES/PIXELS).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000

_PILLOW_OPENERS = ("JPEG", "PNG", "WEBP", "BMP")
_ACCEPTED_NAMES = "JPEG, PNG, WebP, BMP"
_EXIF_ORIENTATION = 0x0112
# Long side, in pixels, a JPEG is decoded to at least (when it is larger): 4000x3000 and
# 4032x3024 decode at 1/2 (2000x1500, 2016x1512), 48 MP at 1/4. A face 6.4% of a 12 MP photo's
# width is still 128 px across after the reduction (bench/large_photos.py).
WORKING_SIDE = 1920
_DRAFT_FACTORS = (8, 4, 2)

# Signatures of the accepted formats, to tell "damaged PNG" (400) from "not a PNG at all" (415)
# when Pillow cannot open the header.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
)

# EXIF orientation k -> operation on an (H, W, C) array that makes the picture upright; the same
# table as ImageOps.exif_transpose, done in numpy so that only pixels are touched (exif_transpose
# also rewrites EXIF/XMP metadata, which we discard anyway and which can itself be malformed).
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@dataclass(frozen=True)
class DecodedImage:
    """An upright picture ready for detection."""

    pixels: np.ndarray  # (H, W, 3) uint8 RGB, C-contiguous, writable, EXIF orientation applied
    format: str  # "JPEG" | "PNG" | "WEBP" | "BMP"
    orientation: int  # EXIF orientation tag that was applied (1 when none)
    multi_frame: bool  # the file holds more frames; only the first was decoded
    # Decoded side / encoded side: 1.0, or 1/2, 1/4, 1/8 for a JPEG decoded at reduced size.
    # A point (x, y) in `pixels` is (x / scale, y / scale) on the photo as sent.
    scale: float = 1.0
    # (width, height) of the upright photo as sent; None means the size of `pixels`.
    original_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the upright photo as sent, whatever scale it was decoded at."""
        if self.original_size is not None:
            return self.original_size
        return self.pixels.shape[1], self.pixels.shape[0]


def decode_image(
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    max_side: int | None = WORKING_SIDE,
) -> DecodedImage:
    """Decode untrusted image bytes, or raise a `FaceMarginError` subclass saying why not.

    A JPEG whose long side is at least twice `max_side` is decoded at a reduced scale (see
    `DecodedImage.scale`); `max_side=None` always decodes at full size."""
    max_bytes, max_pixels = _limits(max_bytes, max_pixels)
    if len(data) == 0:
        raise InvalidImage("the image is empty (0 bytes)")
    _check_byte_count(len(data), max_bytes)
    _check_declared_size(data, max_pixels)

    with _pillow_bomb_warnings_silenced():
        img = _open(data)
        try:
            fmt = "JPEG" if img.format == "MPO" else str(img.format)
            _check_pixel_count(img.size, max_pixels, fmt)
            multi_frame = bool(getattr(img, "is_animated", False))
            width, height = img.size
            factor = _load_first_frame(img, fmt, max_side)
            orientation = _orientation(img)
            rgb = _to_rgb(img)
        finally:
            img.close()

    upright = _ORIENT[orientation](rgb)
    # Orientation views have negative strides and Pillow hands out read-only buffers; callers
    # get one plain array they may modify in place.
    pixels = np.require(upright, dtype=np.uint8, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    # Orientations 5-8 swap the axes (transpose or quarter turn).
    original = (height, width) if orientation >= 5 else (width, height)
    return DecodedImage(
        pixels=pixels,
        format=fmt,
        orientation=orientation,
        multi_frame=multi_frame,
        scale=1.0 / factor,
        original_size=original,
    )


def read_image(
    path: str | os.PathLike[str], *, max_bytes: int | None = None, max_pixels: int | None = None
) -> DecodedImage:
    """Read and decode an image file; the byte cap is enforced before the file is read."""
    max_bytes, max_pixels = _limits(max_bytes, max_pixels)
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except OSError as exc:
        raise InvalidImage(f"cannot read {name}: {exc.strerror or exc}") from exc
    # A FIFO or device has no meaningful size and reading it may never end.
    if not stat.S_ISREG(info.st_mode):
        raise InvalidImage(f"cannot read {name}: not a regular file")
    _check_byte_count(info.st_size, max_bytes)
    try:
        with open(name, "rb") as f:
            # One byte past the cap, so a file that grew after stat() is still caught.
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidImage(f"cannot read {name}: {exc.strerror or exc}") from exc
    return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)


def _limits(max_bytes: int | None, max_pixels: int | None) -> tuple[int, int]:
    max_bytes = MAX_IMAGE_BYTES if max_bytes is None else max_bytes
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if max_bytes <= 0 or max_pixels <= 0:
        raise ValueError(f"limits must be positive, got {max_bytes=} {max_pixels=}")
    return max_bytes, max_pixels


def _check_byte_count(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageTooLarge(f"the image is {size:,} bytes; the limit is {max_bytes:,} bytes")


def _check_pixel_count(size: tuple[int, int], max_pixels: int, fmt: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the {fmt} header declares an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the {fmt} image is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {max_pixels:,} pixels"
        )


def _check_declared_size(data: bytes, max_pixels: int) -> None:
    # Where the size sits at a fixed place in the header, check it before Pillow runs: libwebp
    # allocates two canvas-sized buffers inside Image.open(), and a PNG cut off after its IHDR
    # fails in Pillow as "corrupt" when the honest answer is "too large".
    for fmt, size in (("WEBP", _webp_canvas_size(data)), ("PNG", _png_ihdr_size(data))):
        if size is not None:
            _check_pixel_count(size, max_pixels, fmt)


def _png_ihdr_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    # A header failing its CRC is corrupt, not large; Pillow will say so.
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _webp_canvas_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(data[26:28], "little") & 0x3FFF,
            int.from_bytes(data[28:30], "little") & 0x3FFF,
        )
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


@contextmanager
def _pillow_bomb_warnings_silenced() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _bomb_refusal() -> ImageTooLarge:
    limit = Image.MAX_IMAGE_PIXELS
    hard = f" of {2 * limit:,} pixels" if limit else ""
    return ImageTooLarge(f"the image header declares a size over the decoder's hard limit{hard}")


def _open(data: bytes) -> ImageFile.ImageFile:
    """Parse the header of an accepted format (lazy: no pixels), or refuse the bytes."""
    try:
        return Image.open(io.BytesIO(data), formats=_PILLOW_OPENERS)
    except Image.DecompressionBombError as exc:
        raise _bomb_refusal() from exc
    except UnidentifiedImageError:
        pass
    except MemoryError:
        raise
    except Exception as exc:
        # A plugin recognised the signature, then choked on the header; Pillow lets plugins
        # raise whatever they like here (OSError, ValueError, EOFError, ...).
        raise InvalidImage(f"the {_signature(data) or 'image'} header is corrupt") from exc

    sniffed = _signature(data)
    if sniffed is not None:
        raise InvalidImage(f"the {sniffed} header is corrupt")
    detected = _identify_any(data)
    if detected is not None:
        raise UnsupportedImageType(
            f"{detected} images are not accepted; send one of: {_ACCEPTED_NAMES}"
        )
    raise UnsupportedImageType(f"not an image of an accepted type: {_ACCEPTED_NAMES}")


def _signature(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


def _identify_any(data: bytes) -> str | None:
    """Name a format we refuse, for the error message only; any failure just means 'unknown'."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except MemoryError:
        raise
    except Exception:
        return None


def draft_factor(width: int, height: int, max_side: int | None) -> int:
    """The JPEG decoder's reduction (8, 4, 2 or 1) for a width x height image: the largest whose
    long side, rounded up as libjpeg does, is still >= `max_side`."""
    if max_side is None:
        return 1
    long_side = max(width, height)
    return next((k for k in _DRAFT_FACTORS if -(-long_side // k) >= max_side), 1)


def _load_first_frame(img: ImageFile.ImageFile, fmt: str, max_side: int | None) -> int:
    """Decode frame 0; returns the factor the JPEG decoder reduced each side by (1 if none)."""
    factor = 1
    try:
        # Frame 0 only: stepping through frames is exactly what a hostile animation wants.
        img.seek(0)
        if fmt == "JPEG":
            factor = _draft(img, draft_factor(*img.size, max_side))
        img.load()
    except Image.DecompressionBombError as exc:
        raise _bomb_refusal() from exc
    except MemoryError:
        raise
    except Exception as exc:
        # Damage surfaces as OSError, SyntaxError, ValueError, EOFError, struct.error,
        # IndexError... depending on the plugin; the set is neither documented nor stable.
        raise InvalidImage(f"the {fmt} image data is truncated or corrupt") from exc
    return factor


def _draft(img: ImageFile.ImageFile, factor: int) -> int:
    """Ask the JPEG decoder to scale by 1/factor while decoding; the factor it will apply."""
    if factor == 1:
        return 1
    width, height = img.size
    # Pillow picks the largest of 8, 4, 2, 1 not above min(width // w, height // h), which for
    # this request is exactly `factor`; draft() declines (None) for a multi-tile file.
    if img.draft(img.mode, (width // factor, height // factor)) is None:
        return 1
    # libjpeg rounds the reduced sides up, so the ratio of sizes is the factor to within a pixel.
    return max(1, round(width / img.size[0]))


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except MemoryError:
        raise
    except Exception:
        # EXIF is metadata: a damaged block must not cost an otherwise readable photo.
        return 1
    return value if isinstance(value, int) and value in _ORIENT else 1


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB; transparent areas become white."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        return _wide_grey_to_rgb(img)
    try:
        if img.has_transparency_data:
            return _over_white(np.asarray(img.convert("RGBA")))
        return np.asarray(img.convert("RGB"))
    except ValueError as exc:
        raise UnsupportedImageType(f"pixel mode {img.mode} is not supported") from exc


def _wide_grey_to_rgb(img: Image.Image) -> np.ndarray:
    # Pillow's convert("L") clips these modes at 255 instead of rescaling, which turns a 16-bit
    # photo almost white. Keep the high byte instead, as Pillow itself does for 16-bit RGB PNGs.
    values = np.asarray(img)
    if img.mode == "F":
        # Pillow's convention for float images is the 8-bit scale.
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    else:
        # "I" is how Pillow widens 16-bit samples, so read it on the 16-bit scale too.
        grey = (np.clip(values, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    key = img.info.get("transparency")
    if isinstance(key, int):
        grey[values == key] = 255
    return np.repeat(grey[..., None], 3, axis=2)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    # Fully transparent pixels often hold garbage colour; compositing hides it the way a viewer
    # does. rgb*a + 255*(255-a) <= 255*255, so uint16 cannot overflow.
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:].astype(np.uint16)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
