"""The HTTP API end to end: a real server process, real photos, the shipped model, a real
SQLite gallery. Verify, enroll, identify (open set), manage subjects, and every error."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import DATA
from tests.e2e.conftest import gallery_env, running

CFP = DATA / "val" / "cfp" / "Data" / "Images"
pytestmark = pytest.mark.skipif(not CFP.is_dir(), reason=f"CFP photos not found at {CFP}")


def photo(person: int, k: int = 1) -> Path:
    return CFP / f"{person:03d}" / "frontal" / f"{k:02d}.jpg"


def upload(path: Path, field: str = "image") -> tuple[str, tuple[str, bytes, str]]:
    return field, (path.name, path.read_bytes(), "image/jpeg")


def reencoded(path: Path, quality: int = 80, scale: float = 0.9) -> bytes:
    """The same shot, resized and recompressed: what a second upload of a photo looks like."""
    image = Image.open(path).convert("RGB")
    image = image.resize((int(image.width * scale), int(image.height * scale)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def enroll(url: str, subject: str, paths: list[Path], **fields: str) -> httpx.Response:
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    return httpx.post(
        f"{url}/enroll", data={"subject_id": subject, **fields}, files=files, timeout=60
    )


def identify(url: str, data: bytes, **fields: str) -> httpx.Response:
    return httpx.post(
        f"{url}/identify",
        files={"image": ("probe.jpg", data, "image/jpeg")},
        data=fields,
        timeout=60,
    )


def reply_containing(conn: socket.socket, marker: bytes) -> bytes:
    """What the server sent on `conn` up to and including `marker`. A socket timeout here
    means the server waited for the (unsent) body instead of answering from the headers."""
    reply = b""
    while marker not in reply:
        chunk = conn.recv(65536)
        assert chunk, reply
        reply += chunk
    return reply


def test_verify_scores_a_person_above_a_stranger(server):
    same = httpx.post(
        f"{server.url}/verify",
        files=[upload(photo(1, 1), "image1"), upload(photo(1, 2), "image2")],
        timeout=60,
    ).json()
    other = httpx.post(
        f"{server.url}/verify",
        files=[upload(photo(1, 1), "image1"), upload(photo(2, 1), "image2")],
        timeout=60,
    ).json()
    assert same["similarity"] > other["similarity"]
    assert same["threshold"]["source"] == "calibrated" and same["threshold"]["far"] == 1e-3
    assert other["match"] is False
    assert len(same["faces"]) == 2 and len(same["faces"][0]["landmarks"]) == 5
    assert same["faces"][0]["quality"] is None or same["faces"][0]["quality"] > 0


def test_verify_with_an_explicit_threshold_and_a_far(server):
    files = [upload(photo(3, 1), "image1"), upload(photo(3, 1), "image2")]
    body = httpx.post(
        f"{server.url}/verify", files=files, data={"threshold": "0.5"}, timeout=60
    ).json()
    point = body["threshold"]
    assert (point["threshold"], point["source"], point["protocol"]) == (0.5, "explicit", None)
    # What the threshold stands for, read off the model's calibration curve (FAR 1e-4 is at
    # 0.4814, 1e-5 higher up).
    assert 1e-5 < point["far"] < 1e-4
    assert body["similarity"] > 0.999 and body["match"] is True  # the same photo twice
    response = httpx.post(f"{server.url}/verify", files=files, data={"far": "0.5"}, timeout=60)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "threshold_unavailable"


def test_enroll_identify_delete_round_trip(server):
    url = server.url
    body = enroll(url, "person-010", [photo(10, 1), photo(10, 2)], display_name="Ten").json()
    assert [t["index"] for t in body["enrolled"]] == [0, 1] and body["rejected"] == []
    assert body["template_count"] == 2
    enroll(url, "person-011", [photo(11, 1)])
    enroll(url, "person-012", [photo(12, 1)], metadata=json.dumps({"team": "blue"}))

    found = identify(url, reencoded(photo(10, 1))).json()
    (face,) = found["faces"]
    assert face["decision"] == "match" and face["subject_id"] == "person-010"
    assert face["candidates"][0]["display_name"] == "Ten"
    assert face["candidates"][0]["similarity"] >= found["threshold"]["threshold"]

    stranger = identify(url, photo(400, 1).read_bytes()).json()["faces"][0]
    assert stranger["decision"] == "unknown" and stranger["subject_id"] is None
    assert all(c["similarity"] < found["threshold"]["threshold"] for c in stranger["candidates"])

    page = httpx.get(f"{url}/subjects", params={"limit": 2}).json()
    assert page["total"] >= 3 and len(page["subjects"]) == 2
    detail = httpx.get(f"{url}/subjects/person-012").json()
    assert detail["metadata"] == {"team": "blue"} and len(detail["templates"]) == 1

    deleted = httpx.delete(f"{url}/subjects/person-010").json()
    assert deleted == {"subject_id": "person-010", "templates_removed": 2}
    after = identify(url, reencoded(photo(10, 1))).json()["faces"][0]
    assert all(c["subject_id"] != "person-010" for c in after["candidates"])
    gone = httpx.get(f"{url}/subjects/person-010")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "subject_not_found"


def test_enroll_reports_each_image(server, tmp_path):
    group = tmp_path / "group.jpg"
    a, b = Image.open(photo(20, 1)).convert("RGB"), Image.open(photo(21, 1)).convert("RGB")
    canvas = Image.new("RGB", (a.width + b.width, max(a.height, b.height)))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width, 0))
    canvas.save(group)
    blank = tmp_path / "blank.jpg"
    Image.new("RGB", (300, 300), (120, 120, 120)).save(blank)
    body = enroll(server.url, "person-020", [photo(20, 2), group, blank]).json()
    assert [t["index"] for t in body["enrolled"]] == [0]
    assert {r["index"]: r["code"] for r in body["rejected"]} == {
        1: "multiple_faces",
        2: "face_not_found",
    }
    nothing = enroll(server.url, "person-021", [blank])
    assert nothing.status_code == 422 and nothing.json()["error"]["code"] == "face_not_found"
    missing = httpx.get(f"{server.url}/subjects/person-021")
    assert missing.status_code == 404  # nothing enrolled, nothing created


def _composed(tmp_path: Path, name: str, people: list[tuple[int, float]]) -> Path:
    """Photos of CFP people side by side on one canvas, each scaled by its factor."""
    faces = []
    for person, scale in people:
        image = Image.open(photo(person, 1)).convert("RGB")
        faces.append(image.resize((int(image.width * scale), int(image.height * scale))))
    canvas = Image.new("RGB", (sum(f.width for f in faces), max(f.height for f in faces)), "gray")
    x = 0
    for face in faces:
        canvas.paste(face, (x, 0))
        x += face.width
    path = tmp_path / name
    canvas.save(path, quality=95)
    return path


def test_enroll_takes_the_dominant_face_and_names_the_faces_of_a_real_ambiguity(server, tmp_path):
    """A passer-by in the background does not stop an enrolment; two people of a size do, and
    the refusal lists their boxes so the client can choose (with face_policy)."""
    background = _composed(tmp_path, "background.jpg", [(30, 1.0), (31, 0.45)])
    pair = _composed(tmp_path, "pair.jpg", [(32, 1.0), (33, 1.0)])
    taken = enroll(server.url, "person-030", [background])
    assert taken.status_code == 200, taken.text
    assert [t["index"] for t in taken.json()["enrolled"]] == [0]
    strict = enroll(server.url, "person-031", [background], face_policy="single")
    assert strict.status_code == 422 and strict.json()["error"]["code"] == "multiple_faces"

    refused = enroll(server.url, "person-032", [pair])
    error = refused.json()["error"]
    assert refused.status_code == 422 and error["code"] == "multiple_faces"
    (rejection,) = error["details"]["rejected"]
    boxes = rejection["details"]["boxes"]
    assert len(boxes) == 2 and all(len(b) == 4 for b in boxes)
    assert "face_policy=largest" in rejection["message"]  # an option /enroll has
    chosen = enroll(server.url, "person-032", [pair], face_policy="largest")
    assert chosen.status_code == 200 and len(chosen.json()["enrolled"]) == 1
    assert enroll(server.url, "person-033", [pair], face_policy="all").status_code == 422


def test_the_same_photo_is_not_enrolled_twice(server, tmp_path):
    first = enroll(server.url, "person-050", [photo(50, 1), photo(50, 2)])
    assert first.status_code == 200 and len(first.json()["enrolled"]) == 2
    template_id = first.json()["enrolled"][0]["template_id"]
    # The same pixels in another file (PNG instead of JPEG): not new, whatever the bytes.
    png = tmp_path / "again.png"
    Image.open(photo(50, 1)).save(png)
    again = enroll(server.url, "person-050", [png, photo(50, 3), photo(50, 3)])
    body = again.json()
    assert again.status_code == 200 and [t["index"] for t in body["enrolled"]] == [1]
    rejected = {r["index"]: r for r in body["rejected"]}
    assert rejected[0]["code"] == rejected[2]["code"] == "duplicate_template"
    assert rejected[0]["details"] == {"subject_id": "person-050", "template_id": template_id}
    assert rejected[2]["details"] == {"duplicate_of_request_image": 1}
    assert body["template_count"] == 3
    only = enroll(server.url, "person-051", [photo(50, 2)])
    assert only.status_code == 409 and only.json()["error"]["code"] == "duplicate_template"
    assert only.json()["error"]["details"]["rejected"][0]["details"]["subject_id"] == "person-050"


def test_one_problem_has_one_status_on_every_route(server, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    verified = httpx.post(
        f"{server.url}/verify",
        files=[upload(empty, "image1"), upload(photo(1, 1), "image2")],
        timeout=60,
    )
    enrolled = enroll(server.url, "person-040", [empty])
    assert verified.json()["error"]["code"] == enrolled.json()["error"]["code"] == "invalid_image"
    assert verified.status_code == enrolled.status_code == 400
    blank = tmp_path / "blank.jpg"
    Image.new("RGB", (300, 300), (120, 120, 120)).save(blank)
    mixed = enroll(server.url, "person-040", [empty, blank])
    assert mixed.status_code == 422 and mixed.json()["error"]["code"] == "no_image_enrolled"
    codes = [r["code"] for r in mixed.json()["error"]["details"]["rejected"]]
    assert codes == ["invalid_image", "face_not_found"]
    everything = httpx.post(
        f"{server.url}/verify",
        files=[upload(photo(1, 1), "image1"), upload(photo(1, 2), "image2")],
        data={"face_policy": "all"},
        timeout=60,
    )
    assert everything.status_code == 422
    assert everything.json()["error"]["details"]["field"] == "face_policy"


def test_embed_returns_unit_vectors_of_the_model(server):
    info = httpx.get(f"{server.url}/info").json()
    body = httpx.post(f"{server.url}/embed", files=[upload(photo(5, 1))], timeout=60).json()
    assert body["model_id"] == info["model"]["model_id"]
    (face,) = body["faces"]
    assert len(face["embedding"]) == info["model"]["embedding_dim"]
    assert abs(sum(x * x for x in face["embedding"]) - 1) < 1e-4


@pytest.mark.parametrize(
    ("request_args", "status", "code"),
    [
        (
            {"method": "POST", "url": "/verify", "files": {"image1": ("a.jpg", b"")}},
            422,
            "invalid_request",
        ),
        (
            {
                "method": "POST",
                "url": "/identify",
                "files": {"image": ("a.jpg", b"GIF89a" + b"\0" * 20)},
            },
            415,
            "unsupported_media_type",
        ),
        (
            {
                "method": "POST",
                "url": "/identify",
                "files": {"image": ("a.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 10)},
            },
            400,
            "invalid_image",
        ),
        (
            {
                "method": "POST",
                "url": "/enroll",
                "data": {"subject_id": "bad id!"},
                "files": {"images": ("a.jpg", b"x")},
            },
            422,
            "invalid_request",
        ),
        ({"method": "DELETE", "url": "/subjects/nobody"}, 404, "subject_not_found"),
        ({"method": "GET", "url": "/subjects", "params": {"limit": 0}}, 422, "invalid_request"),
    ],
)
def test_errors_share_one_envelope(server, request_args, status, code):
    args = dict(request_args)
    response = httpx.request(args.pop("method"), server.url + args.pop("url"), timeout=60, **args)
    body = response.json()
    assert (response.status_code, body["error"]["code"]) == (status, code)
    assert set(body) == {"error", "request_id"} and set(body["error"]) == {
        "code",
        "message",
        "details",
    }
    assert body["request_id"] == response.headers["x-request-id"]


def test_operations_endpoints(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["ready"] is True and ready["checks"]["index"]["ok"] is True
    info = httpx.get(f"{server.url}/info").json()
    assert info["providers"][0] == "CPUExecutionProvider"
    assert info["gallery"]["index_kind"] == "exact"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'facemargin_requests_total{method="POST",route="/verify",status="200"}' in metrics
    assert 'facemargin_stage_seconds_count{stage="embed"}' in metrics
    assert "facemargin_gallery_templates" in metrics
    assert "/identify" in httpx.get(f"{server.url}/openapi.json").json()["paths"]


def test_api_keys_and_rate_limits(tmp_path):
    from service.api.security import hash_key

    env = gallery_env(tmp_path) | {
        "FACEMARGIN_API_KEYS": f"alice:{hash_key('s3cret-key')}",
        "FACEMARGIN_RATE_LIMIT_PER_MINUTE": "3",
    }
    with running(env) as server:
        assert httpx.get(f"{server.url}/subjects").json()["error"]["code"] == "unauthorized"
        wrong = httpx.get(f"{server.url}/subjects", headers={"X-API-Key": "guess"})
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "unauthorized")
        # RFC 9110: a 401 names the scheme it accepts, and here the header it travels in.
        challenge = wrong.headers["www-authenticate"]
        assert challenge.startswith("ApiKey ") and 'header="X-API-Key"' in challenge
        headers = {"X-API-Key": "s3cret-key"}
        codes = [httpx.get(f"{server.url}/subjects", headers=headers).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3] == 429
        limited = httpx.get(f"{server.url}/subjects", headers=headers)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        assert httpx.get(f"{server.url}/health").status_code == 200  # probes need no key
        # With keys on, the API's map is not public unless FACEMARGIN_PUBLIC_DOCS says so.
        # (without a key, nothing but the open paths answers anything but 401).
        assert httpx.get(f"{server.url}/openapi.json").status_code == 401
        assert httpx.get(f"{server.url}/docs").status_code == 401
    with running(env | {"FACEMARGIN_PUBLIC_DOCS": "true"}) as server:
        assert httpx.get(f"{server.url}/openapi.json").status_code == 200
    with running(
        gallery_env(tmp_path / "b") | {"FACEMARGIN_API_KEYS": env["FACEMARGIN_API_KEYS"]}
    ) as server:
        headers = {"X-API-Key": "s3cret-key"}
        assert httpx.get(f"{server.url}/openapi.json", headers=headers).status_code == 404


def test_a_full_server_sheds_load_at_once(tmp_path):
    import concurrent.futures

    env = gallery_env(tmp_path) | {"FACEMARGIN_MAX_IN_FLIGHT": "1"}
    data = photo(7, 1).read_bytes()
    with running(env) as server:
        retry_after: list[str | None] = []

        def one(_: int) -> tuple[int, str, float]:
            start = time.monotonic()
            response = httpx.post(
                f"{server.url}/embed", files={"image": ("a.jpg", data, "image/jpeg")}, timeout=60
            )
            code = response.json()["error"]["code"] if response.status_code != 200 else ""
            if response.status_code == 503:
                retry_after.append(response.headers.get("retry-after"))
            return response.status_code, code, time.monotonic() - start

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        statuses = [status for status, _, _ in results]
        assert 200 in statuses and 503 in statuses
        assert {code for status, code, _ in results if status == 503} == {"overloaded"}
        shed = [seconds for status, _, seconds in results if status == 503]
        served = [seconds for status, _, seconds in results if status == 200]
        assert max(shed) < max(served)  # refused at once, not after queueing
        # Every refusal says when to come back, from the queue's state (at least a second).
        assert retry_after and all(v is not None and int(v) >= 1 for v in retry_after)


def test_a_full_server_refuses_an_upload_before_reading_its_body(tmp_path):
    """While the only slot is taken, an upload is refused from its headers: the 503 comes
    back although the client has sent only the start of the 1 MB body it announced."""
    env = gallery_env(tmp_path) | {"FACEMARGIN_MAX_IN_FLIGHT": "1"}
    photos = [reencoded(photo(p), 90, scale=16) for p in range(1, 21)]  # 20 × 1792²: seconds
    with running(env) as server:
        held = {}
        files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
        holder = threading.Thread(
            target=lambda: held.update(
                response=httpx.post(
                    f"{server.url}/enroll", data={"subject_id": "holder"}, files=files, timeout=60
                )
            )
        )
        holder.start()
        deadline = time.monotonic() + 30
        while "facemargin_in_flight 1.0" not in httpx.get(f"{server.url}/metrics").text:
            assert time.monotonic() < deadline, "the enrolment never took the slot"
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(
                b"POST /identify HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 1000000\r\n\r\n--b\r\n"
            )
            reply = reply_containing(conn, b"overloaded")
        assert reply.startswith(b"HTTP/1.1 503"), reply[:200]
        holder.join()
        assert held["response"].status_code == 200, held["response"].text


def thread_nice_values(pid: int) -> dict[int, int]:
    """Each thread's nice value (field 19 of /proc/PID/task/TID/stat)."""
    values = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        values[int(task.name)] = int(fields[16])
    return values


def test_workers_run_below_the_event_loop(server):
    """Detection and embedding threads yield the CPU to the thread that accepts and refuses
    requests, so an overloaded server still answers at once."""
    response = httpx.post(f"{server.url}/detect", files=[upload(photo(3))], timeout=60)
    assert response.status_code == 200  # the worker threads start with the first job
    pid = server.process.pid
    nice = thread_nice_values(pid)
    loop = nice[pid]  # uvicorn's event loop runs on the main thread
    assert min(loop + 10, 19) in nice.values(), nice
    assert loop == os.getpriority(os.PRIO_PROCESS, 0), "the server itself must not be reniced"


def test_a_gallery_refuses_another_models_embeddings(tmp_path):
    from export.onnx_model import read_contract, write_contract
    from tests.conftest import MODELS

    other = tmp_path / "other.onnx"
    other.write_bytes((MODELS / "embedder.onnx").read_bytes())
    contract = read_contract(other)
    write_contract(other, contract.model_copy(update={"model_id": "0" * 16}))
    env = gallery_env(tmp_path / "data")
    with running(env) as server:
        assert enroll(server.url, "someone", [photo(8, 1)]).status_code == 200
    with running(env | {"FACEMARGIN_MODEL_PATH": str(other)}, wait_for="/health") as server:
        ready = httpx.get(f"{server.url}/ready")
        assert ready.status_code == 503
        assert "bound to model" in ready.json()["checks"]["gallery"]["detail"]
        refused = identify(server.url, photo(8, 1).read_bytes())
        assert (refused.status_code, refused.json()["error"]["code"]) == (409, "model_mismatch")
        # Verification needs no gallery and still works.
        files = [upload(photo(8, 1), "image1"), upload(photo(8, 2), "image2")]
        assert httpx.post(f"{server.url}/verify", files=files, timeout=60).status_code == 200


def test_identify_holds_the_stranger_match_rate_as_the_gallery_grows(tmp_path):
    """The default open-set rule is an FPIR: the per-comparison FAR shrinks as entries are
    added, so the threshold rises, and the answer says what it means for this gallery."""
    with running(gallery_env(tmp_path)) as server:
        probe = reencoded(photo(60, 2))
        points = []
        for person in range(60, 66):
            assert enroll(server.url, f"person-{person:03d}", [photo(person, 1)]).status_code == 200
            point = identify(server.url, probe).json()["threshold"]
            points.append(point)
        assert [p["comparisons"] for p in points] == [1, 2, 3, 4, 5, 6]
        assert all(p["fpir"] == 0.01 for p in points)
        thresholds = [p["threshold"] for p in points]
        assert thresholds == sorted(thresholds) and thresholds[0] < thresholds[-1]
        for p in points:
            assert p["far"] == pytest.approx(1 - 0.99 ** (1 / p["comparisons"]), rel=1e-9)
            assert p["expected_fpir"] == pytest.approx(0.01, rel=1e-6)

        # A per-comparison FAR is still available, and the answer says what it costs here.
        per = identify(server.url, probe, far="0.001").json()["threshold"]
        assert per["far"] == 0.001 and per["fpir"] is None
        assert per["expected_fpir"] == pytest.approx(1 - 0.999**6)
        mean = identify(server.url, probe, fpir="0.05", score_rule="mean").json()["threshold"]
        assert mean["comparisons"] == 6 and mean["fpir"] == 0.05
        both = identify(server.url, probe, far="0.001", fpir="0.01")
        assert both.status_code == 422 and both.json()["error"]["code"] == "invalid_request"
        explicit = identify(server.url, probe, threshold="0.4").json()["threshold"]
        assert explicit["source"] == "explicit" and 1e-4 < explicit["far"] < 1e-2


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [(b"just some text, not a photo", 415, "unsupported_media_type"), (None, 400, "invalid_image")],
    ids=["text", "truncated"],
)
def test_a_refused_image_names_its_field(server, content, status, code):
    good = photo(1, 1).read_bytes()
    bad = good[: len(good) // 3] if content is None else content
    response = httpx.post(
        f"{server.url}/verify",
        files={"image1": ("a.jpg", good, "image/jpeg"), "image2": ("b.jpg", bad, "image/jpeg")},
        timeout=60,
    )
    error = response.json()["error"]
    assert response.status_code == status and error["code"] == code
    assert error["details"]["field"] == "image2" and error["message"].startswith("image2: ")


def test_misspelt_parameters_are_refused_by_name(server):
    files = [upload(photo(1, 1), "image1"), upload(photo(1, 2), "image2")]
    typo = httpx.post(f"{server.url}/verify", files=files, data={"threshhold": "0.3"}, timeout=60)
    assert typo.status_code == 422
    assert typo.json()["error"]["details"]["unknown"] == ["threshhold"]
    assert "threshold" in typo.json()["error"]["details"]["allowed"]
    query = httpx.post(f"{server.url}/verify?threshold=0.3", files=files, timeout=60)
    assert query.status_code == 422 and query.json()["error"]["details"]["unknown"] == ["threshold"]
    top = httpx.post(
        f"{server.url}/identify", files=[upload(photo(1, 1))], data={"topk": "1"}, timeout=60
    )
    assert top.status_code == 422 and top.json()["error"]["details"]["unknown"] == ["topk"]
    paging = httpx.get(f"{server.url}/subjects", params={"limitt": 5})
    assert paging.status_code == 422 and paging.json()["error"]["details"]["unknown"] == ["limitt"]
    fine = httpx.post(f"{server.url}/verify", files=files, data={"threshold": "0.3"}, timeout=60)
    assert fine.status_code == 200


def test_field_errors_speak_http_not_python(server):
    text = httpx.post(
        f"{server.url}/verify",
        data={"image1": "not a file"},
        files=[upload(photo(1, 1), "image2")],
        timeout=60,
    )
    assert text.status_code == 422
    message = text.json()["error"]["message"]
    assert "UploadFile" not in message and "expected a file" in message
    big = httpx.post(
        f"{server.url}/identify", files=[upload(photo(1, 1))], data={"top_k": "1000"}, timeout=60
    )
    assert big.status_code == 422 and big.json()["error"]["details"]["field"] == "top_k"


def test_serve_data_dir_and_the_start_up_line_say_where_the_gallery_lives(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.e2e.conftest import free_port

    port, log = free_port(), tmp_path / "serve.log"
    where = tmp_path / "elsewhere"
    where.mkdir()
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("FACEMARGIN_DATA_DIR", None)
    argv = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*argv, "--data-dir", "galleries/main", "--log-level", "info"],
            cwd=where,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        finally:
            process.terminate()
            process.wait(timeout=20)
    gallery = where / "galleries" / "main"
    assert (gallery / "gallery.db").is_file()
    (line,) = [x for x in log.read_text().splitlines() if "ready to serve" in x]
    assert str(gallery.resolve()) in line and "API keys off" in line
    assert "face-reidentification-retail-0095" in line and "detector yunet" in line


def test_an_unauthenticated_upload_is_refused_before_its_body(tmp_path):
    """With keys on, a request announcing a 10 MB body and sending only its start gets its
    401 at once: nothing waits for (or reads) the body of a client without a key."""
    from service.api.security import hash_key

    env = gallery_env(tmp_path) | {"FACEMARGIN_API_KEYS": f"alice:{hash_key('s3cret-key')}"}
    with running(env) as server:
        for key in (b"", b"X-API-Key: guess\r\n"):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
                conn.sendall(
                    b"POST /identify HTTP/1.1\r\nHost: test\r\n"
                    + key
                    + b"Content-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 10000000\r\n\r\n--b\r\n"
                )
                reply = reply_containing(conn, b"unauthorized")
            assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
        # The key still opens the routes, and the open paths stay open.
        ok = httpx.get(f"{server.url}/subjects", headers={"X-API-Key": "s3cret-key"})
        assert ok.status_code == 200
        assert httpx.get(f"{server.url}/ready").status_code == 200
