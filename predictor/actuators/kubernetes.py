"""Cordon, drain and uncordon Kubernetes nodes with the official client.

- ``drain`` (and the node's side of a failover): cordon (``spec.unschedulable: true``),
  then one ``policy/v1`` Eviction per pod on the node, skipping DaemonSet pods (their
  controller ignores unschedulable and would recreate them) and mirror pods (static pods
  the kubelet owns). A 429 is a PodDisruptionBudget saying "not now": the pod is retried
  with backoff until a deadline. Pods still not evicted then fail the drain. A failed
  drain rolls its cordon back, so the cluster matches the policy's view (not drained).
- ``undrain``: uncordon; ``ready_standby``: uncordon the standby.

A successful eviction starts the pod's graceful termination; in-flight work finishes
within its ``terminationGracePeriodSeconds``, as with ``kubectl drain``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from predictor.actuators.base import ActionRequest, ActuatorError

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
MAX_BACKOFF_S = 10.0
# Strategic merge is what kubectl cordon sends for a plain object patch.
PATCH_CONTENT_TYPE = "application/strategic-merge-patch+json"


def api_client_from(*, api_url: str | None, kubeconfig: Path | None) -> client.ApiClient:
    """An API client for ``api_url`` (no auth, e.g. ``kubectl proxy``), ``kubeconfig``,
    or else the in-cluster service account, falling back to ``~/.kube/config``."""
    configuration = client.Configuration()
    try:
        if api_url:
            configuration.host = api_url.rstrip("/")
        elif kubeconfig:
            config.load_kube_config(
                config_file=str(kubeconfig),
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException:
                config.load_kube_config(client_configuration=configuration, persist_config=False)
    except (ConfigException, OSError) as exc:
        raise ValueError(
            "actuator=kubernetes: no usable cluster config (in-cluster, PREDICTOR_K8S_KUBECONFIG"
            f" or PREDICTOR_K8S_API_URL): {exc}"
        ) from exc
    return client.ApiClient(configuration)


def _failure(what: str, exc: Exception) -> ActuatorError:
    """An ActuatorError for a failed call: 4xx (bar timeouts and throttling) are final."""
    status = getattr(exc, "status", None)
    final = isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)
    detail = f"{status} {getattr(exc, 'reason', '')}".strip() if status else str(exc)
    return ActuatorError(f"kubernetes: {what}: {detail}", final=final)


def _is_evictable(meta: Any) -> bool:
    if MIRROR_ANNOTATION in (meta.annotations or {}):
        return False
    return not any(ref.kind == "DaemonSet" for ref in meta.owner_references or [])


class KubernetesActuator:
    """Carries out actions on the Kubernetes node named like the predictor node.

    Parameters
    ----------
    api_client
        A configured ``kubernetes.client.ApiClient`` (see :func:`api_client_from`).
    timeout_s
        Timeout of each API request.
    evict_deadline_s
        How long PodDisruptionBudgets may hold up a drain before it fails.
    evict_backoff_s
        First wait between eviction rounds; doubles up to ``MAX_BACKOFF_S``.
    sleep, clock
        Injected for tests; wall-clock time, since the deadline is the world's.
    """

    name = "kubernetes"

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        timeout_s: float = 5.0,
        evict_deadline_s: float = 300.0,
        evict_backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.core = client.CoreV1Api(api_client)
        self.timeout_s = timeout_s
        self.evict_deadline_s = evict_deadline_s
        self.evict_backoff_s = evict_backoff_s
        self.sleep = sleep
        self.clock = clock

    def apply(self, request: ActionRequest) -> str:
        node = request.node
        if request.action in ("drain", "failover"):
            return self.drain(node)
        if request.action in ("undrain", "ready_standby"):
            self.set_unschedulable(node, False)
            return f"kubernetes uncordoned {node}"
        raise ActuatorError(f"kubernetes: no {request.action!r} for nodes", final=True)

    def set_unschedulable(self, node: str, unschedulable: bool) -> None:
        """Cordon (True) or uncordon (False) ``node``."""
        try:
            self.core.patch_node(
                node,
                {"spec": {"unschedulable": unschedulable}},
                _content_type=PATCH_CONTENT_TYPE,
                _request_timeout=self.timeout_s,
            )
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            verb = "cordon" if unschedulable else "uncordon"
            raise _failure(f"{verb} {node}", exc) from exc

    def pods_to_evict(self, node: str) -> list[tuple[str, str]]:
        """(namespace, name) of the pods on ``node`` that a drain evicts."""
        try:
            pods = self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}", _request_timeout=self.timeout_s
            )
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise _failure(f"list pods on {node}", exc) from exc
        metas = [pod.metadata for pod in pods.items]
        return [
            (meta.namespace, meta.name)
            for meta in metas
            if meta and meta.namespace and meta.name and _is_evictable(meta)
        ]

    def evict(self, namespace: str, name: str) -> str | None:
        """Ask to evict one pod; None once it is evicted or gone, else why not yet (429)."""
        body = client.V1Eviction(
            api_version="policy/v1",
            kind="Eviction",
            metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        )
        try:
            # This client sends no Content-Type on create calls unless told; say it.
            self.core.create_namespaced_pod_eviction(
                name,
                namespace,
                body,
                _headers={"Content-Type": "application/json"},
                _request_timeout=self.timeout_s,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None  # already gone: that is what eviction wanted
            if exc.status == 429:
                return _status_message(exc.body) or "disruption budget"
            raise _failure(f"evict {namespace}/{name}", exc) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise _failure(f"evict {namespace}/{name}", exc) from exc
        return None

    def drain(self, node: str) -> str:
        """Cordon ``node`` and evict its pods, honouring disruption budgets up to a deadline.

        On failure the cordon is undone: the policy counts a failed drain as not drained,
        and a cordoned node it does not count would slip past the disruption budget.
        """
        self.set_unschedulable(node, True)
        try:
            evicted = self._evict_all(node)
        except ActuatorError as exc:
            try:
                self.set_unschedulable(node, False)
                rolled_back = "node uncordoned again"
            except ActuatorError as undo:
                rolled_back = f"node left cordoned ({undo})"
            raise ActuatorError(f"{exc}; {rolled_back}", final=exc.final) from exc
        return f"kubernetes drained {node}: cordoned, {evicted} pods evicted"

    def _evict_all(self, node: str) -> int:
        pods = self.pods_to_evict(node)
        deadline = self.clock() + self.evict_deadline_s
        wait = self.evict_backoff_s
        pending = pods
        refusals: dict[tuple[str, str], str] = {}
        while True:
            still = []
            for pod in pending:
                refusal = self.evict(*pod)
                if refusal is not None:
                    refusals[pod] = refusal
                    still.append(pod)
            pending = still
            remaining = deadline - self.clock()
            if not pending:
                return len(pods)
            if remaining <= 0:
                break
            self.sleep(min(wait, remaining))
            wait = min(2 * wait, MAX_BACKOFF_S)
        listed = ", ".join(f"{ns}/{name} ({refusals[(ns, name)]})" for ns, name in pending)
        raise ActuatorError(
            f"kubernetes: drain of {node}: {len(pending)} pods not evicted within"
            f" {self.evict_deadline_s:g}s: {listed}",
            final=True,  # the deadline was the retry budget; the policy must not redo it
        )


def _status_message(body: Any) -> str:
    """The ``message`` of a Kubernetes Status body, if there is one."""
    try:
        return str(json.loads(body).get("message", ""))
    except (TypeError, ValueError, AttributeError):
        return ""
