"""Safe decoding: accepted formats round-trip, hostile files get a typed refusal, never a crash.

Every hostile file is built here in memory (Pillow, numpy, struct, zlib); nothing is committed.
"""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps, WebPImagePlugin

from service.api.settings import Settings
from service.vision import imaging
from service.vision.errors import FaceMarginError, ImageTooLarge, InvalidImage, UnsupportedImageType
from service.vision.imaging import ACCEPTED_FORMATS, DecodedImage, decode_image, read_image

# --------------------------------------------------------------------------- builders

RED, GREEN, BLUE, YELLOW = (230, 30, 30), (30, 200, 60), (40, 60, 220), (240, 220, 40)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(w: int = 40, h: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth(w: int = 64, h: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)]).astype(
        np.uint8
    )


def quadrants(w: int = 40, h: int = 24) -> Image.Image:
    """Four distinct colours, so any rotation or flip is visible."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = RED
    a[: h // 2, w // 2 :] = GREEN
    a[h // 2 :, : w // 2] = BLUE
    a[h // 2 :, w // 2 :] = YELLOW
    return Image.fromarray(a)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(w: int, h: int, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)


@cache
def png_bomb(w: int, h: int) -> bytes:
    """A valid 1-bit black PNG of w x h, a few tens of KB, built without ever holding the pixels."""
    row = bytes(1 + (w + 7) // 8)  # filter byte 0 + packed zero bits
    z = zlib.compressobj(9)
    parts = []
    rows_left = h
    while rows_left:
        n = min(rows_left, 1000)
        parts.append(z.compress(row * n))
        rows_left -= n
    parts.append(z.flush())
    idat = b"".join(parts)
    return png_header(w, h, bit_depth=1) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_with_size(w: int, h: int) -> bytes:
    """A small real JPEG whose SOF0 segment claims w x h."""
    data = bytearray(encode(Image.new("RGB", (16, 16), RED), "JPEG"))
    i = 2
    while data[i] == 0xFF:
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xC0:
            data[i + 5 : i + 9] = struct.pack(">HH", h, w)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF0 segment found")


def assert_well_formed(out: DecodedImage) -> None:
    assert isinstance(out, DecodedImage)
    assert out.pixels.dtype == np.uint8
    assert out.pixels.ndim == 3 and out.pixels.shape[2] == 3
    assert out.pixels.shape[0] > 0 and out.pixels.shape[1] > 0
    assert out.pixels.flags.c_contiguous and out.pixels.flags.writeable
    assert out.format in {"JPEG", "PNG", "WEBP", "BMP"}
    assert 1 <= out.orientation <= 8


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records every pixel load Pillow attempts, to prove refusals happen before decoding."""
    calls: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def spy(self):
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


# --------------------------------------------------------------------------- accepted formats


def test_accepted_formats_are_exactly_the_four_families():
    assert sorted(ACCEPTED_FORMATS) == ["BMP", "JPEG", "MPO", "PNG", "WEBP"]


@pytest.mark.parametrize(
    ("fmt", "kwargs"), [("PNG", {}), ("BMP", {}), ("WEBP", {"lossless": True})]
)
def test_lossless_formats_round_trip_exactly(fmt, kwargs):
    src = noise(41, 23)
    out = decode_image(encode(Image.fromarray(src), fmt, **kwargs))
    assert_well_formed(out)
    assert out.format == fmt
    assert out.orientation == 1 and out.multi_frame is False
    np.testing.assert_array_equal(out.pixels, src)


@pytest.mark.parametrize(("fmt", "kwargs"), [("JPEG", {"quality": 95}), ("WEBP", {"quality": 95})])
def test_lossy_formats_round_trip_closely(fmt, kwargs):
    src = smooth()
    out = decode_image(encode(Image.fromarray(src), fmt, **kwargs))
    assert_well_formed(out)
    assert out.format == fmt and out.pixels.shape == src.shape
    assert np.abs(out.pixels.astype(int) - src).mean() < 3


def test_read_image_decodes_a_file(tmp_path: Path):
    src = noise()
    path = tmp_path / "face.png"
    path.write_bytes(encode(Image.fromarray(src), "PNG"))
    np.testing.assert_array_equal(read_image(path).pixels, src)
    np.testing.assert_array_equal(read_image(str(path)).pixels, src)


# --------------------------------------------------------------------------- refused types


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (encode(Image.fromarray(noise()), "GIF"), "GIF"),
        (encode(Image.fromarray(noise()), "TIFF"), "TIFF"),
        (encode(Image.fromarray(noise()).convert("RGBA"), "ICO"), "ICO"),
        (
            encode(
                Image.new("P", (8, 8), 0),
                "GIF",
                save_all=True,
                append_images=[Image.new("P", (8, 8), i) for i in range(1, 4)],
            ),
            "GIF",
        ),
    ],
    ids=["gif", "tiff", "ico", "animated-gif"],
)
def test_other_image_formats_are_refused_by_name(data, name):
    with pytest.raises(UnsupportedImageType, match=name):
        decode_image(data)


def test_random_bytes_are_not_an_image():
    data = random.Random(7).randbytes(4096)
    assert imaging._signature(data) is None
    with pytest.raises(UnsupportedImageType, match="accepted type: JPEG, PNG, WebP, BMP"):
        decode_image(data)


def test_a_text_file_named_jpg_is_judged_by_content(tmp_path: Path):
    path = tmp_path / "portrait.jpg"
    path.write_text("name,score\nalice,0.93\n" * 20)
    with pytest.raises(UnsupportedImageType, match="not an image of an accepted type"):
        read_image(path)


def test_a_png_named_gif_is_still_a_png(tmp_path: Path):
    path = tmp_path / "upload.gif"
    path.write_bytes(encode(Image.fromarray(noise()), "PNG"))
    assert read_image(path).format == "PNG"


# --------------------------------------------------------------------------- damaged data


def test_zero_bytes_are_invalid(tmp_path: Path):
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InvalidImage, match="empty"):
        read_image(tmp_path / "empty.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_files_cut_in_half_are_invalid(fmt):
    data = encode(Image.fromarray(noise(64, 64)), fmt)
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_accepted_signature_with_broken_header_is_invalid_not_unsupported():
    data = encode(Image.fromarray(noise()), "PNG")
    broken = data[:16] + b"\xff" * 8 + data[24:]  # IHDR body no longer matches its CRC
    with pytest.raises(InvalidImage, match="PNG"):
        decode_image(broken)


def test_bit_flipped_files_give_a_typed_error_or_a_valid_image():
    rng = random.Random(1234)
    seeds = [
        encode(Image.fromarray(noise(32, 32)), "JPEG"),
        encode(Image.fromarray(noise(32, 32)), "PNG"),
        encode(Image.fromarray(noise(32, 32)), "WEBP"),
        encode(Image.fromarray(noise(32, 32)), "BMP"),
        encode(quadrants().convert("P"), "PNG", transparency=0),
    ]
    outcomes = {"decoded": 0, "refused": 0}
    for seed in seeds:
        for _ in range(150):
            data = bytearray(seed)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            try:
                assert_well_formed(decode_image(bytes(data)))
                outcomes["decoded"] += 1
            except FaceMarginError:
                outcomes["refused"] += 1
    # Both branches must really be exercised for the test to mean anything.
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0


# --------------------------------------------------------------------------- size caps


def test_png_decompression_bomb_is_refused_before_decoding(load_calls):
    data = png_bomb(20000, 20000)
    assert len(data) < 100_000
    with pytest.raises(ImageTooLarge):
        decode_image(data)
    assert load_calls == []


def test_pixel_cap_is_exact_and_applies_to_real_data(load_calls):
    data = png_bomb(3000, 2000)
    with pytest.raises(ImageTooLarge, match="3000x2000"):
        decode_image(data, max_pixels=5_999_999)
    assert load_calls == []
    out = decode_image(data, max_pixels=6_000_000)
    assert out.pixels.shape == (2000, 3000, 3)
    assert out.pixels.max() == 0


def test_png_header_claiming_60000_square_is_refused_without_allocation(load_calls):
    data = png_header(60000, 60000) + png_chunk(b"IEND", b"")
    with pytest.raises(ImageTooLarge):
        decode_image(data)
    # Above Pillow's own hard limit too: its DecompressionBombError must come out typed.
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=10**10)
    assert load_calls == []


def test_pillow_bomb_warning_never_escapes_and_our_cap_names_the_size():
    # 100 Mpx is past Pillow's warning threshold but under its error threshold.
    data = png_header(10000, 10000) + png_chunk(b"IEND", b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLarge, match="10000x10000"):
            decode_image(data)


def test_jpeg_header_claiming_huge_size_is_refused(load_calls):
    with pytest.raises(ImageTooLarge):
        decode_image(jpeg_with_size(60000, 60000))
    with pytest.raises(ImageTooLarge, match="9000x8000"):
        decode_image(jpeg_with_size(9000, 8000))
    assert load_calls == []


def test_webp_canvas_is_checked_before_pillow_builds_its_decoder(monkeypatch):
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, GREEN)]
    data = bytearray(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    assert data[12:16] == b"VP8X"
    data[24:30] = (12000 - 1).to_bytes(3, "little") + (11000 - 1).to_bytes(3, "little")

    def no_decoder(*args, **kwargs):
        raise AssertionError("libwebp decoder created before the size check")

    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", no_decoder)
    with pytest.raises(ImageTooLarge, match="12000x11000"):
        decode_image(bytes(data))


def test_byte_cap_is_exact():
    data = encode(Image.fromarray(noise()), "PNG")
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode_image(data, max_bytes=len(data) - 1)
    assert decode_image(data, max_bytes=len(data)).pixels.shape == (24, 40, 3)


def test_defaults_are_the_service_defaults(monkeypatch):
    # The core takes no settings: its defaults are the service's, and the limits it is given
    # are the limits it applies.
    assert (Settings().max_image_bytes, Settings().max_image_pixels) == (
        imaging.MAX_IMAGE_BYTES,
        imaging.MAX_IMAGE_PIXELS,
    )
    data = encode(Image.fromarray(noise()), "PNG")
    monkeypatch.setattr(imaging, "MAX_IMAGE_BYTES", len(data) - 1)
    with pytest.raises(ImageTooLarge):
        decode_image(data)
    monkeypatch.setattr(imaging, "MAX_IMAGE_BYTES", len(data))
    monkeypatch.setattr(imaging, "MAX_IMAGE_PIXELS", 40 * 24 - 1)
    with pytest.raises(ImageTooLarge, match="40x24"):
        decode_image(data)


def test_read_image_refuses_an_oversized_file_without_opening_it(tmp_path, monkeypatch):
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB on paper, nothing on disk
    opened: list[object] = []

    def spy_open(*args, **kwargs):
        opened.append(args)
        raise AssertionError("the file was opened")

    monkeypatch.setattr("builtins.open", spy_open)
    with pytest.raises(ImageTooLarge, match="1,073,741,824 bytes"):
        read_image(path, max_bytes=1000)
    assert opened == []


def test_read_image_refuses_missing_files_and_directories(tmp_path):
    with pytest.raises(InvalidImage, match="cannot read"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(InvalidImage, match="not a regular file"):
        read_image(tmp_path)


# --------------------------------------------------------------------------- EXIF orientation

# Transpose that, applied to the upright picture, gives what a camera with tag k stores.
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def stored_with_orientation(k: int, fmt: str, **kwargs) -> bytes:
    upright = quadrants()
    stored = upright if STORED_AS[k] is None else upright.transpose(STORED_AS[k])
    exif = Image.Exif()
    exif[0x0112] = k
    return encode(stored, fmt, exif=exif, **kwargs)


@pytest.mark.parametrize("k", range(1, 9))
def test_exif_orientation_is_applied_exactly(k):
    data = stored_with_orientation(k, "PNG")
    out = decode_image(data)
    assert out.orientation == k
    np.testing.assert_array_equal(out.pixels, np.asarray(quadrants()))
    # Same answer as Pillow's reference implementation.
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    np.testing.assert_array_equal(out.pixels, np.asarray(reference))


@pytest.mark.parametrize("k", range(1, 9))
def test_exif_orientation_in_jpeg_puts_each_quadrant_back(k):
    out = decode_image(stored_with_orientation(k, "JPEG", quality=95))
    assert out.orientation == k and out.pixels.shape == (24, 40, 3)
    for (y, x), colour in zip(
        [(6, 10), (6, 30), (18, 10), (18, 30)], [RED, GREEN, BLUE, YELLOW], strict=True
    ):
        assert np.abs(out.pixels[y, x].astype(int) - colour).max() < 20, (k, y, x)


@pytest.mark.parametrize("value", [0, 9, 300])
def test_out_of_range_orientation_is_ignored(value):
    exif = Image.Exif()
    exif[0x0112] = value
    out = decode_image(encode(quadrants(), "PNG", exif=exif))
    assert out.orientation == 1
    np.testing.assert_array_equal(out.pixels, np.asarray(quadrants()))


# --------------------------------------------------------------------------- multi-frame


def test_animated_webp_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 12), c) for c in (RED, GREEN, BLUE)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    out = decode_image(data)
    assert out.format == "WEBP" and out.multi_frame is True
    assert out.pixels.shape == (12, 16, 3)
    assert (out.pixels == RED).all()


def test_apng_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 12), c) for c in (BLUE, RED, GREEN)]
    out = decode_image(encode(frames[0], "PNG", save_all=True, append_images=frames[1:]))
    assert out.format == "PNG" and out.multi_frame is True
    assert (out.pixels == BLUE).all()


def test_mpo_counts_as_jpeg_and_gives_its_first_picture():
    first, second = Image.new("RGB", (32, 32), GREEN), Image.new("RGB", (32, 32), BLUE)
    out = decode_image(encode(first, "MPO", save_all=True, append_images=[second]))
    assert out.format == "JPEG" and out.multi_frame is True
    assert np.abs(out.pixels.astype(int) - GREEN).max() < 6


# --------------------------------------------------------------------------- pixel modes


def test_cmyk_jpeg_decodes_to_the_source_colours():
    rgb = quadrants(64, 48)
    data = encode(rgb.convert("CMYK"), "JPEG", quality=95)
    assert b"Adobe" in data  # Pillow writes Adobe-style inverted CMYK, as Photoshop does
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    for (y, x), colour in zip(
        [(12, 16), (12, 48), (36, 16), (36, 48)], [RED, GREEN, BLUE, YELLOW], strict=True
    ):
        assert np.abs(out.pixels[y, x].astype(int) - colour).max() < 12, (y, x)


def test_grey_is_replicated_to_three_channels():
    grey = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
    out = decode_image(encode(Image.fromarray(grey, "L"), "PNG"))
    np.testing.assert_array_equal(out.pixels, np.repeat(grey[..., None], 3, axis=2))


def test_one_bit_image_is_black_and_white():
    bits = np.zeros((8, 16), bool)
    bits[:, ::2] = True
    out = decode_image(encode(Image.fromarray(bits), "PNG"))
    np.testing.assert_array_equal(out.pixels[..., 0], np.where(bits, 255, 0))


def test_grey_with_alpha_is_composited_over_white():
    la = np.zeros((2, 3, 2), np.uint8)
    la[..., 0] = [[0, 100, 200], [50, 50, 50]]
    la[..., 1] = [[255, 255, 255], [0, 128, 255]]
    out = decode_image(encode(Image.fromarray(la, "LA"), "PNG"))
    expected = [[0, 100, 200], [255, round((50 * 128 + 255 * 127) / 255), 50]]
    np.testing.assert_array_equal(out.pixels[..., 0], expected)
    np.testing.assert_array_equal(out.pixels[..., 0], out.pixels[..., 2])


def test_rgba_alpha_over_white_hides_garbage_under_transparency():
    rgba = np.array([[[12, 34, 56, 0], [10, 20, 30, 255], [0, 0, 200, 128]]], np.uint8)
    half = [round((c * 128 + 255 * 127) / 255) for c in (0, 0, 200)]
    assert half == [127, 127, 227]
    for fmt, kwargs in [("PNG", {}), ("WEBP", {"lossless": True, "exact": True})]:
        out = decode_image(encode(Image.fromarray(rgba, "RGBA"), fmt, **kwargs))
        np.testing.assert_array_equal(out.pixels[0, 0], [255, 255, 255])
        np.testing.assert_array_equal(out.pixels[0, 1], [10, 20, 30])
        np.testing.assert_array_equal(out.pixels[0, 2], half)


def test_palette_with_transparent_index_becomes_white():
    img = Image.new("P", (3, 1))
    img.putpalette([9, 9, 9, 255, 0, 0, 0, 255, 0])
    img.putdata([0, 1, 2])
    out = decode_image(encode(img, "PNG", transparency=0))
    np.testing.assert_array_equal(out.pixels[0], [[255, 255, 255], [255, 0, 0], [0, 255, 0]])


def test_palette_bmp_uses_its_palette():
    img = Image.new("P", (3, 2))
    img.putpalette([1, 2, 3, 200, 100, 50, 0, 0, 255])
    img.putdata([0, 1, 2, 2, 1, 0])
    out = decode_image(encode(img, "BMP"))
    np.testing.assert_array_equal(out.pixels[0], [[1, 2, 3], [200, 100, 50], [0, 0, 255]])


def test_sixteen_bit_grey_is_rescaled_not_clipped():
    grey16 = (np.arange(256, dtype=np.uint16) * 257).reshape(4, 64)  # full 0..65535 gradient
    ok, png = cv2.imencode(".png", grey16)
    assert ok
    # Pillow's own conversion clips at 255: most of the gradient would come out white.
    assert (np.asarray(Image.open(io.BytesIO(png.tobytes())).convert("L")) == 255).mean() > 0.9
    out = decode_image(png.tobytes())
    assert out.format == "PNG"
    expected = np.arange(256, dtype=np.uint8).reshape(4, 64)
    for c in range(3):
        np.testing.assert_array_equal(out.pixels[..., c], expected)


def test_sixteen_bit_rgb_keeps_the_high_byte():
    rgb16 = np.random.default_rng(3).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    ok, png = cv2.imencode(".png", rgb16[..., ::-1])  # OpenCV writes BGR order
    assert ok and png[24:26].tobytes() == b"\x10\x02"  # IHDR: 16-bit truecolour
    out = decode_image(png.tobytes())
    np.testing.assert_array_equal(out.pixels, (rgb16 >> 8).astype(np.uint8))


def test_sixteen_bit_rgba_is_composited_over_white():
    rgba16 = np.zeros((1, 2, 4), np.uint16)
    rgba16[0, 0] = [65535, 0, 0, 65535]
    rgba16[0, 1] = [1234, 5678, 9999, 0]
    ok, png = cv2.imencode(".png", rgba16[..., [2, 1, 0, 3]])
    assert ok
    np.testing.assert_array_equal(decode_image(png.tobytes()).pixels[0], [[255, 0, 0], [255] * 3])


# --------------------------------------------------------------------------- property


@cache
def fuzz_seeds() -> tuple[bytes, ...]:
    img = Image.fromarray(noise(12, 10))
    return (
        encode(img, "PNG"),
        encode(img, "JPEG"),
        encode(img, "WEBP"),
        encode(img, "BMP"),
        encode(img.convert("RGBA"), "PNG", save_all=True, append_images=[img.convert("RGBA")]),
    )


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=2000))
    # A real file with a few bytes overwritten and a random cut reaches past the signatures,
    # into the header and pixel parsers that plain random bytes never get to.
    data = bytearray(draw(st.sampled_from(fuzz_seeds())))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(hostile_bytes())
def test_any_bytes_decode_or_raise_a_typed_error(data: bytes):
    try:
        out = decode_image(data)
    except FaceMarginError as exc:
        assert isinstance(exc, InvalidImage | ImageTooLarge | UnsupportedImageType)
        assert exc.message
        return
    assert_well_formed(out)


def test_png_cut_off_after_a_huge_ihdr_is_too_large_not_corrupt(load_calls):
    # What an attacker sends to probe the limit: 33 bytes, no pixel data at all.
    with pytest.raises(ImageTooLarge, match="60000x60000"):
        decode_image(png_header(60000, 60000))
    assert load_calls == []
