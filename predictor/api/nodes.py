"""Node registry, risk and actions."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Path, Query

from predictor import service
from predictor.api.deps import AdminCaller, ReadCaller, RuntimeDep
from predictor.ingest.json_format import NAME_PATTERN
from predictor.schemas import ActionOut, NodeMeta, NodeOut, RiskOut, RiskPoint, UndrainIn

router = APIRouter(prefix="/v1", tags=["nodes"])
NodePath = Path(pattern=NAME_PATTERN.pattern)


@router.put("/nodes/{node}", response_model=NodeOut)
def put_node(
    meta: NodeMeta, runtime: RuntimeDep, caller: AdminCaller, node: str = NodePath
) -> dict:
    return service.put_node(runtime=runtime, node=node, meta=meta.model_dump())


@router.get("/nodes/{node}", response_model=NodeOut)
def get_node(runtime: RuntimeDep, caller: ReadCaller, node: str = NodePath) -> dict:
    meta = runtime.store.node(node)
    if meta is None:
        raise HTTPException(404, f"node {node} is not registered")
    return {"node": node, **meta}


@router.get("/nodes", response_model=list[NodeOut])
def list_nodes(runtime: RuntimeDep, caller: ReadCaller) -> list[dict]:
    return [{"node": n, **m} for n, m in sorted(runtime.store.nodes().items())]


@router.get("/risk", response_model=list[RiskOut])
def fleet_risk(
    runtime: RuntimeDep, caller: ReadCaller, top: int = Query(20, ge=1, le=100_000)
) -> list[dict]:
    """The riskiest nodes first, each with its top contributing metrics."""
    return service.fleet_risk(runtime=runtime, top=top)


@router.get("/nodes/{node}/risk", response_model=RiskOut)
def node_risk(runtime: RuntimeDep, caller: ReadCaller, node: str = NodePath) -> dict:
    risk = service.node_risk(runtime=runtime, node=node)
    if risk is None:
        raise HTTPException(404, f"no risk yet for node {node}")
    return risk


@router.get("/nodes/{node}/history", response_model=list[RiskPoint])
def node_history(
    runtime: RuntimeDep,
    caller: ReadCaller,
    node: str = NodePath,
    since: float = Query(0.0, allow_inf_nan=False),
    limit: int = Query(2000, ge=1, le=100_000),
) -> list[dict]:
    return service.node_history(runtime=runtime, node=node, since=since, limit=limit)


@router.get("/actions", response_model=list[ActionOut])
def list_actions(
    runtime: RuntimeDep,
    caller: ReadCaller,
    node: str | None = Query(None, pattern=NAME_PATTERN.pattern),
    limit: int = Query(100, ge=1, le=10_000),
) -> list[dict]:
    """The audit log: every decision, executed, dry-run or blocked, newest first."""
    return runtime.store.actions(node=node, limit=limit)


@router.post("/nodes/{node}/undrain", response_model=ActionOut)
def undrain(
    runtime: RuntimeDep,
    caller: AdminCaller,
    body: UndrainIn | None = None,
    node: str = NodePath,
) -> dict:
    """Manual override: return a drained node to service (the audit log names the key)."""
    reason = f"{(body or UndrainIn()).reason} (key {caller.name!r})"
    try:
        return service.undrain_node(runtime=runtime, node=node, reason=reason)
    except LookupError as exc:
        raise HTTPException(409, str(exc)) from None
