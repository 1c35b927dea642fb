"""Schema-driven fuzzing of the whole HTTP API from its own OpenAPI document: schemathesis
generates requests for every operation against a real server; none may produce a 5xx, and
every response must match the schema the server publishes (envelope included).
FACEMARGIN_FUZZ_EXAMPLES raises the examples per operation (default 40) for a deeper run."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.e2e.conftest import Server, gallery_env, running
from tests.e2e.test_api import CFP, enroll, photo

pytestmark = pytest.mark.skipif(not CFP.is_dir(), reason=f"CFP photos not found at {CFP}")


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Server]:
    with running(gallery_env(tmp_path_factory.mktemp("data"))) as server:
        # Something to find, list and delete, so those paths get past "not found".
        assert enroll(server.url, "p1", [photo(1, 1)]).status_code == 200
        yield server


def published_schema() -> dict:
    """The document the server publishes at /openapi.json (built without starting one)."""
    from service.api.app import create_app

    return create_app().openapi()


schema = schemathesis.openapi.from_dict(published_schema())
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.unsupported_method,
    checks.allow_header_conformance,
]


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("FACEMARGIN_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_and_every_response_matches_the_schema(case, live):
    # Everything but "schema-valid data must be accepted": the schema cannot say that bytes
    # must be a photo with a face, so a schema-valid upload is rightly refused with a 4xx.
    case.call_and_validate(base_url=live.url, timeout=60, checks=CHECKS)


def _integer_parameters(document: dict) -> list[tuple[str, str, str, str]]:
    """(method, path, location, name) of every integer parameter the API publishes: path and
    query parameters, and integer fields of multipart forms."""
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter.get("schema", {}).get("type") == "integer":
                    found.append((method, path, parameter["in"], parameter["name"]))
            body = operation.get("requestBody", {}).get("content", {})
            form = body.get("multipart/form-data", {}).get("schema", {})
            if "$ref" in form:
                form = document["components"]["schemas"][form["$ref"].rsplit("/", 1)[1]]
            for name, field in form.get("properties", {}).items():
                kinds = [field.get("type")] + [a.get("type") for a in field.get("anyOf", [])]
                if "integer" in kinds:
                    found.append((method, path, "form", name))
    return found


# What a 64-bit column, a C long or a float cannot hold, and its neighbours.
EXTREMES = [2**63, 2**63 - 1, -(2**63) - 1, 10**30, -1, 0]


def test_no_integer_of_any_width_reaches_the_store_as_a_server_error(live):
    """Schemathesis draws small integers; this sends every published integer parameter the
    values at and past 64 bits (the overflow an independent probe found: a template id of
    2^63 gave a 500)."""
    import httpx

    from tests.e2e.test_api import upload

    parameters = _integer_parameters(published_schema())
    assert ("delete", "/subjects/{subject_id}/templates/{template_id}", "path", "template_id") in (
        parameters
    )
    for method, path, where, name in parameters:
        for value in EXTREMES:
            url = live.url + path.replace("{subject_id}", "p1").replace(f"{{{name}}}", str(value))
            url = url.replace("{template_id}", "1")
            kwargs: dict = {"timeout": 60}
            if where == "query":
                kwargs["params"] = {name: str(value)}
            if method == "post":
                kwargs["files"] = [upload(photo(1, 1))]
                if where == "form":
                    kwargs["data"] = {name: str(value)}
            response = httpx.request(method.upper(), url, **kwargs)
            assert response.status_code < 500, (method, path, name, value, response.text)
