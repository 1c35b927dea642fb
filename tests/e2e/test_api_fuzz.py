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
