"""A scorer worker of the scale-out mode: owns stream partitions, scores them, hands over.

Ownership is a lease per partition in the shared store, timed by the database's clock and
renewed every third of its TTL by a task of its own (so a long scoring step does not lose
it). Each worker aims at its fair share, ``ceil(partitions / live workers)``: it takes free
or expired partitions up to it and hands back what is above it, so a new worker gets work
and a dead worker's partitions are taken over once its leases expire.

Per owned partition the worker keeps its own :class:`Scorer`. Taking a partition over
restores the partition's last checkpoint (saved in the store, fenced by the lease epoch so a
worker that lost the lease cannot overwrite it) and re-reads the stream from the position it
covers. Re-scored samples rewrite the same risk points (unique per node and time), samples
are stored once (unique per series and time), and a node already drained is not drained
again (the policy checks the node's state inside the budget transaction), so a takeover
neither loses nor duplicates anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from predictor.actuators import Actuator
from predictor.config import Settings
from predictor.ingest.batch import SampleBatch
from predictor.scoring.scorer import Scorer
from predictor.store import Store, open_store
from predictor.stream import decode, ensure_stream, subject
from predictor.training.model import BatchModel

logger = logging.getLogger(__name__)


@dataclass
class OwnedPartition:
    number: int
    epoch: int
    scorer: Scorer
    subscription: Any  # the JetStream pull subscription of its durable consumer
    checkpointed_at: float  # monotonic


class Worker:
    """Scores the partitions it holds leases on, until ``stop`` is set."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        actuator: Actuator,
        model: BatchModel | None = None,
        worker_id: str | None = None,
    ):
        self.settings = settings
        self.store = store
        self.actuator = actuator
        self.model = model
        self.id = worker_id or settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.owned: dict[int, OwnedPartition] = {}
        self.held: dict[int, int] = {}  # partition -> epoch, as of the last renewal
        self.js: Any = None

    async def run(self, stop: asyncio.Event) -> None:
        import nats

        nc = await nats.connect(
            str(self.settings.nats_url), max_reconnect_attempts=-1, name=self.id
        )
        self.js = nc.jetstream()
        await ensure_stream(self.js, self.settings)
        renewals = asyncio.create_task(self._renew_forever(stop))
        logger.info("worker %s started", self.id)
        try:
            next_rebalance = 0.0
            while not stop.is_set():
                if time.monotonic() >= next_rebalance:  # the store is asked once a second
                    await self._rebalance()
                    next_rebalance = time.monotonic() + min(1.0, self.settings.lease_ttl_s / 3)
                scored = 0
                for part in list(self.owned.values()):
                    try:
                        scored += await self._step(part)
                    except Exception:
                        # Its consumer may have handed out messages it never scored: give
                        # the partition back; whoever takes it re-reads from the checkpoint.
                        logger.exception("partition %d: step failed; releasing", part.number)
                        await self._release(part, checkpoint=False)
                await self._checkpoint_due()
                if not scored:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.2)
        finally:
            renewals.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewals
            # A clean stop hands every partition over at once instead of after the TTL.
            for part in list(self.owned.values()):
                await self._release(part)
            await nc.close()
            logger.info("worker %s stopped", self.id)

    # -- leases ------------------------------------------------------------------------
    async def _renew_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self._renew()
            except Exception:
                # Unsure whether the leases still hold: stop scoring them (the next
                # rebalance drops them) rather than risk two owners.
                logger.exception("worker %s: lease renewal failed", self.id)
                self.held = {}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.lease_ttl_s / 3)

    def _renew(self) -> None:
        self.store.heartbeat_worker(worker=self.id)
        self.held = self.store.renew_leases(worker=self.id, ttl_s=self.settings.lease_ttl_s)

    async def _rebalance(self) -> None:
        """Drop what was lost, hand back what is above the fair share, take up to it."""
        s = self.settings
        for number, part in list(self.owned.items()):
            if self.held.get(number) != part.epoch:
                logger.warning("worker %s lost partition %d", self.id, number)
                await self._drop(part)
        live = max(1, len(self.store.live_workers(ttl_s=s.lease_ttl_s)))
        share = math.ceil(s.stream_partitions / live)
        while len(self.owned) > share:
            await self._release(self.owned[max(self.owned)])
        if len(self.owned) == share:
            return
        # Start the search at a different place per worker so they do not all race for 0.
        start = hash(self.id) % s.stream_partitions
        for i in range(s.stream_partitions):
            number = (start + i) % s.stream_partitions
            if number in self.owned:
                continue
            epoch = self.store.try_acquire_lease(
                partition=number, worker=self.id, ttl_s=s.lease_ttl_s
            )
            if epoch is not None:
                self.held[number] = epoch
                await self._take(number, epoch)
                if len(self.owned) >= share:
                    return

    async def _take(self, number: int, epoch: int) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        s = self.settings

        def fresh() -> Scorer:
            return Scorer.build(
                settings=s, store=self.store, actuator=self.actuator, model=self.model
            )

        scorer = fresh()
        saved = self.store.load_checkpoint(partition=number)
        if saved is not None:
            try:
                scorer.load_snapshot(saved[1])
                scorer.engine.state.scored_rowid = saved[0]
            except Exception as exc:  # unusable state: re-read the partition from its start
                logger.warning("partition %d: ignoring checkpoint (%s)", number, exc)
                scorer = fresh()
        position = scorer.scored_rowid
        # One durable consumer per partition, re-created at the checkpoint's position by
        # each new owner (the previous owner's acknowledgements say nothing about what its
        # last checkpoint covers).
        durable = f"{s.stream_name}-p{number}"
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(s.stream_name, durable)
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=subject(s, number),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if position else DeliverPolicy.ALL,
            opt_start_seq=position + 1 if position else None,
            ack_policy=AckPolicy.ALL,
            ack_wait=max(30.0, 3 * s.lease_ttl_s),
        )
        subscription = await self.js.pull_subscribe(
            subject(s, number), durable=durable, stream=s.stream_name, config=config
        )
        self.owned[number] = OwnedPartition(number, epoch, scorer, subscription, time.monotonic())
        logger.info(
            "worker %s took partition %d (epoch %d) at %d", self.id, number, epoch, position
        )

    async def _drop(self, part: OwnedPartition) -> None:
        self.owned.pop(part.number, None)
        with contextlib.suppress(Exception):
            await part.subscription.unsubscribe()

    async def _release(self, part: OwnedPartition, *, checkpoint: bool = True) -> None:
        """Checkpoint, then give the lease back so another worker can take it at once."""
        if checkpoint:
            await asyncio.to_thread(self._checkpoint, part)
        await self._drop(part)
        self.store.release_lease(partition=part.number, worker=self.id)
        self.held.pop(part.number, None)

    # -- scoring -----------------------------------------------------------------------
    async def _step(self, part: OwnedPartition) -> int:
        import nats.errors

        try:
            messages = await part.subscription.fetch(
                self.settings.worker_fetch_messages, timeout=0.05
            )
        except (nats.errors.TimeoutError, TimeoutError):  # nothing new in this partition
            return 0
        done = part.scorer.scored_rowid
        fresh = [m for m in messages if m.metadata.sequence.stream > done]
        batches = [decode(m.data) for m in fresh]
        if fresh:
            position = fresh[-1].metadata.sequence.stream
            await asyncio.to_thread(self._score, part, batches, position)
        await messages[-1].ack()  # AckPolicy.ALL: acknowledges every earlier one too
        return sum(len(b) for b in batches)

    def _score(self, part: OwnedPartition, batches: list[SampleBatch], position: int) -> None:
        # Stored before scoring, so training sees every sample. One log batch per stream
        # message, so a replay (however its fetches group the messages) stores none twice.
        self.store.append_batches(batches)
        with part.scorer.lock:
            part.scorer.score(SampleBatch.concat(batches), position=position)

    async def _checkpoint_due(self) -> None:
        now = time.monotonic()
        for part in list(self.owned.values()):
            if now - part.checkpointed_at >= self.settings.checkpoint_every_s:
                await asyncio.to_thread(self._checkpoint, part)

    def _checkpoint(self, part: OwnedPartition) -> None:
        saved = self.store.save_checkpoint(
            partition=part.number,
            worker=self.id,
            epoch=part.epoch,
            position=part.scorer.scored_rowid,
            state=part.scorer.snapshot(),
        )
        part.checkpointed_at = time.monotonic()
        if not saved:  # fenced off: another worker owns it now; the next rebalance drops it
            logger.warning("partition %d: lease lost, checkpoint refused", part.number)
            self.held.pop(part.number, None)


def run_worker(settings: Settings) -> None:
    """``predictor serve --role worker``: score partitions until SIGTERM/SIGINT."""
    import signal

    from predictor.actuators import make_actuator
    from predictor.training import ModelRegistry

    if not settings.nats_url:
        raise ValueError("role worker reads the stream: set PREDICTOR_NATS_URL")
    loaded, refused = ModelRegistry.from_settings(settings).load_serving()
    if refused:
        logger.warning("model versions refused: %s", refused)
    store = open_store(settings)
    worker = Worker(
        settings=settings,
        store=store,
        actuator=make_actuator(settings),
        model=loaded[0] if loaded else None,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await worker.run(stop)

    try:
        asyncio.run(main())
    finally:
        store.close()
