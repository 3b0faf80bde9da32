"""How far Ember's default arithmetic (8-bit activations) sits from float32, beside llama.cpp's, on
the llama.cpp-quantized files of tests/test_kquants.py, and how much that comparison moves under
harmless perturbations (the noise a quality bound must allow for).

For each file (tests/quantized_models.py FTYPES) and each text, teacher-forced logits of:
- the exact path (Ember, dtype float32, float32 KV cache) — the reference;
- Ember's default arithmetic with its default float16 KV cache, and with a float32 KV cache;
- llama.cpp (llama-cpp-python) with its default f16 KV cache, and with an f32 KV cache.
Texts: NATURAL_TEXT (tests/test_llamacpp_reference.py) and `--windows` consecutive windows of
`--window` tokens of the seeded long text (tests/logit_metrics.py: standard library docstrings).

Prints, per file, the mean KL to float32 of each run on each text and over all positions, and the
ratios Ember / llama.cpp; the spread of llama.cpp's own KL between its two KV types and of the
ratio between texts is the noise floor of the comparison.

    python bench/kquant_kl.py [--windows 4] [--window 512] [--files IQ4_NL ...] [--threads 2] [--quick]

Writes bench/out/kquant_kl-<date>.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from _common import common_parser, cpu_model, write_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from logit_metrics import faithfulness, long_text
from quantized_models import FTYPES, quantized_gguf
from test_llamacpp_reference import NATURAL_TEXT

#: ggml's type ids for the llama.cpp KV cache runs.
GGML_F32, GGML_F16 = 0, 1


def texts(tokenizer, num_windows: int, window_len: int) -> dict[str, list[int]]:
    """name -> token ids: NATURAL_TEXT, then `num_windows` consecutive windows of the long text."""
    out = {"natural": tokenizer.encode(NATURAL_TEXT, add_special_tokens=True)}
    ids = tokenizer.encode(long_text(), add_special_tokens=True)
    for k in range(num_windows):
        out[f"long{k}"] = ids[k * window_len : (k + 1) * window_len]
    return out


def main() -> None:
    """Runs every file, prints the table, writes the JSON result."""
    parser = common_parser(__doc__, threads_help="CPU threads (default: 2)", quick_help="one window, two files")
    parser.add_argument("--windows", type=int, default=4, help="windows of the long text (default: 4)")
    parser.add_argument("--window", type=int, default=512, help="tokens per window (default: 512)")
    parser.add_argument("--files", nargs="+", choices=list(FTYPES), default=list(FTYPES), help="files (default: all)")
    args = parser.parse_args()
    import llama_cpp
    from tqdm import tqdm

    import ember
    from ember import Engine
    from ember.models import resolve_model

    source = Path(resolve_model(args.model))
    names = args.files[-2:] if args.quick else args.files
    num_windows = 1 if args.quick else args.windows
    max_len = max(args.window, 1024)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for name in tqdm(names, desc="files"):
        path = quantized_gguf(source, name)
        runs: dict[str, dict[str, np.ndarray]] = {}
        for run, dtype, kv in [("exact", "float32", "float32"), ("ember", "auto", "float16"),
                               ("ember_kv32", "auto", "float32")]:  # fmt: skip
            engine = Engine(str(path), dtype=dtype, kv_cache_dtype=kv, num_threads=args.threads,
                            max_model_len=max_len, kv_cache_memory_bytes=128 << 20)  # fmt: skip
            token_texts = texts(engine.tokenizer, num_windows, args.window)
            runs[run] = {t: np.asarray(engine.score(ids), np.float32) for t, ids in token_texts.items()}
            del engine
        for run, kv_type in [("llama", GGML_F16), ("llama_kv32", GGML_F32)]:
            llm = llama_cpp.Llama(str(path), n_ctx=max_len, n_threads=args.threads, logits_all=True,
                                  type_k=kv_type, type_v=kv_type, verbose=False)  # fmt: skip
            runs[run] = {}
            for t, ids in token_texts.items():
                llm.reset()
                llm.eval(ids)
                runs[run][t] = np.array(llm.scores[: len(ids)], np.float32)  # a copy: the next eval reuses the buffer
            del llm
        rows[name] = {}
        for t in [*token_texts, "all"]:
            pick = list(token_texts) if t == "all" else [t]
            exact = np.concatenate([runs["exact"][u] for u in pick])
            kl = {run: faithfulness(np.concatenate([runs[run][u] for u in pick]), exact)[0]
                  for run in ["ember", "ember_kv32", "llama", "llama_kv32"]}  # fmt: skip
            rows[name][t] = {**kl, "positions": len(exact)}
    print(f"\n{source}, {args.threads} threads, {cpu_model()}; mean KL to Ember float32 (exact)")
    print(f"{'file':<11}{'text':<9}{'pos':>6}{'ember':>10}{'ember kv32':>11}{'llama':>10}{'llama kv32':>11}"
          f"{'ratio':>7}{'r kv32':>7}{'llama f32/f16':>14}")  # fmt: skip
    for name, by_text in rows.items():
        for t, r in by_text.items():
            print(f"{name:<11}{t:<9}{r['positions']:>6}{r['ember']:>10.2e}{r['ember_kv32']:>11.2e}{r['llama']:>10.2e}"
                  f"{r['llama_kv32']:>11.2e}{r['ember'] / r['llama']:>7.3f}{r['ember_kv32'] / r['llama_kv32']:>7.3f}"
                  f"{r['llama_kv32'] / r['llama']:>14.3f}")  # fmt: skip
    write_record(
        args.out,
        "kquant_kl",
        {"threads": args.threads, "model": str(source), "window": args.window, "kl": rows},
        {"ember": ember.__version__, "llama_cpp": llama_cpp.__version__},
    )


if __name__ == "__main__":
    main()
