"""A corpus of hostile uploads against a real server: each gets a structured 4xx quickly, the
server's memory stays bounded, and it keeps serving real requests (and its gallery) after.

The corpus is built in code from real CFP photos, so nothing derived from the data is stored.
"""

from __future__ import annotations

import base64
import io
import random
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import Server, gallery_env, running
from tests.e2e.test_api import CFP, enroll, identify, photo

pytestmark = pytest.mark.skipif(not CFP.is_dir(), reason=f"CFP photos not found at {CFP}")

BODY_CAP = 4 * 1024 * 1024
SECONDS = 1.0  # every refusal must come back within this
RSS_GROWTH_MB = 150


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 30_000) -> bytes:
    """A valid greyscale PNG of side×side zeros: a few hundred kB that would inflate to ~900 MB."""
    row = b"\0" * (side + 1)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def png_huge_header() -> bytes:
    """An IHDR claiming 65535×65535 RGBA, then nothing."""
    header = struct.pack(">IIBBBBB", 65_535, 65_535, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)


def jpeg_huge_header(real: bytes) -> bytes:
    """A real JPEG whose start-of-frame header claims 65500×65500."""
    data = bytearray(real)
    at = min(i for i in (data.find(m) for m in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2")) if i > 0)
    data[at + 5 : at + 9] = struct.pack(">HH", 65_500, 65_500)
    return bytes(data)


def bit_flipped(real: bytes, seed: int, flips: int = 40) -> bytes:
    data = bytearray(real)
    rng = random.Random(seed)
    for _ in range(flips):
        i = rng.randrange(2, len(data))
        data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def many_frames(fmt: str, frames: int = 1000) -> bytes:
    base = Image.new("RGB", (64, 64))
    images = [Image.new("RGB", (64, 64), (i % 256, 0, 0)) for i in range(1, frames)]
    buffer = io.BytesIO()
    base.save(buffer, fmt, save_all=True, append_images=images)
    return buffer.getvalue()


def real_png(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, "PNG")
    return buffer.getvalue()


def corpus() -> dict[str, tuple[bytes, set[int]]]:
    """name: (file bytes, acceptable statuses). Bit flips may still leave a decodable photo
    with a face in it, so those may also succeed; nothing may fail with 5xx."""
    jpeg = photo(1).read_bytes()
    png = real_png(photo(1))
    items: dict[str, tuple[bytes, set[int]]] = {
        "png decompression bomb": (png_bomb(), {413}),
        "png header claiming 65535 square": (png_huge_header(), {413}),
        "jpeg header claiming 65500 square": (jpeg_huge_header(jpeg), {413}),
        "jpeg cut in half": (jpeg[: len(jpeg) // 2], {400}),
        "png cut in half": (png[: len(png) // 2], {400}),
        "jpeg with only its first 4 bytes": (jpeg[:4], {400}),
        "1000-frame gif": (many_frames("GIF"), {415}),
        "1000-frame animated png": (many_frames("PNG"), {200, 422}),
        "1000-frame animated webp": (many_frames("WEBP"), {200, 422}),
        "ELF binary named .jpg": (b"\x7fELF\x02\x01\x01" + b"\0" * 4000, {415}),
        "zip named .jpg": (b"PK\x03\x04" + b"\0" * 4000, {415}),
        "html named .jpg": (b"<!doctype html><script>alert(1)</script>" * 50, {415}),
        "empty file": (b"", {400, 422}),
    }
    for seed in range(6):
        items[f"bit-flipped jpeg {seed}"] = (bit_flipped(jpeg, seed), {200, 400, 415, 422})
        items[f"bit-flipped png {seed}"] = (bit_flipped(png, seed), {200, 400, 415, 422})
    return items


def rss_mb(server: Server) -> float:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    env = gallery_env(tmp_path_factory.mktemp("data"), FACEMARGIN_MAX_BODY_BYTES=str(BODY_CAP))
    with running(env) as process:
        yield process


def timed(send: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    response = send()
    return response, time.perf_counter() - start


def assert_structured(response: httpx.Response, statuses: set[int], what: str) -> None:
    assert response.status_code in statuses, (what, response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "request_id"}, (what, body)
        assert body["error"]["code"] and body["error"]["message"], (what, body)


def test_hostile_files_are_refused_quickly_and_nothing_is_lost(server):
    assert enroll(server.url, "alice", [photo(1, 1), photo(1, 2)]).status_code == 200
    client = httpx.Client(base_url=server.url, timeout=30)
    client.post("/identify", files={"image": ("w.jpg", photo(2).read_bytes())})  # warm up
    before = rss_mb(server)
    slow = []
    for name, (data, statuses) in corpus().items():
        for route, field in (("/identify", "image"), ("/enroll", "images")):
            extra = {"data": {"subject_id": "mallory"}} if route == "/enroll" else {}
            response, seconds = timed(
                lambda: client.post(route, files={field: ("photo.jpg", data)}, **extra)  # noqa: B023
            )
            enrolled_ok = route == "/enroll" and response.status_code == 200
            # /enroll reports each image; when every image is refused the request is a 422.
            allowed = statuses | {422} if route == "/enroll" else statuses
            assert_structured(response, allowed, name)
            if enrolled_ok:
                client.delete("/subjects/mallory")
            if response.status_code >= 400 and seconds > SECONDS:
                slow.append((name, route, round(seconds, 2)))
    assert not slow, f"refusals slower than {SECONDS} s: {slow}"
    growth = rss_mb(server) - before
    assert growth < RSS_GROWTH_MB, f"server memory grew {growth:.0f} MB over the corpus"

    # Still serving, and what was stored before is intact.
    found = identify(server.url, photo(1, 1).read_bytes())
    assert found.status_code == 200 and found.json()["faces"][0]["subject_id"] == "alice"
    assert len(client.get("/subjects/alice").json()["templates"]) == 2
    assert client.get("/subjects/mallory").status_code == 404


def test_oversized_bodies_are_cut_off_without_reading_them(server):
    big = b"\xff\xd8\xff\xe0" + b"\0" * (3 * BODY_CAP)
    # Declared length over the cap: refused from the headers.
    response, seconds = timed(
        lambda: httpx.post(server.url + "/identify", files={"image": ("a.jpg", big)}, timeout=30)
    )
    assert_structured(response, {413}, "declared oversized body")
    assert seconds < SECONDS

    # No declared length (chunked): cut off while streaming.
    def chunks() -> Iterator[bytes]:
        boundary = b"--x\r\n"
        yield boundary + b'Content-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        for _ in range(3 * BODY_CAP // 65536):
            yield b"\0" * 65536
        yield b"\r\n--x--\r\n"

    response, seconds = timed(
        lambda: httpx.post(
            server.url + "/identify",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=x"},
            timeout=30,
        )
    )
    assert_structured(response, {413}, "chunked oversized body")
    assert seconds < 3 * SECONDS


def test_base64_json_bodies_get_a_415_or_413_quickly(server):
    """Photos come as multipart only: a JSON body of base64 photos is told what to send, and
    one over the body cap is cut off like any other oversized body."""
    face = base64.b64encode(photo(1).read_bytes()).decode()
    for route, body in (
        ("/verify", {"image1": face, "image2": face}),
        ("/identify", {"image": face}),
        ("/enroll", {"subject_id": "mallory", "images": [face]}),
        ("/detect", {"image": face}),
    ):
        response, seconds = timed(
            lambda: httpx.post(server.url + route, json=body, timeout=30)  # noqa: B023
        )
        assert_structured(response, {415}, f"base64 JSON to {route}")
        assert response.json()["error"]["details"]["expected"] == "multipart/form-data"
        assert seconds < SECONDS
    oversized = {"image": base64.b64encode(b"\xff\xd8" + b"\0" * 2 * BODY_CAP).decode()}
    response, seconds = timed(
        lambda: httpx.post(server.url + "/identify", json=oversized, timeout=30)
    )
    assert_structured(response, {413}, "oversized base64 JSON")
    assert seconds < SECONDS
    assert httpx.get(server.url + "/subjects/mallory", timeout=10).status_code == 404


def test_thousands_of_form_fields_get_a_4xx(server):
    fields = {f"f{i}": "x" for i in range(5000)}
    response, seconds = timed(
        lambda: httpx.post(
            server.url + "/identify",
            data=fields,
            files={"image": ("a.jpg", photo(1).read_bytes())},
            timeout=30,
        )
    )
    assert_structured(response, {400, 413, 422}, "5000 form fields")
    assert seconds < SECONDS
    many_files = [("images", (f"{i}.jpg", b"x")) for i in range(2000)]
    response = httpx.post(
        server.url + "/enroll", data={"subject_id": "bob"}, files=many_files, timeout=30
    )
    assert_structured(response, {400, 413, 422}, "2000 files")
    assert httpx.get(server.url + "/subjects/bob", timeout=10).status_code == 404
