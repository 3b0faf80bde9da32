"""`ReplicaRouter`: several replicas of one model behind the API the OpenAI server uses (that of AsyncEngine)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from collections.abc import AsyncIterator, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from ember import _core
from ember._core import EmberError, InvalidRequestError, Tokenizer
from ember._engine_args import check_engine_args
from ember._engine_loop import Sink
from ember._inputs import PromptType, check_cache_salt, normalize_prompts, one_prompt
from ember._streams import LiveRequests, QueueStream
from ember.data_parallel.config import DataParallelConfig
from ember.data_parallel.pool import ReplicaPool, RoutedRequest
from ember.data_parallel.replica import Replica
from ember.data_parallel.report import engine_totals, health_body, router_metric_lines
from ember.data_parallel.worker import ReplicaRequest
from ember.lora import LoRARequest
from ember.models import resolve_model
from ember.outputs import RequestOutput
from ember.sampling_params import SamplingParams

logger = logging.getLogger("ember.data_parallel")

T = TypeVar("T")


class ReplicaRouter:
    """N replicas of one model (local processes or Ray actors) behind one engine-like API.

    Takes the model and the engine arguments of `AsyncEngine` (per replica: `kv_cache_memory_bytes` is each
    replica's; `num_threads` is the total, split unless `config.threads_per_replica` is set) and a
    `DataParallelConfig`. The constructor returns once every replica has loaded the model. `generate` tokenizes,
    computes the prompt's prefix-cache block hashes and runs the request on the replica with the longest cached
    prefix unless it is overloaded. The replicas are driven from a background thread with its own event loop, so
    every method may be called from any thread and event loop, like AsyncEngine's.
    """

    def __init__(
        self, model: str | os.PathLike[str] | None = None, config: DataParallelConfig | None = None, **engine_args: Any
    ) -> None:
        self.config = (config or DataParallelConfig()).validated()
        check_engine_args(engine_args)
        self.model_path = resolve_model(model)
        """The local model file or folder (the router reads its tokenizer from it)."""
        self.tokenizer: Tokenizer = _core.load_tokenizer(self.model_path)
        """The model's tokenizer."""
        threads = self.config.replica_threads(engine_args.pop("num_threads", None))
        replica_args = {**engine_args, "num_threads": threads}
        self._owns_ray = False
        if self.config.backend == "ray":
            replicas = self._ray_replicas(model, replica_args, threads)
        else:
            from ember.data_parallel.mp_replica import MpReplica

            size = self.config.data_parallel_size
            replicas = [MpReplica(i, self.model_path, replica_args, self.config) for i in range(size)]
        self._pool = ReplicaPool(replicas, self.config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ember-router", daemon=True)
        self._thread.start()
        try:
            self._on_loop(self._pool.start()).result()
        except BaseException:
            self._close_loop()
            raise
        infos = [r.info for r in replicas if r.info is not None]
        self.max_model_len: int = min(info.max_model_len for info in infos)
        """The longest sequence every replica accepts."""
        self.block_size: int = infos[0].block_size
        """Tokens per KV-cache block."""
        self.model_name: str = infos[0].model_name
        """The model's display name."""
        self._counter = itertools.count()
        self._live: LiveRequests[RoutedRequest] = LiveRequests(lambda request: request.wire.params.n)
        self._closed = False

    @property
    def replicas(self) -> list[Replica]:
        """The replicas (read-only use: their state belongs to the router's thread)."""
        return self._pool.replicas

    async def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        priority: int = 0,
        delta: bool = False,
        lora_request: LoRARequest | None = None,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Streams one prompt's completion from the replica it is routed to, exactly like `AsyncEngine.generate`
        (with `lora_request`'s adapter, which that replica loads on first use, and `cache_salt`; prefixes are
        matched per adapter and salt, as the engines cache them).
        A request whose replica dies before its first output is retried once on another; after that it raises
        EmberError."""
        params = sampling_params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InvalidRequestError(f"priority must be an int, got {type(priority).__name__}")
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidRequestError(f"request_id must be a str, got {type(request_id).__name__}")
        if lora_request is not None and not isinstance(lora_request, LoRARequest):
            raise InvalidRequestError(f"lora_request must be a LoRARequest or None, got {type(lora_request).__name__}")
        salt = check_cache_salt(cache_salt)
        checked = one_prompt(prompt, "generate")
        lora_id = None if lora_request is None else lora_request.lora_int_id
        item, block_hashes = await asyncio.to_thread(self._prepare, checked, lora_id, salt)
        user_id = request_id if request_id is not None else f"req-{next(self._counter)}"
        wire = ReplicaRequest(item.token_ids, params, priority, delta, lora_request, salt)
        request = RoutedRequest(wire, block_hashes)
        if self._closed:
            raise EmberError("the router has been shut down")
        self._live.add(user_id, request)
        stream = QueueStream()
        sink = Sink(asyncio.get_running_loop(), stream.queue)
        future = self._on_loop(self._pool.run(request, sink.post))
        try:
            async for value in stream:
                yield replace(value, request_id=user_id, prompt=item.text)
        finally:
            self._live.remove(user_id)
            if not stream.ended:
                # Cancelling the run closes the replica's stream, which aborts the request there.
                future.cancel()

    def abort(self, request_id: str) -> bool:
        """Aborts a running request (its stream ends with finish_reason "abort"); False if unknown."""
        request = self._live.get(request_id)
        if request is None or self._closed:
            return False
        self._loop.call_soon_threadsafe(self._pool.abort, request)
        return True

    def abort_all(self) -> None:
        """Aborts every request in flight."""
        if not self._closed:
            for request in self._live.entries():
                self._loop.call_soon_threadsafe(self._pool.abort, request)

    async def unload_lora(self, lora_int_id: int) -> bool:
        """Unloads a LoRA adapter from every replica (an error where its requests still run); False when no
        replica had it loaded."""
        results = await asyncio.wrap_future(self._on_loop(self._unload_all(lora_int_id)))
        return any(results)

    async def reset_prefix_cache(self) -> bool:
        """Forgets every replica's cached prefixes; False if any had blocks in use."""
        results = await asyncio.wrap_future(self._on_loop(self._reset_all()))
        return all(results)

    def stats(self) -> dict[str, float]:
        """The replicas' engine counters summed (gauges combined), as of their last heartbeats."""
        return engine_totals(self._pool.replicas)

    def replica_stats(self) -> list[dict[str, float]]:
        """Each replica's engine counters as of its last heartbeat (empty before the first)."""
        return [{} if r.status is None else dict(r.status.stats) for r in self._pool.replicas]

    def health(self) -> tuple[int, dict[str, Any]]:
        """The /health answer: 200 while any replica is ready, else 503; the body describes every replica."""
        if self._closed:
            return 503, {"status": "stopped", "replicas": []}
        return health_body(self._pool.replicas, self.config.backend)

    def metric_lines(self) -> list[str]:
        """The router's Prometheus lines (replica up, restarts, routed requests, in-flight sequences, retries)."""
        return router_metric_lines(self._pool.replicas, self._pool.num_retries)

    @property
    def num_retries(self) -> int:
        """Requests sent again to another replica after theirs died before producing anything."""
        return self._pool.num_retries

    @property
    def alive(self) -> bool:
        """Whether the router runs and at least one replica is ready."""
        return not self._closed and any(r.ready for r in self._pool.replicas)

    @property
    def num_unfinished_requests(self) -> int:
        """Requests whose streams have not ended yet."""
        return self._live.num_requests

    @property
    def num_unfinished_sequences(self) -> int:
        """Sequences (n per request) whose streams have not ended yet."""
        return self._live.num_sequences

    async def shutdown(self) -> None:
        """Aborts what runs, stops every replica and the router's thread."""
        if self._closed:
            return
        self._closed = True
        await asyncio.wrap_future(self._on_loop(self._pool.stop()))
        await asyncio.to_thread(self._close_loop)

    async def __aenter__(self) -> ReplicaRouter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    def _prepare(
        self, prompt: PromptType, lora_int_id: int | None, cache_salt: str | None = None
    ) -> tuple[Any, list[int]]:
        """The prompt's token ids and the block hashes an engine could reuse (every full block before the last
        token, which an engine always computes) for a request with adapter `lora_int_id` (or the base model)
        and `cache_salt` (or none)."""
        (item,) = normalize_prompts([prompt], self.tokenizer)
        matchable = item.token_ids[: (len(item.token_ids) - 1) // self.block_size * self.block_size]
        if not matchable:
            return item, []
        return item, _core.prefix_block_hashes(matchable, self.block_size, lora_int_id, cache_salt)

    async def _unload_all(self, lora_int_id: int) -> list[bool]:
        return list(await asyncio.gather(*(r.unload_lora(lora_int_id) for r in self._pool.replicas)))

    async def _reset_all(self) -> list[bool]:
        return list(await asyncio.gather(*(r.reset_prefix_cache() for r in self._pool.replicas)))

    def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> Any:
        """Schedules `coroutine` on the router's loop; returns its concurrent future."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()
        if self._owns_ray:
            import ray

            ray.shutdown()

    def _ray_replicas(
        self, model: str | os.PathLike[str] | None, replica_args: dict[str, Any], threads: int
    ) -> list[Replica]:
        """Replicas as Ray actors, on the cluster this process is connected to (connecting or starting one)."""
        from ember.data_parallel.ray_replica import RayReplica, import_ray

        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.config.ray_address)
            self._owns_ray = True
        size = self.config.data_parallel_size
        device = replica_args.get("device", "auto")
        gpus = float(ray.cluster_resources().get("GPU", 0))
        num_gpus = 1 if device == "cuda" or (device == "auto" and gpus >= size) else 0
        # Each node resolves the model itself: a known name is fetched into that node's cache, and a path must
        # exist on every node.
        name = None if model is None else str(model)
        options = {"num_cpus": threads, "num_gpus": num_gpus}
        return [RayReplica(i, name, replica_args, self.config, actor_options=options) for i in range(size)]
