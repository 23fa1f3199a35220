"""The JetStream sample stream: partitioning, encoding, publishing with the real NATS server."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from predictor.api import create_app
from predictor.config import Settings
from predictor.ingest.batch import SampleBatch
from predictor.stream import Publisher, decode, encode, partitions_of, subject
from tests.server_process import DEV_AUTH


def stream_settings(tmp_path: Path, nats_stream: dict[str, str], **extra: object) -> Settings:
    return Settings(
        db=tmp_path / "predictor.db",
        models_dir=tmp_path / "models",
        role="api",
        nats_url=nats_stream["PREDICTOR_NATS_URL"],
        stream_name=nats_stream["PREDICTOR_STREAM_NAME"],
        stream_subject=nats_stream["PREDICTOR_STREAM_SUBJECT"],
        stream_partitions=4,
        **extra,
    )


def fleet_batch(nodes: int = 12, metrics: int = 3, t0: float = 1.7e9) -> SampleBatch:
    node = np.repeat([f"n{i}" for i in range(nodes)], metrics)
    metric = np.tile([f"m{j}" for j in range(metrics)], nodes)
    values = np.linspace(-1e300, 1e300, len(node))
    return SampleBatch.from_columns(node, metric, np.full(len(node), t0), values)


def stream_messages(settings: Settings) -> list[tuple[str, bytes]]:
    import nats

    async def read() -> list[tuple[str, bytes]]:
        nc = await nats.connect(str(settings.nats_url))
        js = nc.jetstream()
        info = await js.stream_info(settings.stream_name)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(settings.stream_name, seq)
            out.append((msg.subject, msg.data or b""))
        await nc.close()
        return out

    return asyncio.run(read())


def test_partition_is_a_stable_crc32_of_the_node() -> None:
    nodes = np.array([f"host-{i}" for i in range(200)], dtype=object)
    part = partitions_of(nodes, 8)
    # The same in every process (Python's own str hash is salted per process).
    assert part.tolist() == [zlib.crc32(n.encode()) % 8 for n in nodes]
    assert set(part.tolist()) == set(range(8))  # 200 nodes use every partition
    repeated = partitions_of(np.array(["host-3", "host-1", "host-3"], dtype=object), 8)
    assert repeated[0] == repeated[2]


def test_encode_decode_round_trip_is_exact() -> None:
    batch = fleet_batch()
    back = decode(encode(batch))
    for column in ("node", "metric", "ts", "value"):
        assert np.array_equal(getattr(back, column), getattr(batch, column))


def test_publish_splits_by_partition_and_a_resent_batch_is_stored_once(
    tmp_path: Path, nats_stream: dict[str, str]
) -> None:
    settings = stream_settings(tmp_path, nats_stream)
    publisher = Publisher(settings)
    publisher.start()
    try:
        batch = fleet_batch()
        publisher.publish(batch)
        publisher.publish(batch)  # a client retry after a lost answer
    finally:
        publisher.close()
    messages = stream_messages(settings)
    expected = partitions_of(batch.node, settings.stream_partitions)
    assert len(messages) == len(set(expected.tolist()))  # one per partition, once
    seen = 0
    for subj, data in messages:
        part = decode(data)
        number = int(subj.rsplit(".", 1)[1])
        assert subj == subject(settings, number)
        assert set(partitions_of(part.node, settings.stream_partitions).tolist()) == {number}
        seen += len(part)
    assert seen == len(batch)


def test_api_replica_acknowledges_after_the_stream_and_refuses_when_it_is_full(
    tmp_path: Path, nats_stream: dict[str, str]
) -> None:
    settings = stream_settings(tmp_path, nats_stream, stream_max_bytes=4096)
    body = {"node": "web-1", "ts": 1.7e9, "values": {"cpu": 0.5, "mem": 0.25}}
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz").json()
        assert ready["role"] == "api" and ready["stream_connected"]
        assert client.post("/v1/metrics", json=body, headers=DEV_AUTH).status_code == 202
        assert len(stream_messages(settings)) == 1
        # Every partition's part of this batch is over the stream's limit on its own.
        big = {
            "samples": [
                {"node": f"n{i}", "metric": "cpu", "ts": 1.7e9, "value": 1.0} for i in range(2000)
            ]
        }
        refused = client.post("/v1/metrics", json=big, headers=DEV_AUTH)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"]
    assert len(stream_messages(settings)) == 1  # nothing of the refused batch was kept
