"""How the replicas are started, routed to and watched (plain data, so the CLI needs nothing heavier)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ember._core import InvalidRequestError
from ember.data_parallel.routing import RoutingPolicy

ExecutorBackend = Literal["mp", "ray"]
"""`mp`: one engine process per replica on this machine; `ray`: one Ray actor per replica on a Ray cluster."""


@dataclass(frozen=True)
class DataParallelConfig:
    """Replicas of one model behind one router."""

    data_parallel_size: int = 2
    """Number of replicas."""
    backend: ExecutorBackend = "mp"
    """How replicas run: local processes (`mp`) or Ray actors (`ray`)."""
    routing: RoutingPolicy = "prefix"
    """`prefix` routes to the longest cached prefix unless overloaded; `load` ignores prefixes."""
    load_weight: float = 1.0
    """β in score = matched fraction - β * relative load (`routing.relative_load`: in-flight sequences over the
    replicas' mean plus `routing.IDLE_SEQUENCES`)."""
    threads_per_replica: int | None = None
    """CPU threads of each replica's engine; None: `num_threads` (or this machine's cores) split evenly."""
    heartbeat_interval_s: float = 1.0
    """Seconds between status calls to each replica."""
    heartbeat_timeout_s: float = 10.0
    """A replica that has not answered a status call for this long is declared dead and restarted."""
    startup_timeout_s: float = 300.0
    """Seconds a replica may take to load its model."""
    ray_address: str | None = None
    """The Ray cluster to join (`ray start --head` prints it); None: $RAY_ADDRESS, a cluster started on this
    machine, else a local Ray started for this router."""

    def validated(self) -> DataParallelConfig:
        """Raises InvalidRequestError naming the field when a value is out of range; returns self."""
        _check_count("data_parallel_size", self.data_parallel_size)
        if self.threads_per_replica is not None:
            _check_count("threads_per_replica", self.threads_per_replica)
        if self.backend not in ("mp", "ray"):
            raise InvalidRequestError(f"distributed_executor_backend must be 'mp' or 'ray', got {self.backend!r}")
        if self.routing not in ("prefix", "load"):
            raise InvalidRequestError(f"routing must be 'prefix' or 'load', got {self.routing!r}")
        for name in ("load_weight", "heartbeat_interval_s", "heartbeat_timeout_s", "startup_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise InvalidRequestError(f"{name} must be a finite number >= 0, got {value!r}")
        return self

    def replica_threads(self, num_threads: int | None) -> int:
        """Threads of each replica: `threads_per_replica`, else the total (`num_threads` or every core) split."""
        if self.threads_per_replica is not None:
            return self.threads_per_replica
        total = num_threads if num_threads is not None else (os.cpu_count() or 1)
        return max(1, total // self.data_parallel_size)


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{name} must be an integer >= 1, got {value!r}")


def visible_gpu_ids() -> list[str]:
    """The GPUs this process may hand out: $CUDA_VISIBLE_DEVICES when set, else the /dev/nvidiaN devices."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    numbered = (p.name[len("nvidia") :] for p in Path("/dev").glob("nvidia*"))
    return sorted((n for n in numbered if n.isdigit()), key=int)


def replica_environment(index: int, engine_args: dict[str, Any]) -> dict[str, str]:
    """Environment overrides of local replica `index`: its own GPU (round-robin when there are fewer GPUs
    than replicas) unless the engine is pinned to the CPU."""
    if engine_args.get("device", "auto") == "cpu":
        return {}
    gpu_ids = visible_gpu_ids()
    return {"CUDA_VISIBLE_DEVICES": gpu_ids[index % len(gpu_ids)]} if gpu_ids else {}
