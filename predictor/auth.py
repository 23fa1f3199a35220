"""API keys: generation, hashing, verification, and create/list/revoke over the store.

A key has one scope: ``ingest`` (send metrics and events), ``read`` (risk, nodes, history,
the audit log) or ``admin`` (everything, including the node registry, undrain, training and
promotion). Only the sha256 of a key is stored; the key itself is shown once, when created.

>>> key = generate_key()
>>> key.startswith(KEY_PREFIX) and len(hash_key(key)) == 64
True
>>> grants("admin", "ingest"), grants("read", "ingest")
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal, get_args

from predictor.config import Settings
from predictor.store import Store

logger = logging.getLogger(__name__)

Scope = Literal["ingest", "read", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
KEY_PREFIX = "pk_"  # makes a leaked key easy to recognise (secret scanners, logs)
BOOTSTRAP_NAME = "first-run admin"


@dataclass(frozen=True)
class Caller:
    """Who made a request: the key's id (None for the dev key), name and scope."""

    key_id: int | None
    name: str
    scope: Scope

    def allows(self, needed: Scope) -> bool:
        return grants(self.scope, needed)


def grants(held: Scope, needed: Scope) -> bool:
    """Whether a key of scope ``held`` may do what needs ``needed`` (admin may do all)."""
    return held == "admin" or held == needed


def generate_key() -> str:
    """A new random key: 32 bytes (256 bits) from the OS's CSPRNG, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of a key.

    A plain sha256 is enough here, unlike for passwords: slow hashes (bcrypt, argon2) exist
    to stop offline guessing of low-entropy secrets, and a 256-bit random key cannot be
    guessed however fast the hash. A fast hash also keeps the check on every request cheap.
    """
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    *, store: Store, scope: Scope, name: str = "", now: float | None = None
) -> tuple[str, dict[str, Any]]:
    """Create a key; return it (the only time it exists in clear) and its stored record."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; one of {', '.join(SCOPES)}")
    key = generate_key()
    created = time.time() if now is None else now
    key_id = store.add_api_key(
        name=name or scope, scope=scope, key_hash=hash_key(key), created=created
    )
    return key, {"id": key_id, "name": name or scope, "scope": scope, "created": created}


def list_keys(*, store: Store) -> list[dict[str, Any]]:
    """Every key, oldest first, without its hash: id, name, scope, created, revoked."""
    return [{k: v for k, v in row.items() if k != "hash"} for row in store.api_keys()]


def revoke_key(*, store: Store, key_id: int, now: float | None = None) -> None:
    """Revoke a key; it is refused from the next request on. LookupError if there is none."""
    if not store.revoke_api_key(key_id, at=time.time() if now is None else now):
        raise LookupError(f"no API key with id {key_id}")


def dev_key_in_force(settings: Settings) -> bool:
    """The documented dev key works only in ``env == "dev"`` and only if it is set."""
    return settings.env == "dev" and bool(settings.dev_api_key)


def verify_key(*, store: Store, settings: Settings, presented: str) -> Caller | None:
    """The caller a presented key belongs to, or None if it is unknown or revoked.

    Comparisons run in constant time and over every live key (no early exit), so response
    times say nothing about how close a guess was. Live keys are cached for a second: a
    key created anywhere works at once (an unknown key re-reads the table), a revocation
    made through this process holds at once, one made by another process (``predictor
    keys revoke``) within a second.
    """
    presented_hash = hash_key(presented).encode()
    found = _match(presented_hash, store.live_api_keys())
    # The dev key before the re-read: it is never in the table, and a re-read per request
    # would make every request of a dev setup (and the benchmarks) read the store.
    if found is None and dev_key_in_force(settings):
        dev_hash = hash_key(settings.dev_api_key or "").encode()
        if hmac.compare_digest(presented_hash, dev_hash):
            found = Caller(key_id=None, name="dev", scope="admin")
    if found is None:
        found = _match(presented_hash, store.live_api_keys(fresh=True))
    return found


def _match(presented_hash: bytes, keys: list[dict[str, Any]]) -> Caller | None:
    found: Caller | None = None
    for row in keys:  # every key, no early exit: see verify_key
        if hmac.compare_digest(presented_hash, row["hash"].encode()):
            found = Caller(key_id=row["id"], name=row["name"], scope=row["scope"])
    return found


def ensure_first_key(*, store: Store, settings: Settings) -> str | None:
    """On a first start with no way in, create an admin key and log it once at WARNING.

    "No way in" means the store has never held a key and the dev key is not in force
    (``env == "prod"``, or the dev key switched off). Returns the new key, else None.
    Only its hash is written anywhere; the log line is the one place it appears.
    """
    if dev_key_in_force(settings) or store.api_keys():
        return None
    key = generate_key()
    key_id = store.add_api_key(
        name=BOOTSTRAP_NAME, scope="admin", key_hash=hash_key(key), created=time.time(),
        only_if_none=True,
    )  # fmt: skip
    if key_id is None:  # another process made the first key just now
        return None
    logger.warning(
        "No API key existed, so an admin key (id %d) was created. It is shown only this once,"
        " store it now: %s -- send it as 'Authorization: Bearer <key>' (or set"
        " PREDICTOR_API_KEY for the CLI); create narrower keys with `predictor keys create"
        " --scope ingest|read|admin` and revoke this one with `predictor keys revoke %d`.",
        key_id,
        key,
        key_id,
    )
    return key
