"""Property-based API tests: schemathesis against the live server's own Swagger spec.

For every operation in ``/api/swagger.json`` schemathesis generates requests
(valid and invalid) and checks that no response is a 5xx and that every
response matches what the spec documents for it (status code, content type,
body schema). Bounded: at most 25 examples per operation, no deadline.

The server runs with ``EDGEAI_RUN_JOBS=off``: submissions are stored and
queued but never pruned, so hundreds of random uploads cost no sandbox
children; the API layer under test is the same.
"""
from __future__ import annotations

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.server import LiveServer  # noqa: E402

pytestmark = pytest.mark.e2e

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
BOUNDED = settings(max_examples=25, deadline=None, derandomize=True,
                   phases=[Phase.explicit, Phase.generate],
                   suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One gunicorn that accepts submissions but runs no jobs."""
    base = tmp_path_factory.mktemp("schema-server")
    live = LiveServer(base / "var", workers=1, EDGEAI_RUN_JOBS="off",
                      EDGEAI_MAX_JOBS_PER_CLIENT=100000)
    live.start(timeout=120)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def auth_headers(server):
    """A valid client's headers."""
    return server.create_key("schemathesis")


@pytest.fixture(scope="module")
def spec_url(server):
    """The URL of the spec the server publishes."""
    url = f"{server.url}/api/swagger.json"
    response = requests.get(url, timeout=30)
    assert response.status_code == 200, response.text[:500]
    return url


@pytest.fixture(scope="module")
def api_schema(spec_url):
    """The live spec loaded by schemathesis."""
    return schemathesis.openapi.from_url(spec_url, timeout=30)


# schemathesis.pytest.from_fixture() fails under pytest 9 ('Function' object has no attribute
# '_nodeid', schemathesis 4.32.5), so each operation's strategy is driven by hypothesis here.
OPERATIONS = ["POST /tf_prune", "POST /pt_prune", "POST /onnx_prune", "GET /status",
              "GET /download", "POST /tf_analyze", "POST /pt_analyze", "POST /onnx_analyze",
              "POST /cancel"]


def test_spec_lists_exactly_the_guide_operations(api_schema):
    """The operations tested below are all the spec has (a new route must be added here)."""
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


def fuzz(api_schema, label: str, call, max_examples: int) -> None:
    """Run ``call(case)`` on up to ``max_examples`` generated cases of operation ``label``."""
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label

    @given(case=operation.as_strategy())
    @settings(BOUNDED, max_examples=max_examples)
    def run(case):
        call(case)

    run()


@pytest.mark.parametrize("label", OPERATIONS)
def test_api_conforms_to_its_spec(api_schema, server, auth_headers, label):
    """With a valid key: no 5xx, and each response is documented and matches its schema."""
    fuzz(api_schema, label, lambda case: case.call_and_validate(
        base_url=f"{server.url}/api", headers=auth_headers, checks=CHECKS, timeout=60), 25)


@pytest.mark.parametrize("label", OPERATIONS)
def test_api_conforms_to_its_spec_without_a_key(api_schema, server, label):
    """Without a key: refused, with a documented status and body (no 5xx)."""
    def call(case):
        response = case.call_and_validate(base_url=f"{server.url}/api", checks=CHECKS,
                                          timeout=60)
        assert response.status_code in (400, 401), response.status_code

    fuzz(api_schema, label, call, 10)
