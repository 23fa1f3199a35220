"""Property-based API test: requests generated from the OpenAPI schema never get a 5xx.

Runs in-process over ASGI (no network), a few examples per operation, with the dev key.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from predictor.api import create_app
from predictor.config import Settings
from predictor.service import Runtime

# The schema is read from the app when the module loads; each test gives it a fresh runtime.
app = create_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(autouse=True)
def fresh_runtime(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.build(settings)
    app.state.runtime = runtime  # what the lifespan does, without its prober
    runtime.start()
    yield runtime
    runtime.stop()
    del app.state.runtime


@schema.parametrize()
@settings(
    max_examples=8, deadline=None, derandomize=True,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip
def test_generated_requests_never_get_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": "Bearer dev"}, checks=[not_a_server_error])


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("put", "/v1/nodes/x", '{"health_url": "http://\\ud800/"}'),
        ("put", "/v1/nodes/x", '{"labels": {"\\ud800": "a"}}'),
        ("post", "/v1/events", '{"events": [{"node": "n", "ts": 1, "kind": "failure",'
                               ' "reason": "\\udfff"}]}'),
        ("post", "/v1/nodes/x/undrain", '{"reason": "\\ud800"}'),
    ],
)  # fmt: skip
def test_lone_surrogates_are_refused_not_a_server_error(
    fresh_runtime: Runtime, method: str, path: str, body: str
) -> None:
    """Valid JSON, yet not storable text: a 422 (it was a 500 from the store)."""
    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: the fixture's runtime
    headers = {"Authorization": "Bearer dev", "Content-Type": "application/json"}
    response = getattr(client, method)(path, content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert fresh_runtime.store.nodes() == {} and fresh_runtime.store.events_frame().empty
