"""Data parallelism: replicas of one model behind one router that sends each request to the replica already
holding its prompt's prefix in KV cache, unless that replica is overloaded.

Replicas are local processes (`backend="mp"`) or Ray actors (`backend="ray"`, on any node of a Ray cluster).
`ReplicaRouter` has the API of `AsyncEngine` that the OpenAI server uses, so `ember.server.app.build_app` serves
it as it serves one engine.
"""

from ember.data_parallel.config import DataParallelConfig
from ember.data_parallel.router import ReplicaRouter

__all__ = ["DataParallelConfig", "ReplicaRouter"]
