"""What releasing KV blocks outside a sliding window saves: peak blocks held by one long sequence.

A seeded random Mistral built with transformers (hidden 256, 2 layers, 4 KV heads of 64), saved twice:
with `sliding_window` = `--window` (every layer slides, so blocks wholly before the window are released
as the sequence grows) and without it (full attention keeps every block). Each generates one sequence of
`--prompt-len` + `--new-tokens` tokens, streamed; after every streamed step the KV-cache usage is read,
and its peak (in 16-token blocks) is reported with the blocks released and the decode speed.

    python bench/sliding_window_kv.py [--window 256] [--prompt-len 512] [--new-tokens 1536] [--quick]

Prints a table and writes bench/out/sliding_window_kv-<date>.json.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from _common import common_parser, write_record

BLOCK_SIZE = 16


def build(folder: Path, window: int | None, seed: int) -> None:
    """Saves the seeded random Mistral to `folder`, with `window` (or none)."""
    import sys

    import torch
    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import write_tokenizer

    folder.mkdir(parents=True)
    eos_id = write_tokenizer(folder)
    torch.manual_seed(seed)
    config = transformers.MistralConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, head_dim=64, vocab_size=300,
                                        max_position_embeddings=8192, sliding_window=window, eos_token_id=eos_id,
                                        bos_token_id=None)  # fmt: skip
    transformers.MistralForCausalLM(config).float().eval().save_pretrained(str(folder), safe_serialization=True)
    assert json.loads((folder / "config.json").read_text()).get("sliding_window") == window


def run(folder: Path, prompt: list[int], new_tokens: int, threads: int) -> dict[str, float]:
    """Peak blocks held, blocks released and decode tok/s of one streamed sequence."""
    from ember import Engine, SamplingParams

    engine = Engine(str(folder), dtype="float32", num_threads=threads, block_size=BLOCK_SIZE,
                    max_model_len=len(prompt) + new_tokens, kv_cache_memory_bytes=256 << 20)  # fmt: skip
    num_blocks = engine._core.num_blocks
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    peak_usage, start, first_s = 0.0, time.perf_counter(), None
    for _ in engine.generate_stream(prompt, params):
        first_s = first_s or time.perf_counter() - start
        peak_usage = max(peak_usage, engine.stats()["kv_cache_usage"])
    total_s = time.perf_counter() - start
    stats = engine.stats()
    return {
        "peak_blocks_held": round(peak_usage * num_blocks),
        "window_freed_blocks": stats["num_window_freed_blocks"],
        "decode_tok_s": (new_tokens - 1) / (total_s - first_s),
    }


def main() -> None:
    """Builds both models, runs each, prints the table, writes the JSON result."""
    parser = common_parser(__doc__, threads_help="CPU threads (default: 2)", quick_help="a 256 + 256-token sequence")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=1536)
    args = parser.parse_args()
    import transformers
    from tqdm import tqdm

    import ember

    prompt_len, new_tokens = (256, 256) if args.quick else (args.prompt_len, args.new_tokens)
    prompt = [random.Random(args.seed).randrange(3, 259) for _ in range(prompt_len)]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, window in tqdm([("window", args.window), ("full", None)], desc="model"):
            build(Path(tmp) / name, window, args.seed)
            rows[name] = run(Path(tmp) / name, prompt, new_tokens, args.threads)
    length = prompt_len + new_tokens
    print(f"\none sequence of {length} tokens ({prompt_len} prompt), blocks of {BLOCK_SIZE}, window {args.window}")
    print(f"{'attention':>9} | {'peak blocks held':>16} | {'blocks released':>15} | {'decode tok/s':>12}")
    for name, r in rows.items():
        print(
            f"{name:>9} | {r['peak_blocks_held']:>16} | {r['window_freed_blocks']:>15.0f} | {r['decode_tok_s']:>12.1f}"
        )
    saving = 1 - rows["window"]["peak_blocks_held"] / max(rows["full"]["peak_blocks_held"], 1)
    print(f"peak KV memory saved by releasing blocks outside the window: {saving:.0%}")
    fields = {"window": args.window, "prompt_len": prompt_len, "new_tokens": new_tokens, "block_size": BLOCK_SIZE,
              "threads": args.threads, "seed": args.seed, "rows": rows, "peak_saving": saving}  # fmt: skip
    write_record(
        args.out, "sliding_window_kv", fields, {"ember": ember.__version__, "transformers": transformers.__version__}
    )


if __name__ == "__main__":
    main()
