"""CPU the engine burns while it has nothing to do: the spinning kernel helpers must park.

For 1 and 2 (or --threads) CPU threads: builds an `Engine` and an `AsyncEngine` on the default
model, runs one short greedy request to start every worker, then sleeps `--idle-s` seconds and
reports the process's CPU time over that wall time (all threads; 100% = one busy core).

    python bench/idle_cpu.py [--model PATH] [--threads 2] [--idle-s 5]

Prints a table and writes bench/out/idle_cpu-<date>.json.
"""

from __future__ import annotations

import asyncio
import resource
import time

from _common import common_parser, cpu_model, write_record

PROMPT = "The capital of France is"


def cpu_s() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def idle_percent(idle_s: float) -> float:
    """CPU use of the process while the caller sleeps `idle_s` seconds, in percent of one core."""
    c0, t0 = cpu_s(), time.perf_counter()
    time.sleep(idle_s)
    return 100.0 * (cpu_s() - c0) / (time.perf_counter() - t0)


def main() -> None:
    """Measures, prints the table, writes the JSON result."""
    parser = common_parser(__doc__, threads_help="largest thread count (default: 2)", quick_help="1 s idle")
    parser.add_argument("--idle-s", type=float, default=5.0, help="idle seconds measured (default: 5)")
    args = parser.parse_args()
    idle_s = 1.0 if args.quick else args.idle_s

    import ember
    from ember import AsyncEngine, Engine, SamplingParams
    from ember.models import resolve_model

    model = resolve_model(args.model)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    results = {}
    for threads in sorted({1, args.threads}):
        engine = Engine(model, num_threads=threads, kv_cache_memory_bytes=64 << 20, max_model_len=512)
        engine.generate(PROMPT, params, use_tqdm=False)
        results[f"Engine, {threads} threads"] = idle_percent(idle_s)
        del engine

        async def run_async(threads: int = threads) -> float:
            async with AsyncEngine(
                model, num_threads=threads, kv_cache_memory_bytes=64 << 20, max_model_len=512
            ) as eng:
                async for _ in eng.generate(PROMPT, params):
                    pass
                c0, t0 = cpu_s(), time.perf_counter()
                await asyncio.sleep(idle_s)
                return 100.0 * (cpu_s() - c0) / (time.perf_counter() - t0)

        results[f"AsyncEngine, {threads} threads"] = asyncio.run(run_async())
    print(f"\n{model}, idle {idle_s:.1f} s after one request, {cpu_model()}")
    print(f"{'engine':<28}{'idle CPU (% of a core)':>24}")
    for name, value in results.items():
        print(f"{name:<28}{value:>24.2f}")
    write_record(args.out, "idle_cpu", {"model": str(model), "idle_s": idle_s, "idle_cpu_percent": results},
                 {"ember": ember.__version__})  # fmt: skip


if __name__ == "__main__":
    main()
