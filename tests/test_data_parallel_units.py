"""The router's parts without a model: prefix block hashes, the prefix view, the routing score, the configuration,
the wire format between router and replica process, and the combined metrics."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest

from ember import EmberError, InvalidRequestError, SamplingParams, _core
from ember.data_parallel.config import DataParallelConfig, replica_environment, visible_gpu_ids
from ember.data_parallel.prefix_view import PrefixView
from ember.data_parallel.report import engine_totals, router_metric_lines
from ember.data_parallel.routing import Candidate, choose, relative_load
from ember.data_parallel.wire import FrameWriter, encode, portable_error, read_message
from ember.metrics import render_prometheus
from ember.outputs import CompletionOutput, RequestOutput


def test_prefix_block_hashes_chain_full_blocks_only() -> None:
    ids = list(range(100, 150))
    hashes = _core.prefix_block_hashes(ids, 16)
    assert len(hashes) == 3 and len(set(hashes)) == 3
    # A chain: the same block after another prefix hashes differently; a shared prefix shares its hashes.
    assert _core.prefix_block_hashes(ids[:32], 16) == hashes[:2]
    assert _core.prefix_block_hashes([1, *ids[1:]], 16)[1] != hashes[1]
    assert _core.prefix_block_hashes(ids[:15], 16) == []
    assert _core.prefix_block_hashes(ids, 8)[:2] != hashes[:2]
    with pytest.raises(InvalidRequestError, match="block_size"):
        _core.prefix_block_hashes(ids, 0)
    with pytest.raises(InvalidRequestError, match="token_ids"):
        _core.prefix_block_hashes([1, -2], 16)


def test_prefix_view_is_an_lru_of_block_hashes() -> None:
    view = PrefixView(num_blocks=4)
    view.insert([1, 2, 3])
    assert view.num_matched_blocks([1, 2, 3, 9]) == 3
    assert view.num_matched_blocks([2, 3]) == 2 and view.num_matched_blocks([9, 1]) == 0
    view.insert([1, 7, 8])  # 1 is used again; 2 is the least recently used and goes
    assert len(view) == 4 and view.num_matched_blocks([1, 2]) == 1
    view.clear()
    assert len(view) == 0


def test_prefix_view_calibrates_its_capacity_from_actual_hits() -> None:
    view = PrefixView(num_blocks=10, min_blocks=2)
    view.insert(list(range(10)))
    view.confirm(list(range(10)))
    assert view.is_confirmed([0, 1])
    view.calibrate(num_predicted_blocks=6, num_actual_blocks=2)  # 4 blocks the view listed were gone
    assert view.capacity_blocks == 6 and len(view) == 6
    view.calibrate(num_predicted_blocks=0, num_actual_blocks=9)  # never beyond the pool
    assert view.capacity_blocks == 10
    view.calibrate(num_predicted_blocks=50, num_actual_blocks=0)
    assert view.capacity_blocks == 2
    view.insert([42])  # pending until its prefill ends
    assert not view.is_confirmed([42])
    view.confirm([42])
    view.confirm([42])  # confirming twice, or after a clear, is harmless
    assert view.is_confirmed([42])


def test_routing_prefers_the_cached_prefix_unless_the_replica_is_overloaded() -> None:
    rng = random.Random(0)
    cached_and_busy = Candidate(0, num_matched_blocks=6, num_in_flight_sequences=3)
    idle = Candidate(1, num_matched_blocks=0, num_in_flight_sequences=0)
    assert choose([cached_and_busy, idle], 7, "prefix", 1.0, rng).index == 0
    assert choose([cached_and_busy, idle], 7, "load", 1.0, rng).index == 1
    piled_up = Candidate(0, num_matched_blocks=7, num_in_flight_sequences=40)
    other = Candidate(1, num_matched_blocks=0, num_in_flight_sequences=2)
    assert choose([piled_up, other], 7, "prefix", 1.0, rng).index == 1
    assert choose([piled_up, other], 7, "prefix", 0.0, rng).index == 0
    # The score is the matched fraction minus beta times the relative load.
    choice = choose([cached_and_busy, idle], 7, "prefix", 0.5, rng)
    assert choice.score == pytest.approx(6 / 7 - 0.5 * relative_load(3, 1.5))
    assert choice.num_matched_blocks == 6


def test_routing_spreads_ties_over_idle_replicas() -> None:
    rng = random.Random(1)
    picks = [choose([Candidate(0, 0, 0), Candidate(1, 0, 0)], 0, "prefix", 1.0, rng).index for _ in range(400)]
    assert 150 < picks.count(0) < 250
    with pytest.raises(ValueError):
        choose([], 3, "prefix", 1.0, rng)


def test_config_checks_and_splits_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DataParallelConfig(data_parallel_size=2).replica_threads(8) == 4
    assert DataParallelConfig(data_parallel_size=3).replica_threads(2) == 1
    assert DataParallelConfig(data_parallel_size=2, threads_per_replica=3).replica_threads(8) == 3
    for bad, field in (
        ({"data_parallel_size": 0}, "data_parallel_size"),
        ({"backend": "mpi"}, "distributed_executor_backend"),
        ({"routing": "random"}, "routing"),
        ({"load_weight": -1.0}, "load_weight"),
        ({"threads_per_replica": True}, "threads_per_replica"),
    ):
        with pytest.raises(InvalidRequestError, match=field):
            DataParallelConfig(**bad).validated()  # type: ignore[arg-type]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpu_ids() == ["3", "5"]
    assert [replica_environment(i, {}) for i in range(3)] == [{"CUDA_VISIBLE_DEVICES": g} for g in ("3", "5", "3")]
    assert replica_environment(0, {"device": "cpu"}) == {}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert replica_environment(1, {}) == {}


def _output(text: str) -> RequestOutput:
    completion = CompletionOutput(0, text, [5, 6], None, None, "length")
    return RequestOutput("r", None, [1, 2, 3], [completion], True, num_cached_tokens=16)


def test_wire_frames_round_trip_outputs_and_errors() -> None:
    async def run() -> list[Any]:
        reader = asyncio.StreamReader()
        error = InvalidRequestError("top_p must be in (0, 1]")
        error.param = "top_p"  # type: ignore[attr-defined]
        for message in (("out", "7", _output("héllo")), ("error", "7", portable_error(error))):
            reader.feed_data(encode(message))
        reader.feed_data(encode(("generate", "8", [1, 2], SamplingParams(n=2, stop=["x"]), 0, True))[:5])
        reader.feed_eof()
        received = [await read_message(reader), await read_message(reader)]
        with pytest.raises(asyncio.IncompleteReadError):
            await read_message(reader)
        return received

    (_, _, out), (_, _, error) = asyncio.run(run())
    assert out == _output("héllo")
    assert isinstance(error, InvalidRequestError) and error.param == "top_p"


def test_an_error_that_cannot_cross_becomes_an_ember_error() -> None:
    class Local(Exception):
        pass

    crossed = portable_error(Local("cannot be pickled from a local class"))
    assert type(crossed) is EmberError and "cannot be pickled" in str(crossed)


def test_frame_writer_sends_in_order_then_closes() -> None:
    async def run() -> list[Any]:
        server_messages: list[Any] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    server_messages.append(await read_message(reader))
            except asyncio.IncompleteReadError:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        frames = FrameWriter(writer)
        for i in range(100):
            frames.send(("abort", str(i)))
        await frames.close()
        await asyncio.sleep(0.1)
        server.close()
        return server_messages

    assert asyncio.run(run()) == [("abort", str(i)) for i in range(100)]


def _replica(index: int, stats: dict[str, float] | None, num_blocks: int, ready: bool = True) -> Any:
    return SimpleNamespace(
        index=index,
        ready=ready,
        num_restarts=index,
        num_routed_requests=10 + index,
        num_in_flight_sequences=index,
        num_matched_tokens=16 * index,
        info=SimpleNamespace(num_blocks=num_blocks),
        status=None if stats is None else SimpleNamespace(stats=stats),
    )


def test_totals_sum_counters_and_weigh_kv_usage_by_blocks() -> None:
    a = {"num_running": 2, "kv_cache_usage": 0.5, "prefix_cache_queries": 100, "prefix_cache_hits": 50}
    b = {"num_running": 1, "kv_cache_usage": 0.0, "prefix_cache_queries": 100, "prefix_cache_hits": 0}
    a |= {"num_spec_proposed_tokens": 10, "num_spec_accepted_tokens": 6, "num_spec_verify_steps": 3}
    b |= {"num_spec_proposed_tokens": 30, "num_spec_accepted_tokens": 4, "num_spec_verify_steps": 2}
    a |= {"spec_acceptance_rate": 0.6, "spec_mean_accepted_len": 2.0}
    b |= {"spec_acceptance_rate": 4 / 30, "spec_mean_accepted_len": 2.0}
    totals = engine_totals([_replica(0, a, 300), _replica(1, b, 100), _replica(2, None, 100)])
    assert totals["spec_acceptance_rate"] == pytest.approx(0.25) and totals["spec_mean_accepted_len"] == 2.0
    assert totals["num_running"] == 3 and totals["prefix_cache_hits"] == 50
    assert totals["kv_cache_usage"] == pytest.approx(0.375)
    assert totals["prefix_cache_hit_rate"] == pytest.approx(0.25)
    text = render_prometheus(totals, [a, b])
    assert "ember_num_requests_running 3\n" in text
    assert 'ember_num_requests_running{replica="0"} 2\n' in text and 'ember_kv_cache_usage_ratio{replica="1"} 0' in text
    lines = router_metric_lines([_replica(0, a, 300), _replica(1, b, 100, ready=False)], num_retries=4)
    assert 'ember_replica_up{replica="1"} 0' in lines and 'ember_replica_restarts_total{replica="1"} 1' in lines
    assert "ember_router_retries_total 4" in lines
