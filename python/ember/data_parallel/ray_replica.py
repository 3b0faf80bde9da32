"""A replica as a Ray actor (`--distributed-executor-backend ray`): placed by Ray on any node of the cluster
and re-created by Ray when its process dies. Needs the optional `ray` package (`pip install ember[ray]`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ember._core import EmberError
from ember._streams import END
from ember.data_parallel.replica import Replica, ReplicaLost
from ember.data_parallel.worker import ReplicaInfo, ReplicaRequest, ReplicaStatus, ReplicaWorker

logger = logging.getLogger("ember.data_parallel")

STOP_TIMEOUT_S = 10.0
"""Seconds an actor gets to abort its requests before it is killed."""
RECOVERY_POLL_S = 5.0
"""How long one status call may take while waiting for Ray to bring an actor back."""


def import_ray() -> Any:
    """The `ray` module, or an EmberError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise EmberError("--distributed-executor-backend ray needs the ray package: pip install 'ember[ray]'") from exc
    return ray


class RayWorker(ReplicaWorker):
    """The actor: a ReplicaWorker whose start-up error is kept and raised by `info()`, so the router gets the
    engine's own error (Ray would otherwise report only that the actor died)."""

    def __init__(self, model: str | None, engine_args: dict[str, Any]) -> None:
        self._init_error: Exception | None = None
        try:
            super().__init__(model, engine_args)
        except Exception as exc:  # raised again by info(), to the router
            self._init_error = exc

    def info(self) -> ReplicaInfo:
        """The replica's info; raises its start-up error if the engine did not load."""
        if self._init_error is not None:
            raise self._init_error
        return super().info()


class RayReplica(Replica):
    """A replica that Ray places and restarts; the router watches it and routes to it."""

    def __init__(self, *args: Any, actor_options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ray = import_ray()
        self._actor_options = actor_options
        self._actor: Any = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def _launch(self) -> ReplicaInfo:
        ray = self._ray
        actor_class = ray.remote(RayWorker)
        # Ray re-creates the actor whenever its process dies; its calls are not retried (the router decides).
        options = {"max_restarts": -1, "max_task_retries": 0, **self._actor_options}
        self._actor = actor_class.options(**options).remote(self.model, self.engine_args)
        try:
            info: ReplicaInfo = await self._call(lambda actor: actor.info.remote())
        except BaseException:
            ray.kill(self._actor, no_restart=True)
            self._actor = None
            raise
        return info

    def _open(self, wire_id: str, request: ReplicaRequest) -> None:
        stream = self._actor.generate.options(num_returns="streaming").remote(wire_id, request)
        task = asyncio.create_task(self._pump(wire_id, stream))
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    def _abort(self, wire_id: str) -> None:
        self._actor.abort.remote(wire_id)

    async def _status(self) -> ReplicaStatus:
        status: ReplicaStatus = await self._call(lambda actor: actor.status.remote())
        return status

    async def _reset_prefix_cache(self) -> bool:
        return bool(await self._call(lambda actor: actor.reset_prefix_cache.remote()))

    async def _unload_lora(self, lora_int_id: int) -> bool:
        return bool(await self._call(lambda actor: actor.unload_lora.remote(lora_int_id)))

    async def _recover(self) -> ReplicaInfo:
        ray = self._ray
        if self.last_failure is not None and "no heartbeat" in self.last_failure:
            # Alive but stuck: kill it so that Ray re-creates it.
            ray.kill(self._actor, no_restart=False)
        while True:
            try:
                info: ReplicaInfo = await asyncio.wait_for(
                    self._call(lambda actor: actor.info.remote()), RECOVERY_POLL_S
                )
                return info
            except asyncio.TimeoutError:
                continue
            except ReplicaLost as exc:
                if not isinstance(exc.__cause__, ray.exceptions.ActorDiedError):
                    await asyncio.sleep(0.2)
                    continue
            # Dead for good (Ray gave up on it): a new actor.
            logger.warning("replica %d: Ray will not restart its actor; creating a new one", self.index)
            return await self._launch()

    async def _terminate(self) -> None:
        if self._actor is None:
            return
        # Aborts what runs (the streams end with "abort") before the actor goes.
        with contextlib.suppress(asyncio.TimeoutError, EmberError):
            await asyncio.wait_for(self._call(lambda actor: actor.shutdown.remote()), STOP_TIMEOUT_S)
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._ray.kill(self._actor, no_restart=True)
        self._actor = None

    async def _call(self, method: Callable[[Any], Any]) -> Any:
        """Awaits one actor call; the actor's own errors are raised as they are, a lost actor as ReplicaLost."""
        ray = self._ray
        try:
            return await method(self._actor)
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None
        except ray.exceptions.RayActorError as exc:
            raise ReplicaLost(f"actor of replica {self.index} unavailable: {type(exc).__name__}") from exc

    async def _pump(self, wire_id: str, stream: Any) -> None:
        """Delivers a streaming call's outputs, then END, the request's error, or the loss of the actor."""
        ray = self._ray
        try:
            async for ref in stream:
                self._deliver(wire_id, await ref)
            self._deliver(wire_id, END)
        except ray.exceptions.RayTaskError as exc:
            self._deliver(wire_id, _cause(exc))
        except ray.exceptions.RayActorError as exc:
            self.lost(f"its Ray actor died ({type(exc).__name__})")


def _cause(exc: Any) -> BaseException:
    """The exception an actor method raised, without Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else EmberError(str(exc))
