"""The partitioned sample stream of the scale-out mode, on NATS JetStream.

API replicas validate a batch, split it by partition (a stable hash of the node name, so
a node's samples always land in the same partition, in order) and publish each part to
``<stream_subject>.<partition>``; the client is acknowledged only after JetStream has
acknowledged every part (stored on disk). Scorer workers read partitions from there
(:mod:`predictor.scoring.worker`).

A resent batch is not stored twice: each part carries ``Nats-Msg-Id`` = the hash of its
bytes, and JetStream drops a repeat inside its duplicate window; past that window the
store's unique (node, metric, ts) index still stores a sample once.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import zlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import orjson

from predictor.config import Settings
from predictor.ingest.batch import SampleBatch

T = TypeVar("T")


class StreamError(Exception):
    """The stream did not take a batch (unreachable, full, or too slow): retry later."""


def partitions_of(nodes: np.ndarray, count: int) -> np.ndarray:
    """Each sample's partition: crc32 of its node name modulo ``count``.

    crc32, not ``hash()``: every process must agree, and Python salts string hashes.
    """
    unique, inverse = np.unique(nodes.astype(str), return_inverse=True)
    per_node = np.fromiter((zlib.crc32(n.encode()) for n in unique), np.int64, len(unique))
    return (per_node % count)[inverse.ravel()]


def encode(batch: SampleBatch) -> bytes:
    return orjson.dumps(
        {
            "node": batch.node.tolist(),
            "metric": batch.metric.tolist(),
            "ts": batch.ts,
            "value": batch.value,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def decode(data: bytes) -> SampleBatch:
    columns = orjson.loads(data)
    return SampleBatch.from_columns(
        columns["node"], columns["metric"], columns["ts"], columns["value"]
    )


def subject(settings: Settings, partition: int) -> str:
    return f"{settings.stream_subject}.{partition}"


async def ensure_stream(js: Any, settings: Settings) -> None:
    """Create the stream if it is missing (same config: a no-op)."""
    from nats.js.api import DiscardPolicy, StorageType, StreamConfig

    config = StreamConfig(
        name=settings.stream_name,
        subjects=[f"{settings.stream_subject}.*"],
        storage=StorageType.FILE,
        duplicate_window=settings.stream_duplicate_window_s,
        max_age=settings.stream_max_age_s,
        max_bytes=settings.stream_max_bytes,
        # Full means refuse new batches (the client gets 503 and retries), never drop
        # old ones that a worker may still have to replay.
        discard=DiscardPolicy.NEW,
    )
    try:
        await js.add_stream(config)
    except Exception as exc:  # an existing stream with other limits: keep it, say so
        if "already in use" not in str(exc):
            raise
        await js.update_stream(config)


class Publisher:
    """A NATS connection on its own event loop thread, for the synchronous ingest routes."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="predictor-nats")
        self.nc: Any = None
        self.js: Any = None

    def start(self) -> None:
        import nats

        self.thread.start()

        async def connect() -> None:
            self.nc = await nats.connect(
                str(self.settings.nats_url), max_reconnect_attempts=-1, name="predictor-api"
            )
            self.js = self.nc.jetstream(timeout=self.settings.publish_timeout_s)
            await ensure_stream(self.js, self.settings)

        self._run(connect())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(
            timeout=self.settings.publish_timeout_s + 5
        )

    @property
    def connected(self) -> bool:
        return bool(self.nc is not None and self.nc.is_connected)

    def publish(self, batch: SampleBatch) -> None:
        """Publish a batch, one message per partition; return once JetStream stored all."""
        part = partitions_of(batch.node, self.settings.stream_partitions)
        messages = []
        for p in np.unique(part):
            data = encode(batch.take(np.flatnonzero(part == p)))
            messages.append((subject(self.settings, int(p)), data))

        async def send() -> None:
            await asyncio.gather(
                *(
                    self.js.publish(
                        subj, data, headers={"Nats-Msg-Id": hashlib.sha256(data).hexdigest()}
                    )
                    for subj, data in messages
                )
            )

        try:
            self._run(send())
        except Exception as exc:
            raise StreamError(f"stream did not acknowledge the batch: {exc!r}") from exc

    def close(self) -> None:
        if self.nc is not None:
            self._run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
