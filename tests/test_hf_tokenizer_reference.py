"""Hugging Face `tokenizer.json` loading against the `tokenizers` library, on hostile strings.

Each vocabulary is trained here by `tokenizers`' own BPE trainer on a corpus of the Python
standard library's docstrings plus multilingual sentences, then saved in the layout real
models ship: GPT-2 style byte-level BPE; Llama 3 style (a Split regex before ByteLevel,
`ignore_merges`); Qwen2/Qwen3 style (NFC, then a Split regex with single digits before
ByteLevel); Llama 2 style SentencePiece BPE with byte fallback (Prepend + Replace normalizer;
also Mistral's, Mixtral's and Phi-3's layout); Gemma's (Replace without Prepend); and the
Metaspace pre-tokenizer forms (prepend schemes "first" and "always"). Ember loads each
through a tiny model folder, exactly as a user's model, and must produce the same ids as
`tokenizers` and decode them back to the same text.
"""

# The multilingual and hostile strings are meant to hold look-alike characters.
# ruff: noqa: RUF001

from __future__ import annotations

import importlib
import json
from typing import Any

import pytest

from ember import Engine

from references import require
from tiny_models import VARIANTS, write_model

STDLIB_MODULES = ["argparse", "asyncio", "collections", "datetime", "email", "functools", "http", "inspect",
                  "itertools", "json", "logging", "os", "pathlib", "re", "socket", "string", "subprocess",
                  "textwrap", "threading", "unittest", "urllib", "zipfile"]  # fmt: skip
MULTILINGUAL = [
    "Le café est déjà prêt ; voulez-vous du thé ou de l'eau ?",
    "Über die Brücke gehen Fußgänger, während Straßenbahnen fahren.",
    "El niño comió paella y después bebió una horchata fría.",
    "Москва — столица России, а Киев — столица Украины.",
    "東京は日本の首都で、多くの人が電車で通勤しています。",
    "北京是中国的首都，上海是最大的城市。我们明天去公园散步。",
    "서울은 대한민국의 수도이며 한강이 도시를 가로지릅니다.",
    "القاهرة هي عاصمة مصر وأكبر مدنها.",
    "नई दिल्ली भारत की राजधानी है।",
    "Ελλάδα, Αθήνα: η δημοκρατία γεννήθηκε εδώ.",
    "def mean(xs: list[float]) -> float:\n    return sum(xs) / len(xs)  # average\n",
    "Emoji: 🎉 🚀 👍🏽 ❤️ 🇫🇷",
]
HOSTILE = [
    "",
    " ",
    "   ",
    "\t\t\n\n\r\n",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "many      spaces    between    words",
    "line one\r\nline two\rline three\n",
    "tabs\tinside\t\ttext",
    "naïve café — déjà vu, Ångström, façade",
    "decomposed: e\u0301 a\u0300 o\u0308 and stacked a\u0301\u0302\u0303",
    "日本語のテキストと中文文本, 한국어 문장, ภาษาไทยไม่มีช่องว่าง",
    "rare CJK outside the vocab: 𠀀𪚥𫝀 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏿 skin tone, 🇯🇵 regional indicators",
    "zero\u200bwidth\u200cjoiners\u200dand\ufeffBOM",
    "no-break\u00a0space and ideographic\u3000space",
    "control \x00 \x07 \x1b[31m bytes \x7f",
    "the meta symbol ▁ itself, and ▁▁ twice",
    "<s> </s> <unk> <|endoftext|> <|im_start|>user\nhi<|im_end|>",
    "<|im_start|>partial <|im_sta and </ s>",
    "it's we'll they've I'M she'D You'Re",
    "1234567890 3.14159 1e-10 0x1F 007 ½ ² ٣",
    "x" * 300,
    "aaaa bbbb " * 40,
    "def f(x):\n    if x:\n\t\treturn x ** 2  # mixed\n",
    "<0x41> looks like a byte token",
    "Ünïcödé ÜBER and über, İstanbul, straße",
    "\u202eright-to-left override\u202c and אבג",
    "\ufffd replacement char and private use \ue000",
]
VOCAB_SIZE = 3000
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SPM_SPECIAL = ["<unk>", "<s>", "</s>"]
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def _corpus() -> list[str]:
    """Docstrings of standard-library modules and their public callables, plus the sentences above."""
    texts = list(MULTILINGUAL) * 20
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        objects = [module] + [obj for key, obj in sorted(vars(module).items()) if not key.startswith("_")]
        texts.extend(doc for obj in objects if isinstance(doc := getattr(obj, "__doc__", None), str))
    return texts


def _byte_level(split_regex: str | None, nfc: bool = False) -> Any:
    """GPT-2 style byte-level BPE, or with a Split regex before ByteLevel (Llama 3's, with
    `ignore_merges`; Qwen2's, after an NFC normalizer)."""
    tk = require("tokenizers")
    tokenizer = tk.Tokenizer(tk.models.BPE(ignore_merges=split_regex == LLAMA3_SPLIT))
    if nfc:
        tokenizer.normalizer = tk.normalizers.NFC()
    if split_regex:
        tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence([
            tk.pre_tokenizers.Split(tk.Regex(split_regex), behavior="isolated"),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])  # fmt: skip
    else:
        tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL, show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator(_corpus(), trainer)
    return tokenizer, {"bos_token": None, "eos_token": "<|endoftext|>", "add_bos_token": False}


def _sentencepiece(prepend_scheme: str | None, prepend: bool = True) -> Any:
    """SentencePiece-style BPE with byte fallback: Llama 2's layout (Prepend + Replace normalizer,
    no pre-tokenizer) when `prepend_scheme` is None (Gemma's without the Prepend when not
    `prepend`), else the Metaspace pre-tokenizer form with that scheme ("first" unsplit,
    "always" split on `▁`); `<s>` added by the post-processor."""
    tk = require("tokenizers")
    trainer_tok = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = tk.pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    trainer = tk.trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPM_SPECIAL, show_progress=False)
    trainer_tok.train_from_iterator(_corpus(), trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    # Llama's vocabulary order: the special tokens, the 256 byte-fallback tokens, then the pieces.
    vocab = {token: i for i, token in enumerate(SPM_SPECIAL)}
    vocab.update({f"<0x{b:02X}>": len(SPM_SPECIAL) + b for b in range(256)})
    for token in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                                           fuse_unk=True))  # fmt: skip
    if prepend_scheme:
        split = prepend_scheme == "always"
        tokenizer.pre_tokenizer = tk.pre_tokenizers.Metaspace(prepend_scheme=prepend_scheme, split=split)
        tokenizer.decoder = tk.decoders.Sequence([tk.decoders.Metaspace(prepend_scheme=prepend_scheme, split=split),
                                                  tk.decoders.ByteFallback(), tk.decoders.Fuse()])  # fmt: skip
    elif prepend:
        tokenizer.normalizer = tk.normalizers.Sequence([tk.normalizers.Prepend("▁"),
                                                        tk.normalizers.Replace(" ", "▁")])  # fmt: skip
        tokenizer.decoder = tk.decoders.Sequence([tk.decoders.Replace("▁", " "), tk.decoders.ByteFallback(),
                                                  tk.decoders.Fuse(), tk.decoders.Strip(" ", 1, 0)])  # fmt: skip
    else:
        tokenizer.normalizer = tk.normalizers.Replace(" ", "▁")
        tokenizer.decoder = tk.decoders.Sequence([tk.decoders.Replace("▁", " "), tk.decoders.ByteFallback(),
                                                  tk.decoders.Fuse()])  # fmt: skip
    tokenizer.add_special_tokens(SPM_SPECIAL)
    tokenizer.post_processor = tk.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}


LAYOUTS = {
    "gpt2-byte-level": lambda: _byte_level(split_regex=None),
    "llama3-split-byte-level": lambda: _byte_level(split_regex=LLAMA3_SPLIT),
    "qwen2-nfc-split-byte-level": lambda: _byte_level(split_regex=QWEN2_SPLIT, nfc=True),
    "llama2-sentencepiece": lambda: _sentencepiece(prepend_scheme=None),
    "gemma-sentencepiece": lambda: _sentencepiece(prepend_scheme=None, prepend=False),
    "metaspace-first-sentencepiece": lambda: _sentencepiece(prepend_scheme="first"),
    "metaspace-always-sentencepiece": lambda: _sentencepiece(prepend_scheme="always"),
}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Engine]:
    """(the `tokenizers` tokenizer, an Ember engine whose model folder ships it)."""
    require("torch")
    require("transformers")
    reference, config = LAYOUTS[request.param]()
    folder = tmp_path_factory.mktemp(request.param)
    write_model(VARIANTS[0], folder, sizes={"vocab_size": reference.get_vocab_size()})
    reference.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **config}))
    return reference, Engine(str(folder), dtype="float32", kv_cache_memory_bytes=4 << 20, max_model_len=256)


def test_vocabulary_is_realistic(pair: tuple[Any, Engine]) -> None:
    reference, engine = pair
    assert reference.get_vocab_size() >= VOCAB_SIZE - 10
    assert engine.tokenizer.vocab_size == reference.get_vocab_size()
    ids = reference.encode(MULTILINGUAL[0] + " " + MULTILINGUAL[10], add_special_tokens=False).ids
    assert len(ids) < len(MULTILINGUAL[0] + MULTILINGUAL[10]) / 2, "the trainer learned few merges"


@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_ids_equal_tokenizers(pair: tuple[Any, Engine], add_special_tokens: bool) -> None:
    reference, engine = pair
    mismatches = []
    for text in HOSTILE + MULTILINGUAL:
        expected = reference.encode(text, add_special_tokens=add_special_tokens).ids
        ours = engine.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        if ours != expected:
            mismatches.append(f"{text!r}:\n  ours       {ours}\n  tokenizers {expected}")
    assert not mismatches, "\n".join(mismatches)


def test_decode_equals_tokenizers(pair: tuple[Any, Engine]) -> None:
    reference, engine = pair
    mismatches = []
    for text in HOSTILE + MULTILINGUAL:
        ids = reference.encode(text, add_special_tokens=True).ids
        for skip in (False, True):
            expected = reference.decode(ids, skip_special_tokens=skip)
            ours = engine.tokenizer.decode(ids, skip_special_tokens=skip)
            if ours != expected:
                mismatches.append(f"{text!r} (skip_special_tokens={skip}):\n  ours       {ours!r}\n"
                                  f"  tokenizers {expected!r}")  # fmt: skip
    assert not mismatches, "\n".join(mismatches)
