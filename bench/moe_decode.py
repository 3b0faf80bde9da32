"""Mixture-of-experts decode on the CPU: Ember beside transformers on the same random float32 model.

A seeded random Qwen3-MoE (or Mixtral) built with transformers' own config class (default: hidden 512,
4 layers, 16 experts of width 512, top 4, vocabulary 4096), saved as a Hugging Face folder. Both run
float32 greedy decoding of `--new-tokens` tokens after a `--prompt-len`-token prompt, for each batch
size in `--batch-sizes` (distinct seeded prompts per sequence), with the same number of threads:
Ember through `Engine.generate` (experts grouped: each expert runs once per step on the rows routed to
it), transformers through `model.generate` (its KV cache, its own expert loop). Decode tok/s counts
generated tokens over the time after the first token of every sequence (prefill excluded: the first
token's time is measured by a 1-token run and subtracted). Greedy tokens of batch 1 are compared.

    python bench/moe_decode.py [--family qwen3_moe|mixtral] [--threads 2] [--batch-sizes 1 8] [--quick]

Prints a table and writes bench/out/moe_decode-<date>.json.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import common_parser, write_record

SIZES = {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
         "head_dim": 64, "vocab_size": 4096, "max_position_embeddings": 1024}  # fmt: skip


def build_model(family: str, folder: Path, seed: int, num_experts: int, top_k: int) -> Any:
    """Saves a seeded random MoE of `family` to `folder` (with a byte-level tokenizer) and returns it."""
    import sys

    import torch
    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import write_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    eos_id = write_tokenizer(folder)
    torch.manual_seed(seed)
    if family == "mixtral":
        config = transformers.MixtralConfig(
            **SIZES, intermediate_size=512, num_local_experts=num_experts, num_experts_per_tok=top_k,
            eos_token_id=eos_id, bos_token_id=None,
        )  # fmt: skip
        model = transformers.MixtralForCausalLM(config)
    else:
        config = transformers.Qwen3MoeConfig(**SIZES, intermediate_size=1024, moe_intermediate_size=512,
                                             num_experts=num_experts, num_experts_per_tok=top_k, norm_topk_prob=True,
                                             eos_token_id=eos_id, bos_token_id=None)  # fmt: skip
        model = transformers.Qwen3MoeForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                param.normal_(0.0, 0.5)  # a router that spreads tokens over the experts
    model = model.float().eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    return model


def time_ember(folder: Path, prompts: list[list[int]], new_tokens: int, threads: int) -> tuple[float, list[list[int]]]:
    """Decode seconds (all tokens minus the first) and the greedy tokens, on Ember."""
    from ember import Engine, SamplingParams

    engine = Engine(str(folder), dtype="float32", num_threads=threads, max_num_seqs=len(prompts),
                    enable_prefix_caching=False, kv_cache_memory_bytes=256 << 20)  # fmt: skip
    engine.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True), use_tqdm=False)

    def run(n: int) -> tuple[float, list[list[int]]]:
        params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        start = time.perf_counter()
        outs = engine.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start, [o.outputs[0].token_ids for o in outs]

    first_s, _ = run(1)
    total_s, tokens = run(new_tokens)
    return total_s - first_s, tokens


def time_transformers(
    model: Any, prompts: list[list[int]], new_tokens: int, threads: int
) -> tuple[float, list[list[int]]]:
    """Decode seconds (all tokens minus the first) and the greedy tokens, on transformers."""
    import torch

    torch.set_num_threads(threads)
    ids = torch.tensor(prompts)

    def run(n: int) -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=0)  # fmt: skip
        return time.perf_counter() - start, out[:, ids.shape[1] :].tolist()

    run(2)
    first_s, _ = run(1)
    total_s, tokens = run(new_tokens)
    return total_s - first_s, tokens


def main() -> None:
    """Builds the model, times both engines per batch size, prints the table, writes the JSON result."""
    parser = common_parser(__doc__, threads_help="CPU threads for both (default: 2)", quick_help="16 tokens, batch 1")
    parser.add_argument("--family", choices=["qwen3_moe", "mixtral"], default="qwen3_moe")
    parser.add_argument("--experts", type=int, default=16, help="experts per layer (default: 16)")
    parser.add_argument("--top-k", type=int, default=4, help="experts per token (default: 4)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    import torch
    import transformers
    from tqdm import tqdm

    import ember

    new_tokens = 16 if args.quick else args.new_tokens
    batch_sizes = [1] if args.quick else args.batch_sizes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "moe"
        model = build_model(args.family, folder, args.seed, args.experts, args.top_k)
        rng = random.Random(args.seed)
        for batch in tqdm(batch_sizes, desc="batch size"):
            prompts = [[rng.randrange(3, 259) for _ in range(args.prompt_len)] for _ in range(batch)]
            ours_s, ours = time_ember(folder, prompts, new_tokens, args.threads)
            ref_s, ref = time_transformers(model, prompts, new_tokens, args.threads)
            decoded = batch * (new_tokens - 1)
            rows.append({
                "batch": batch,
                "ember_decode_tok_s": decoded / ours_s,
                "transformers_decode_tok_s": decoded / ref_s,
                "ratio": ref_s / ours_s,
                "greedy_tokens_equal": ours == ref,
            })  # fmt: skip
    print(f"\n{args.family}: {args.experts} experts, top {args.top_k}, float32, {args.threads} threads")
    print(f"{'batch':>5} | {'Ember tok/s':>11} | {'transformers tok/s':>18} | {'ratio':>6} | tokens equal")
    for r in rows:
        print(f"{r['batch']:>5} | {r['ember_decode_tok_s']:>11.1f} | {r['transformers_decode_tok_s']:>18.1f} | "
              f"{r['ratio']:>5.2f}x | {r['greedy_tokens_equal']}")  # fmt: skip
    fields = {"family": args.family, "num_experts": args.experts, "top_k": args.top_k, "threads": args.threads,
              "prompt_len": args.prompt_len, "new_tokens": new_tokens, "sizes": SIZES, "seed": args.seed,
              "rows": rows}  # fmt: skip
    versions = {"ember": ember.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
    write_record(args.out, "moe_decode", fields, versions)


if __name__ == "__main__":
    main()
