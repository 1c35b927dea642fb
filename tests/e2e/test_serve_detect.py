"""`facemargin serve` as a real process on loopback: /health, /detect on real photos, and the
error envelope for hostile input, with the server still serving afterwards."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import gallery_env, running

MAX_IMAGE_BYTES = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    env = gallery_env(tmp_path_factory.mktemp("data"))
    limits = {
        "FACEMARGIN_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
        "FACEMARGIN_MAX_BODY_BYTES": "500000",
    }
    with running(env | limits) as process:
        yield process.url


def post_image(url: str, data: bytes, name: str = "photo.jpg") -> httpx.Response:
    return httpx.post(f"{url}/detect", files={"image": (name, data, "image/jpeg")}, timeout=30)


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    return b"\x89PNG\r\n\x1a\n" + chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    )


def test_health(server):
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}


def test_detect_finds_the_face_in_real_photos(server, photos):
    for path in photos[:6]:
        body = post_image(server, path.read_bytes()).json()
        assert body["image"] == {
            "width": 112,
            "height": 112,
            "format": "JPEG",
            "exif_orientation": 1,
        }
        assert len(body["faces"]) >= 1
        face = body["faces"][0]
        left_eye, right_eye, nose, left_mouth, _ = face["landmarks"]
        assert left_eye[0] < right_eye[0] and left_eye[1] < nose[1] < left_mouth[1]
        assert 0.9 < face["score"] <= 1.0


def test_exif_rotated_upload_is_turned_upright(server, photos):
    upright = Image.open(photos[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; viewers turn it 90 degrees clockwise
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", exif=exif, quality=95)
    body = post_image(server, buffer.getvalue()).json()
    assert body["image"]["exif_orientation"] == 6
    left_eye, right_eye, nose, *_ = body["faces"][0]["landmarks"]
    assert left_eye[0] < right_eye[0] and left_eye[1] < nose[1]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"", 400, "invalid_image"),
        (b"this is not an image, whatever its name says", 415, "unsupported_media_type"),
        (png_header_only(60_000, 60_000), 413, "payload_too_large"),
    ],
)
def test_hostile_uploads_get_the_error_envelope(server, payload, status, code):
    response = post_image(server, payload)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert "Traceback" not in response.text


def test_truncated_photo_is_invalid(server, photos):
    data = photos[0].read_bytes()
    response = post_image(server, data[: len(data) // 2])
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_image")


def test_oversized_body_is_refused_before_reading(server):
    response = post_image(server, b"\xff" * (MAX_IMAGE_BYTES + 200_000))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_streamed_body_without_length_is_cut_off_at_the_cap(server):
    def chunks():
        yield (
            b"--b0undary\r\nContent-Disposition: form-data; name=image; filename=a.jpg\r\n"
            b"Content-Type: image/jpeg\r\n\r\n"
        )
        for _ in range(100):
            yield b"\xff" * 10_000
        yield b"\r\n--b0undary--\r\n"

    response = httpx.post(
        f"{server}/detect",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=b0undary"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [("GET", "/nowhere", 404, "not_found"), ("GET", "/detect", 405, "method_not_allowed")],
)
def test_routing_errors_use_the_envelope(server, method, path, status, code):
    response = httpx.request(method, f"{server}{path}")
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_missing_field_is_a_structured_422(server):
    response = httpx.post(f"{server}/detect", files={"wrong": ("a.jpg", b"x")})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert "image" in response.json()["error"]["message"]


def test_server_still_serves_after_abuse_and_documents_itself(server, photos):
    assert post_image(server, photos[1].read_bytes()).status_code == 200
    schema = httpx.get(f"{server}/openapi.json").json()
    assert "/detect" in schema["paths"] and "/health" in schema["paths"]
    assert httpx.get(f"{server}/docs").status_code == 200
