"""The Kubernetes actuator, through the official client, against a local fake API server.

No cluster runs here, so the fake answers the few endpoints a drain uses the way the
API server does (Status bodies, 429 from a PodDisruptionBudget) and records every request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from predictor.actuators import ActionRequest, ActuatorError, make_actuator
from predictor.actuators.kubernetes import KubernetesActuator, api_client_from
from predictor.config import Settings
from predictor.policy import Policy
from predictor.store import SQLiteStore
from tests.server_process import serving

PDB_MESSAGE = "Cannot evict pod as it would violate the pod's disruption budget."
EVICTION = "application/json"
MERGE_PATCH = "application/strategic-merge-patch+json"


def pod(name: str, node: str, *, namespace: str = "shop", owner: str | None = "ReplicaSet",
        mirror: bool = False) -> dict[str, Any]:  # fmt: skip
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-{name}"}
    if owner:
        metadata["ownerReferences"] = [{
            "apiVersion": "v1" if owner == "Node" else "apps/v1", "kind": owner,
            "name": f"{name}-owner", "uid": f"uid-{name}-owner", "controller": True,
        }]  # fmt: skip
    if mirror:
        metadata["annotations"] = {"kubernetes.io/config.mirror": "abc123"}
    return {
        "metadata": metadata,
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": "Running"},
    }


@dataclass
class FakeAPI:
    """The state the fake serves, what it was asked, and how it should answer."""

    url: str = ""
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)  # pod -> 429s before it goes
    fail: dict[str, int] = field(default_factory=dict)  # path -> status to answer
    requests: list[dict[str, Any]] = field(default_factory=list)

    def calls(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests]

    def evictions(self, name: str) -> int:
        return sum(r["path"].endswith(f"/pods/{name}/eviction") for r in self.requests)


def status(code: int, message: str, reason: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    fake = FakeAPI()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            with lock:
                fake.requests.append({
                    "method": self.command, "path": url.path, "query": parse_qs(url.query),
                    "content_type": self.headers.get("Content-Type"),
                    "body": json.loads(raw) if raw else None,
                })  # fmt: skip
                code, body = self._route(url.path, parse_qs(url.query), fake.requests[-1])
            self._answer(code, body)

        def _route(self, path: str, query: dict[str, list[str]], req: dict[str, Any]) -> Any:
            if path in fake.fail:
                return fake.fail[path], status(fake.fail[path], "injected", "InternalError")
            parts = path.strip("/").split("/")
            if self.command == "GET" and path == "/api/v1/pods":
                [selector] = query["fieldSelector"]
                key, node = selector.split("=")
                assert key == "spec.nodeName"
                items = [p for p in fake.pods if p["spec"]["nodeName"] == node]
                return 200, {"kind": "PodList", "apiVersion": "v1",
                             "metadata": {"resourceVersion": "7"}, "items": items}  # fmt: skip
            if self.command == "PATCH" and parts[:3] == ["api", "v1", "nodes"]:
                name = parts[3]
                if name not in fake.nodes:
                    return 404, status(404, f'nodes "{name}" not found', "NotFound")
                fake.nodes[name]["spec"].update(req["body"]["spec"])
                return 200, {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name},
                             "spec": fake.nodes[name]["spec"]}  # fmt: skip
            if self.command == "POST" and parts[-1] == "eviction":
                namespace, name = parts[3], parts[5]
                match = [p for p in fake.pods if p["metadata"]["name"] == name
                         and p["metadata"]["namespace"] == namespace]  # fmt: skip
                if not match:
                    return 404, status(404, f'pods "{name}" not found', "NotFound")
                if fake.refusals.get(name, 0) > 0:
                    fake.refusals[name] -= 1
                    return 429, status(429, PDB_MESSAGE, "TooManyRequests")
                fake.pods.remove(match[0])
                return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                             "status": "Success", "code": 201}  # fmt: skip
            return 404, status(404, "no such route", "NotFound")

        do_GET = do_PATCH = do_POST = _handle  # noqa: N815 - the stdlib's names

        def log_message(self, *args: Any) -> None:
            pass

    fake.nodes = {n: {"spec": {}} for n in ("node-1", "node-2", "node-9")}
    fake.pods = [
        pod("web-a", "node-1"),
        pod("web-b", "node-1", namespace="jobs", owner=None),  # a bare pod is evicted too
        pod("fluentd-x1", "node-1", namespace="kube-system", owner="DaemonSet"),
        pod("kube-proxy-node-1", "node-1", namespace="kube-system", owner="Node", mirror=True),
        pod("web-c", "node-2"),
    ]
    with serving(Handler) as fake.url:
        yield fake


class FakeClock:
    """Wall-clock stand-in: sleeping advances it, so deadlines are exact and instant."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def actuator(api: FakeAPI, **kwargs: Any) -> KubernetesActuator:
    return KubernetesActuator(api_client_from(api_url=api.url, kubeconfig=None), **kwargs)


def request(action: str, node: str = "node-1") -> ActionRequest:
    return ActionRequest(action=action, node=node, node_meta={"pool": "k8s"}, reason="test",
                         risk=0.9, ts=0.0, action_id=1)  # fmt: skip


def eviction_body(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace}}  # fmt: skip


def test_drain_cordons_then_evicts_all_but_daemonset_and_mirror_pods(api: FakeAPI) -> None:
    detail = actuator(api).apply(request("drain"))
    assert detail == "kubernetes drained node-1: cordoned, 2 pods evicted"
    cordon, listing, evict_a, evict_b = api.requests
    assert (cordon["method"], cordon["path"]) == ("PATCH", "/api/v1/nodes/node-1")
    assert cordon["body"] == {"spec": {"unschedulable": True}}
    assert cordon["content_type"] == MERGE_PATCH
    assert (listing["method"], listing["path"]) == ("GET", "/api/v1/pods")
    assert listing["query"]["fieldSelector"] == ["spec.nodeName=node-1"]
    assert (evict_a["method"], evict_a["path"]) == (
        "POST", "/api/v1/namespaces/shop/pods/web-a/eviction",
    )  # fmt: skip
    assert evict_a["body"] == eviction_body("web-a", "shop")
    assert evict_a["content_type"] == EVICTION
    assert evict_b["path"] == "/api/v1/namespaces/jobs/pods/web-b/eviction"
    assert evict_b["body"] == eviction_body("web-b", "jobs")
    assert api.nodes["node-1"]["spec"] == {"unschedulable": True}
    assert sorted(p["metadata"]["name"] for p in api.pods) == [
        "fluentd-x1", "kube-proxy-node-1", "web-c",
    ]  # fmt: skip


def test_a_disruption_budget_429_is_retried_with_backoff(api: FakeAPI) -> None:
    api.refusals = {"web-a": 2}
    clock = FakeClock()
    detail = actuator(
        api, evict_deadline_s=60, evict_backoff_s=1.0, sleep=clock.sleep, clock=lambda: clock.now
    ).apply(request("drain"))
    assert detail.endswith("2 pods evicted")
    assert api.evictions("web-a") == 3  # refused twice, then the budget allowed it
    assert api.evictions("web-b") == 1  # evicted in the first round, never asked again
    assert clock.sleeps == [1.0, 2.0]
    assert "web-a" not in {p["metadata"]["name"] for p in api.pods}


def test_pods_still_held_at_the_deadline_fail_the_drain_and_undo_the_cordon(
    api: FakeAPI,
) -> None:
    api.refusals = {"web-a": 1_000}
    clock = FakeClock()
    kube = actuator(
        api, evict_deadline_s=5, evict_backoff_s=1.0, sleep=clock.sleep, clock=lambda: clock.now
    )
    with pytest.raises(ActuatorError) as info:
        kube.apply(request("drain"))
    message = str(info.value)
    assert "1 pods not evicted within 5s: shop/web-a" in message
    assert message.endswith("node uncordoned again")
    assert PDB_MESSAGE in message and "web-b" not in message
    assert info.value.final is True
    assert clock.sleeps == [1.0, 2.0, 2.0]  # the last wait is cut to the deadline
    assert clock.now == 5.0
    assert api.evictions("web-a") == 4
    assert api.calls()[-1] == ("PATCH", "/api/v1/nodes/node-1")
    assert api.requests[-1]["body"] == {"spec": {"unschedulable": False}}
    assert api.nodes["node-1"]["spec"] == {"unschedulable": False}


def test_real_time_backoff_through_make_actuator(api: FakeAPI, tmp_path: Path) -> None:
    api.refusals = {"web-a": 1_000}
    settings = Settings(
        db=tmp_path / "p.db", actuator="kubernetes", k8s_api_url=api.url,
        k8s_evict_deadline_s=0.3, k8s_evict_backoff_s=0.05,
    )  # fmt: skip
    kube = make_actuator(settings)
    assert isinstance(kube, KubernetesActuator)
    with pytest.raises(ActuatorError, match="within 0.3s: shop/web-a"):
        kube.apply(request("drain"))
    assert api.evictions("web-a") >= 2  # retried, in real time


def test_policy_failover_uncordons_the_standby_first_and_undrain_uncordons(
    api: FakeAPI, tmp_path: Path
) -> None:
    api.nodes["node-9"]["spec"] = {"unschedulable": True}  # a cordoned spare
    settings = Settings(
        db=tmp_path / "p.db", dry_run=False, min_duration_s=0, cooldown_s=0, auto_undrain=False,
        budget_max_nodes=1, budget_max_fraction=1.0,
    )  # fmt: skip
    store = SQLiteStore(settings.db)
    try:
        store.upsert_node("node-1", {"pool": "k8s", "standby": "node-9"})
        store.upsert_node("node-2", {"pool": "k8s"})
        policy = Policy(settings=settings, store=store, actuator=actuator(api))
        risk = pd.DataFrame({"node": ["node-1"], "ts": [100.0], "risk": [0.95],
                             "why": [[{"metric": "disk", "score": 0.95}]]})  # fmt: skip
        [failover] = policy.decide(
            risk, node_last_ts={"node-1": 100.0, "node-2": 100.0}, node_risk={"node-1": 0.95}
        )
        assert (failover["action"], failover["status"]) == ("failover", "done")
        assert api.calls()[:3] == [
            ("PATCH", "/api/v1/nodes/node-9"), ("PATCH", "/api/v1/nodes/node-1"),
            ("GET", "/api/v1/pods"),
        ]  # fmt: skip
        assert api.requests[0]["body"] == {"spec": {"unschedulable": False}}
        assert api.nodes["node-1"]["spec"] == {"unschedulable": True}

        undrain = policy.undrain("node-1", reason="manual: disk replaced", ts=200.0)
        assert undrain["status"] == "done"
        assert api.calls()[-1] == ("PATCH", "/api/v1/nodes/node-1")
        assert api.nodes["node-1"]["spec"] == {"unschedulable": False}
    finally:
        store.close()


@pytest.mark.parametrize(
    ("fail_path", "code", "final"),
    [
        ("/api/v1/nodes/node-1", 403, True),  # RBAC: retrying will not help
        ("/api/v1/nodes/node-1", 500, False),
        ("/api/v1/pods", 503, False),
        ("/api/v1/namespaces/shop/pods/web-a/eviction", 500, False),
        ("/api/v1/namespaces/shop/pods/web-a/eviction", 403, True),
    ],
)
def test_api_errors(api: FakeAPI, fail_path: str, code: int, final: bool) -> None:
    api.fail = {fail_path: code}
    with pytest.raises(ActuatorError, match=str(code)) as info:
        actuator(api).apply(request("drain"))
    assert info.value.final is final
    if fail_path != "/api/v1/nodes/node-1":  # cordoned, then failed: the cordon is undone
        assert "uncordoned again" in str(info.value)
        assert api.requests[-1]["body"] == {"spec": {"unschedulable": False}}
        assert api.nodes["node-1"]["spec"] == {"unschedulable": False}


def test_unknown_node_and_weight_are_final(api: FakeAPI) -> None:
    with pytest.raises(ActuatorError, match="404") as info:
        actuator(api).apply(request("undrain", node="node-404"))
    assert info.value.final is True
    with pytest.raises(ActuatorError, match="weight") as info:
        actuator(api).apply(request("weight"))
    assert info.value.final is True
    assert api.calls() == [("PATCH", "/api/v1/nodes/node-404")]


def test_unreachable_api_is_retryable() -> None:
    kube = KubernetesActuator(api_client_from(api_url="http://127.0.0.1:1", kubeconfig=None))
    kube.core.api_client.configuration.retries = 0
    with pytest.raises(ActuatorError, match="cordon node-1") as info:
        kube.apply(request("drain"))
    assert info.value.final is False


def test_kubeconfig_is_read_and_a_missing_one_is_a_config_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "ops",
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "ops", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    kube = make_actuator(Settings(actuator="kubernetes", k8s_kubeconfig=kubeconfig))
    assert isinstance(kube, KubernetesActuator)
    configuration = kube.core.api_client.configuration
    assert configuration.host == "https://10.0.0.1:6443"
    with pytest.raises(ValueError, match="K8S_KUBECONFIG"):
        make_actuator(Settings(actuator="kubernetes", k8s_kubeconfig=tmp_path / "missing"))
