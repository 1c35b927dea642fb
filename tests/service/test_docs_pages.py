"""The documentation pages name only the service's own assets (the browser test renders them)."""

from __future__ import annotations

import hashlib
import re

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> TestClient:
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"))
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_page_loads_assets_from_the_service_only(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", response.text)
    assert assets, "the page names its scripts"
    assert all(url.startswith("/docs/assets/") for url in assets), assets
    for url in assets:
        assert client.get(url).status_code == 200, url


def test_docs_are_not_public_with_keys_on(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, api_keys=f"ci:{hashlib.sha256(b'secret').hexdigest()}")
    with TestClient(create_app(settings)) as client:
        for path in ("/docs", "/redoc", "/docs/assets/swagger-ui.css", "/openapi.json"):
            assert client.get(path).status_code in (401, 404), path
