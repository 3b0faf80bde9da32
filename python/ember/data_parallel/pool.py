"""The replicas together, on the router's event loop: route each request, retry it once when its replica dies
before it produced anything, abort it, stop them all."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from ember._core import EmberError
from ember._streams import END
from ember.data_parallel.config import DataParallelConfig
from ember.data_parallel.replica import Deliver, Replica, ReplicaLost
from ember.data_parallel.routing import Candidate, choose
from ember.data_parallel.worker import ReplicaRequest
from ember.outputs import RequestOutput

logger = logging.getLogger("ember.data_parallel")

READY_WAIT_POLL_S = 0.1
"""Seconds between checks for a ready replica while none is."""


class NoReplicaError(EmberError):
    """No replica was ready to take a request in time (all are starting or restarting)."""


@dataclass
class RoutedRequest:
    """One request on its way through the router."""

    wire: ReplicaRequest
    """What the replica it is routed to runs."""
    block_hashes: list[int]
    """Prefix-cache keys of the prompt blocks an engine may reuse (all full blocks before the last token), under
    the request's adapter."""
    aborted: bool = False
    """Whether its caller aborted it (set before or while it runs on a replica)."""
    current: tuple[Replica, str] | None = field(default=None, repr=False)
    """The replica and stream id it runs on now."""


class ReplicaPool:
    """Every replica, and the routing between them."""

    def __init__(self, replicas: Sequence[Replica], config: DataParallelConfig, seed: int = 0) -> None:
        self.replicas = list(replicas)
        self.config = config
        self.num_retries = 0
        """Requests sent again to another replica after theirs died before producing anything."""
        self.num_failed_by_loss = 0
        """Requests ended with an error because their replica died after they had produced output."""
        self._rng = random.Random(seed)
        self._wire_ids = itertools.count()

    async def start(self) -> None:
        """Starts every replica at once; if one cannot start, stops the others and raises its error."""
        results = await asyncio.gather(*(r.start() for r in self.replicas), return_exceptions=True)
        errors = [e for e in results if isinstance(e, BaseException)]
        if errors:
            await self.stop()
            raise errors[0]

    async def stop(self) -> None:
        """Stops every replica (in-flight requests end with "abort" where the replica stops cleanly)."""
        await asyncio.gather(*(r.stop() for r in self.replicas), return_exceptions=True)

    async def run(self, request: RoutedRequest, post: Deliver) -> None:
        """Runs `request`, posting each output, then END or the error. A request whose replica dies before its
        first output is sent once more, to another replica."""
        try:
            for attempt in (1, 2):
                replica, num_matched = await self._route(request)
                produced = False
                try:
                    async for out in self._on(replica, request, num_matched):
                        produced = True
                        post(out)
                    post(END)
                    return
                except ReplicaLost as exc:
                    if produced or attempt == 2 or request.aborted:
                        self.num_failed_by_loss += produced
                        post(EmberError(f"{exc}; the request could not be completed"))
                        return
                    self.num_retries += 1
                    logger.warning("replica %d died before answering a request; retrying it once", replica.index)
        except Exception as exc:  # the caller gets the error itself (InvalidRequestError, NoReplicaError, ...)
            post(exc)
        finally:
            request.current = None

    def abort(self, request: RoutedRequest) -> None:
        """Aborts a request wherever it runs: its stream ends with finish_reason "abort"."""
        request.aborted = True
        if request.current is not None:
            replica, wire_id = request.current
            if replica.ready:
                replica.abort_stream(wire_id)

    async def _on(self, replica: Replica, request: RoutedRequest, num_matched: int) -> AsyncIterator[RequestOutput]:
        """Runs the request on `replica`, keeping the replica's prefix view up to date."""
        wire_id = f"{next(self._wire_ids)}"
        request.current = (replica, wire_id)
        view = replica.view
        trusted = view.is_confirmed(request.block_hashes[:num_matched])
        view.insert(request.block_hashes)
        confirmed = False
        try:
            stream = replica.generate(wire_id, request.wire)
            if request.aborted:
                replica.abort_stream(wire_id)
            async for out in stream:
                if not confirmed:
                    confirmed = True
                    view.confirm(request.block_hashes)
                    if trusted and request.wire.params.prompt_logprobs is None and replica.info is not None:
                        view.calibrate(num_matched, out.num_cached_tokens // replica.info.block_size)
                yield out
        finally:
            if not confirmed and replica.view is view:
                view.confirm(request.block_hashes)

    async def _route(self, request: RoutedRequest) -> tuple[Replica, int]:
        """The replica for `request` (waiting a little while none is ready) and the blocks its view matched."""
        deadline = asyncio.get_running_loop().time() + self.config.heartbeat_timeout_s
        while True:
            ready = [r for r in self.replicas if r.ready]
            if ready:
                break
            if asyncio.get_running_loop().time() > deadline:
                states = ", ".join(f"replica {r.index} {r.state.value}" for r in self.replicas)
                raise NoReplicaError(f"no replica is ready to serve ({states}); retry later")
            await asyncio.sleep(READY_WAIT_POLL_S)
        candidates = [
            Candidate(r.index, r.view.num_matched_blocks(request.block_hashes), r.num_in_flight_sequences)
            for r in ready
        ]
        choice = choose(candidates, len(request.block_hashes), self.config.routing, self.config.load_weight, self._rng)
        replica = self.replicas[choice.index]
        replica.num_routed_requests += 1
        if replica.info is not None:
            replica.num_matched_tokens += choice.num_matched_blocks * replica.info.block_size
        return replica, choice.num_matched_blocks
