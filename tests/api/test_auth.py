"""Access control: API keys, scopes, the dev key, the first-run key and the `keys` CLI."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from predictor import auth
from predictor.api import create_app
from predictor.api.deps import get_caller
from predictor.auth import Caller
from predictor.cli import app as cli_app
from predictor.config import Settings
from predictor.store import SQLiteStore

KEY_PATTERN = re.compile(r"pk_[A-Za-z0-9_-]{43}")
NOW = time.time()
SAMPLE = {"samples": [{"node": "web-1", "metric": "cpu", "ts": NOW, "value": 0.5}]}
EVENT = {"events": [{"node": "web-1", "ts": NOW, "kind": "maintenance"}]}

# Every authenticated route: method, path, the scope it needs, and a valid body.
ROUTES = [
    ("POST", "/v1/metrics", "ingest", SAMPLE),
    ("POST", "/v1/events", "ingest", EVENT),
    ("PUT", "/v1/nodes/web-1", "admin", {"pool": "web"}),
    ("GET", "/v1/nodes", "read", None),
    ("GET", "/v1/nodes/web-1", "read", None),
    ("GET", "/v1/risk", "read", None),
    ("GET", "/v1/nodes/web-1/risk", "read", None),
    ("GET", "/v1/nodes/web-1/history", "read", None),
    ("GET", "/v1/actions", "read", None),
    ("POST", "/v1/nodes/web-1/undrain", "admin", {}),
]
OPEN_PATHS = {"/healthz", "/readyz"}
# What else prod insists on, so these tests fail only for access reasons.
PROD = {"model_hmac_key": "test-manifest-signing-key"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_settings(root: Path, **overrides: object) -> Settings:
    values: dict = {
        "db": root / "predictor.db", "models_dir": root / "models",
        "state_path": root / "state.joblib", **overrides,
    }  # fmt: skip
    return Settings(**values)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """One running app and a live key of each scope (the matrix shares them)."""
    settings = make_settings(tmp_path_factory.mktemp("auth"))
    with TestClient(create_app(settings)) as client:
        store = client.app.state.runtime.store
        keys = {s: auth.create_key(store=store, scope=s, name=f"{s}-key")[0] for s in auth.SCOPES}
        yield client, keys


@pytest.mark.parametrize(("method", "path", "needed", "body"), ROUTES)
def test_scope_matrix(keyed, method: str, path: str, needed: str, body: dict | None) -> None:
    client, keys = keyed
    missing = client.request(method, path, json=body)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    unknown = client.request(method, path, json=body, headers=bearer(auth.generate_key()))
    assert unknown.status_code == 401
    assert unknown.headers["www-authenticate"].startswith("Bearer error=")
    for scope, key in keys.items():
        r = client.request(method, path, json=body, headers=bearer(key))
        if auth.grants(scope, needed):
            assert r.status_code not in (401, 403), (scope, r.text)
        else:
            assert r.status_code == 403, (scope, r.status_code)
            assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
            assert needed in r.json()["detail"]


def test_every_v1_route_needs_a_key_and_probes_stay_open(keyed) -> None:
    """A guard for routes added later: anything under /v1 or /api refuses anonymous calls."""
    client, _ = keyed
    guarded = 0
    for template, operations in client.app.openapi()["paths"].items():
        path = template.replace("{node}", "web-1")
        if template in OPEN_PATHS:
            assert client.get(path).status_code == 200, path
        elif path.startswith(("/v1/", "/api/")):
            for method in operations:
                assert client.request(method, path).status_code == 401, (method, path)
                guarded += 1
    assert guarded >= len(ROUTES)


def test_allowed_requests_really_act(keyed) -> None:
    """Passing the check reaches the route: an admin registers, ingest sends, read sees."""
    client, keys = keyed
    assert client.put(
        "/v1/nodes/db-1", json={"pool": "db"}, headers=bearer(keys["admin"])
    ).is_success
    assert client.post("/v1/metrics", json=SAMPLE, headers=bearer(keys["ingest"])).json() == {
        "accepted": 1
    }
    nodes = client.get("/v1/nodes", headers=bearer(keys["read"])).json()
    assert "db-1" in {n["node"] for n in nodes}


@pytest.mark.parametrize(
    "header",
    [
        "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token {key}", "Bearer {key}x",
        "Bearer {key_short}", "Bearer {key} {key}", "Bearer " + "A" * 10_000,
        "Bearer pk_\xe9\xe8\xff", "{key}",
    ],
)  # fmt: skip
def test_garbage_and_wrong_length_headers_are_refused(keyed, header: str) -> None:
    client, keys = keyed
    value = header.format(key=keys["admin"], key_short=keys["admin"][:-1]).encode("latin-1")
    r = client.get("/v1/nodes", headers={"Authorization": value})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_scheme_is_case_insensitive(keyed) -> None:
    client, keys = keyed
    assert client.get("/v1/nodes", headers={"Authorization": f"bearer {keys['read']}"}).is_success


def test_revoked_key_is_refused_at_once(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        store = client.app.state.runtime.store
        key, record = auth.create_key(store=store, scope="read", name="grafana")
        assert client.get("/v1/nodes", headers=bearer(key)).status_code == 200
        auth.revoke_key(store=store, key_id=record["id"])
        r = client.get("/v1/nodes", headers=bearer(key))
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
        with pytest.raises(LookupError):
            auth.revoke_key(store=store, key_id=record["id"] + 100)


def test_keys_are_stored_hashed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "keys.db")
    key, _ = auth.create_key(store=store, scope="admin", name="ops")
    store.close()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("keys.db")]
    content = b"".join(p.read_bytes() for p in files)
    assert auth.hash_key(key).encode() in content  # the files we read do hold the key's row
    assert key.encode() not in content and key.removeprefix("pk_").encode() not in content


def test_prod_refuses_the_dev_key_even_when_set(tmp_path: Path) -> None:
    prod = make_settings(tmp_path, env="prod", dev_api_key="dev", **PROD)
    with TestClient(create_app(prod)) as client:
        assert client.get("/v1/nodes", headers=bearer("dev")).status_code == 401
        assert client.get("/healthz").status_code == 200
    dev = make_settings(tmp_path, env="dev", dev_api_key="dev")
    with TestClient(create_app(dev)) as client:  # same store, dev env: the dev key is admin
        assert client.put("/v1/nodes/a", json={}, headers=bearer("dev")).status_code == 200


def test_the_dev_key_is_checked_without_reading_the_key_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "keys.db")
    reads = []
    real = store.api_keys
    monkeypatch.setattr(store, "api_keys", lambda **kw: reads.append(kw) or real(**kw))
    dev = make_settings(tmp_path, env="dev", dev_api_key="dev")
    for _ in range(3):
        assert auth.verify_key(store=store, settings=dev, presented="dev") is not None
    assert len(reads) == 1  # the cached read only; an unknown key re-reads the table:
    assert auth.verify_key(store=store, settings=dev, presented="pk_unknown") is None
    assert len(reads) == 2
    store.close()


def test_dev_key_can_be_switched_off(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, dev_api_key=""))) as client:
        assert client.get("/v1/nodes", headers=bearer("dev")).status_code == 401
        assert client.get("/v1/nodes", headers={"Authorization": "Bearer "}).status_code == 401


def first_run_keys(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        key
        for r in caplog.records
        if r.name == "predictor.auth" and r.levelname == "WARNING"
        for key in KEY_PATTERN.findall(r.getMessage())
    ]


def test_first_run_makes_one_admin_key_that_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prod = make_settings(tmp_path, env="prod", **PROD)
    with caplog.at_level("WARNING", logger="predictor.auth"):
        with TestClient(create_app(prod)) as client:
            (key,) = first_run_keys(caplog)
            assert client.put("/v1/nodes/a", json={}, headers=bearer(key)).status_code == 200
        with TestClient(create_app(prod)) as client:  # a restart makes no second key
            assert client.get("/v1/nodes", headers=bearer(key)).status_code == 200
    assert first_run_keys(caplog) == [key]
    store = SQLiteStore(prod.db)
    try:
        (record,) = auth.list_keys(store=store)
        assert record["scope"] == "admin" and record["revoked"] is None
    finally:
        store.close()
    assert key.encode() not in prod.db.read_bytes()


def test_no_first_run_key_while_the_dev_key_is_in_force(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="predictor.auth"), TestClient(create_app(settings)):
        pass
    assert first_run_keys(caplog) == []
    store = SQLiteStore(settings.db)
    try:
        assert auth.list_keys(store=store) == []
    finally:
        store.close()


def test_caller_dependency_is_overridable(settings: Settings) -> None:
    """Routes get the caller through one dependency, so tests can stand in any key."""
    app = create_app(settings)
    app.dependency_overrides[get_caller] = lambda: Caller(key_id=7, name="ro", scope="read")
    with TestClient(app) as client:
        assert client.get("/v1/nodes").status_code == 200
        r = client.put("/v1/nodes/a", json={})
        assert r.status_code == 403 and "'read'" in r.json()["detail"]


def test_cli_create_list_revoke(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDICTOR_DB", str(settings.db))
    runner = CliRunner()
    created = runner.invoke(cli_app, ["keys", "create", "--scope", "read", "--name", "grafana"])
    assert created.exit_code == 0, created.output
    (key,) = KEY_PATTERN.findall(created.output)
    assert runner.invoke(cli_app, ["keys", "create", "--scope", "root"]).exit_code != 0
    with TestClient(create_app(settings)) as client:  # the CLI and a running service share keys
        assert client.get("/v1/nodes", headers=bearer(key)).status_code == 200
        listing = runner.invoke(cli_app, ["keys", "list"]).output
        assert "grafana" in listing and "read" in listing
        assert key not in listing and auth.hash_key(key) not in listing
        revoked = runner.invoke(cli_app, ["keys", "revoke", "1"])
        assert revoked.exit_code == 0, revoked.output
        # Another process revoked it: the service's cached keys say so within a second.
        deadline = time.monotonic() + 30
        while client.get("/v1/nodes", headers=bearer(key)).status_code != 401:
            assert time.monotonic() < deadline, "a revoked key kept working"
            time.sleep(0.1)
    assert runner.invoke(cli_app, ["keys", "revoke", "99"]).exit_code == 1
    store = SQLiteStore(settings.db)
    try:
        (record,) = auth.list_keys(store=store)
        assert record["name"] == "grafana" and record["revoked"] is not None
    finally:
        store.close()


def test_grants_and_key_shape() -> None:
    held_needed = {(h, n): auth.grants(h, n) for h in auth.SCOPES for n in auth.SCOPES}
    assert {k for k, ok in held_needed.items() if ok} == {
        ("ingest", "ingest"), ("read", "read"), ("admin", "ingest"), ("admin", "read"),
        ("admin", "admin"),
    }  # fmt: skip
    keys = {auth.generate_key() for _ in range(100)}
    assert len(keys) == 100 and all(KEY_PATTERN.fullmatch(k) for k in keys)
    assert auth.hash_key("a") != auth.hash_key("b") and len(auth.hash_key("a")) == 64


@pytest.mark.integration
def test_status_sends_the_key(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """`predictor status` over real HTTP: the dev key by default in dev, else --api-key."""
    served = settings.model_copy(update={"port": 0})
    server = uvicorn.Server(uvicorn.Config(create_app(served), port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        runner = CliRunner()
        ok = runner.invoke(cli_app, ["status", "--url", url])
        assert ok.exit_code == 0 and "riskiest nodes" in ok.output, ok.output
        monkeypatch.setenv("PREDICTOR_API_KEY", auth.generate_key())
        refused = runner.invoke(cli_app, ["status", "--url", url])
        assert refused.exit_code == 1 and "401" in refused.output
        store = SQLiteStore(settings.db)
        try:
            key, _ = auth.create_key(store=store, scope="read")
        finally:
            store.close()
        assert runner.invoke(cli_app, ["status", "--url", url, "--api-key", key]).exit_code == 0
    finally:
        server.should_exit = True
        thread.join(timeout=30)
