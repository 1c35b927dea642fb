"""What a server writes to its logs, at the most verbose level, during real traffic and real
failures: never an API key (right or wrong), never a database password, never an embedding
and never image bytes."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.e2e.conftest import Server, gallery_env
from tests.e2e.test_api import CFP, photo

pytestmark = pytest.mark.skipif(not CFP.is_dir(), reason=f"CFP photos not found at {CFP}")

GOOD_KEY = "k3y-that-must-never-be-logged-1234"
WRONG_KEY = "wr0ng-guess-that-must-never-be-logged"
DB_PASSWORD = "pa55word-that-must-never-be-logged"


def test_keys_embeddings_and_images_stay_out_of_the_logs(tmp_path):
    from service.api.security import hash_key

    log = tmp_path / "server.log"
    env = gallery_env(tmp_path / "data") | {"FACEMARGIN_API_KEYS": f"ops:{hash_key(GOOD_KEY)}"}
    server = Server(env, log_level="debug", output=log).start()
    try:
        good, wrong = {"X-API-Key": GOOD_KEY}, {"X-API-Key": WRONG_KEY}
        image = photo(1, 1).read_bytes()
        assert httpx.get(server.url + "/subjects", headers=wrong).status_code == 401
        assert httpx.get(server.url + f"/subjects?api_key={WRONG_KEY}").status_code == 401
        embedded = httpx.post(
            server.url + "/embed", headers=good, files={"image": ("a.jpg", image)}, timeout=60
        ).json()
        assert (
            httpx.post(
                server.url + "/enroll",
                headers=good,
                data={"subject_id": "p1", "metadata": json.dumps({"note": "hello"})},
                files={"images": ("a.jpg", image)},
                timeout=60,
            ).status_code
            == 200
        )
        bad = httpx.post(
            server.url + "/identify",
            headers=good,
            files={"image": ("a.jpg", image[: len(image) // 2])},
            timeout=60,
        )
        assert bad.status_code == 400
    finally:
        server.stop()

    text = log.read_text(errors="replace")
    assert '"POST /embed" 200' in text, "the access log should show the traffic it saw"
    vector = embedded["faces"][0]["embedding"]
    leaks = {
        "good key": GOOD_KEY,
        "wrong key": WRONG_KEY,
        "embedding value": repr(vector[0])[:10],
        "embedding (json)": json.dumps(vector[:3])[1:-1],
        "image bytes (base64)": base64.b64encode(image[200:260]).decode(),
        "image bytes (escaped)": repr(image[200:230])[2:-1],
    }
    found = {name: value for name, value in leaks.items() if value in text}
    assert not found, f"leaked into the log: {found}"


def test_database_password_stays_out_of_the_logs(tmp_path):
    log = tmp_path / "server.log"
    env = gallery_env(tmp_path / "data") | {
        "FACEMARGIN_DATABASE_URL": f"postgresql://facemargin:{DB_PASSWORD}@127.0.0.1:9/gallery"
    }
    # The database is unreachable: the server starts, stays not-ready and logs the failure.
    server = Server(env, log_level="debug", output=log).start(wait_for="/health")
    try:
        ready = httpx.get(server.url + "/ready", timeout=10)
        assert ready.status_code == 503
        assert DB_PASSWORD not in ready.text
    finally:
        server.stop()
    text = log.read_text(errors="replace")
    assert "gallery" in text, "the failure to open the gallery should be logged"
    assert DB_PASSWORD not in text
