"""The `ember` command: generate or chat from the terminal (streaming tokens as they come), or serve the OpenAI API."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Iterator, Sequence

from ember._cli_options import add_device_options, device_kwargs
from ember._core import EmberError, __version__
from ember.benchmark import serve_options
from ember.engine import Engine
from ember.models import DEFAULT_MODEL, KNOWN_MODELS
from ember.outputs import RequestOutput
from ember.sampling_params import SamplingParams
from ember.server import cli as server_cli


def _common_options() -> argparse.ArgumentParser:
    """The options shared by every subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a GGUF file, a Hugging Face model folder, or a known name ({', '.join(KNOWN_MODELS)}); "
        "default: %(default)s, downloaded on first use",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature; the default 0.0 is greedy decoding, so output is reproducible",
    )
    p.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling probability mass, in (0, 1] (default: 1.0, off)"
    )
    p.add_argument("--top-k", type=int, default=0, help="sample only from the k most likely tokens (default: 0, off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling (default: none)")
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="longest sequence, prompt plus output, in tokens (default: the model's context length)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the engine (default: all cores)")
    add_device_options(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `ember` command."""
    parser = argparse.ArgumentParser(
        prog="ember",
        description="Run an LLM with Ember. Output streams to stdout; progress and errors go to stderr.",
        epilog="Run `ember COMMAND --help` for the options of a command (model, sampling, limits, threads).",
    )
    parser.add_argument("--version", action="version", version=f"ember {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options()
    gen = sub.add_parser(
        "generate", parents=[common], help="continue a text prompt", description="Continue a text prompt."
    )
    gen.add_argument("prompt", metavar="PROMPT", help="the text to continue")
    gen.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate (default: %(default)s)")
    chat = sub.add_parser(
        "chat",
        parents=[common],
        help="answer one user message with the model's chat template",
        description="Answer one user message, rendered with the model's chat template.",
    )
    chat.add_argument("message", metavar="MESSAGE", help="the user's message")
    chat.add_argument(
        "--system",
        default=None,
        help="a system message to send before MESSAGE (default: none, so the chat template's own default applies)",
    )
    chat.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default: %(default)s)")
    serve = sub.add_parser(
        "serve",
        help="run an OpenAI-compatible HTTP server",
        description="Serve a model over the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models), "
        "with /health and Prometheus /metrics.",
    )
    server_cli.add_arguments(serve)
    bench = sub.add_parser("bench", help="run a benchmark", description="Run a benchmark.")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    bench_serve = bench_sub.add_parser(
        "serve",
        help="load-test a running OpenAI-compatible server",
        description="Load-test a running OpenAI-compatible server: TTFT, TPOT, ITL and E2E percentiles, throughput.",
    )
    serve_options.add_arguments(bench_serve)
    return parser


def _print_stream(chunks: Iterator[RequestOutput]) -> None:
    """Writes each text delta to stdout as it arrives, then a newline."""
    for chunk in chunks:
        for completion in chunk.outputs:
            sys.stdout.write(completion.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> None:
    """Loads the model and runs the chosen subcommand."""
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    print(f"ember: loading {args.model}...", file=sys.stderr, flush=True)
    engine = Engine(args.model, max_model_len=args.max_model_len, num_threads=args.threads, **device_kwargs(args))
    if args.command == "chat":
        system = [{"role": "system", "content": args.system}] if args.system else []
        _print_stream(engine.chat_stream([*system, {"role": "user", "content": args.message}], params))
    else:
        _print_stream(engine.generate_stream(args.prompt, params))


# The `serve` extra (`pip install 'ember[serve]'`): the web stack of `ember serve` and `ember bench`.
SERVE_MODULES = ("fastapi", "uvicorn", "httpx")


def missing_serve_modules() -> list[str]:
    """The modules of the `serve` extra that are not installed."""
    return [name for name in SERVE_MODULES if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ember` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command in ("serve", "bench") and (missing := missing_serve_modules()):
        print(
            f"ember: error: `ember {args.command}` needs the web dependencies of the serve extra "
            f"(missing: {', '.join(missing)}): pip install 'ember[serve]'",
            file=sys.stderr,
        )
        return 1
    try:
        if args.command == "serve":
            return server_cli.run(args)
        if args.command == "bench":
            # Imported here so that the other commands start without loading the HTTP client.
            from ember.benchmark.serve import run as run_serve_benchmark

            return run_serve_benchmark(args)
        run(args)
    except EmberError as e:
        print(f"ember: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ember: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
