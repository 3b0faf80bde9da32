"""The Python API on the default model: prompt forms, ordering, limits, determinism, chat, streaming."""

from __future__ import annotations

from ember import CompletionOutput, Engine, RequestOutput, SamplingParams

from conftest import computed_every_prompt_token

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 4,"]


def _tokens(out: RequestOutput) -> list[int]:
    return out.outputs[0].token_ids


def test_generate_accepts_str_list_and_token_ids(engine: Engine) -> None:
    (single,) = engine.generate(PROMPTS[0], GREEDY, use_tqdm=False)
    listed = engine.generate([PROMPTS[0]], GREEDY, use_tqdm=False)[0]
    ids = engine.tokenizer.encode(PROMPTS[0], add_special_tokens=True)
    (from_ids,) = engine.generate(ids, GREEDY, use_tqdm=False)
    (from_id_lists,) = engine.generate([ids], GREEDY, use_tqdm=False)
    assert isinstance(single, RequestOutput) and isinstance(single.outputs[0], CompletionOutput)
    assert single.prompt == PROMPTS[0] and single.prompt_token_ids == ids
    assert from_ids.prompt is None and from_ids.prompt_token_ids == ids
    assert _tokens(single) == _tokens(listed) == _tokens(from_ids) == _tokens(from_id_lists)
    assert single.finished and len(_tokens(single)) > 0


def test_outputs_keep_input_order(uncached_engine: Engine) -> None:
    # Prefix caching off: each prompt alone is computed again, not read from the batch's KV cache.
    batch = uncached_engine.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert [o.prompt for o in batch] == PROMPTS
    for prompt, out in zip(PROMPTS, batch, strict=True):
        (alone,) = uncached_engine.generate(prompt, GREEDY, use_tqdm=False)
        assert computed_every_prompt_token([alone]) and _tokens(alone) == _tokens(out)
    assert len({o.request_id for o in batch}) == len(PROMPTS)


def test_per_prompt_sampling_params(engine: Engine) -> None:
    params = [SamplingParams(temperature=0.0, max_tokens=k, ignore_eos=True) for k in (1, 3, 5, 7)]
    outs = engine.generate(PROMPTS, params, use_tqdm=False)
    assert [len(_tokens(o)) for o in outs] == [1, 3, 5, 7]


def test_max_tokens_is_respected(engine: Engine) -> None:
    for out in engine.generate(PROMPTS, SamplingParams(temperature=0.8, seed=1, max_tokens=9), use_tqdm=False):
        completion = out.outputs[0]
        if completion.finish_reason == "length":
            assert len(completion.token_ids) == 9
        else:
            assert completion.finish_reason == "stop" and len(completion.token_ids) <= 9
    forced = engine.generate(PROMPTS[0], SamplingParams(max_tokens=9, ignore_eos=True), use_tqdm=False)[0]
    assert forced.outputs[0].finish_reason == "length" and len(forced.outputs[0].token_ids) == 9


def test_greedy_is_deterministic(engine: Engine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=24)
    first = engine.generate(PROMPTS, params, use_tqdm=False)
    second = engine.generate(PROMPTS, params, use_tqdm=False)
    assert [_tokens(o) for o in first] == [_tokens(o) for o in second]
    assert [o.outputs[0].text for o in first] == [o.outputs[0].text for o in second]


def test_seeded_sampling_is_reproducible(engine: Engine) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=16, ignore_eos=True)
    first = engine.generate(PROMPTS, params, use_tqdm=False)
    second = engine.generate(PROMPTS[::-1], params, use_tqdm=False)[::-1]
    assert [_tokens(o) for o in first] == [_tokens(o) for o in second]
    other_seed = engine.generate(
        PROMPTS, SamplingParams(temperature=1.0, seed=99, max_tokens=16, ignore_eos=True), use_tqdm=False
    )
    assert [_tokens(o) for o in other_seed] != [_tokens(o) for o in first]


def test_n_completions_are_merged_in_one_output(engine: Engine) -> None:
    (out,) = engine.generate(PROMPTS[2], SamplingParams(n=3, seed=7, max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 8 for c in out.outputs)
    (again,) = engine.generate(PROMPTS[2], SamplingParams(n=3, seed=7, max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]


def test_logprobs_are_returned_when_asked(engine: Engine) -> None:
    (out,) = engine.generate(PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=5, logprobs=3), use_tqdm=False)
    completion = out.outputs[0]
    assert completion.logprobs is not None and len(completion.logprobs) == len(completion.token_ids)
    for token_id, entry in zip(completion.token_ids, completion.logprobs, strict=True):
        assert token_id in entry and entry[token_id].rank == 1  # greedy picks the most likely token
        assert len(entry) >= 3 and all(lp.logprob <= 0.0 for lp in entry.values())
    assert completion.cumulative_logprob is not None
    assert (
        abs(
            completion.cumulative_logprob
            - sum(e[t].logprob for t, e in zip(completion.token_ids, completion.logprobs, strict=True))
        )
        < 1e-4
    )
    (plain,) = engine.generate(PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=5), use_tqdm=False)
    assert plain.outputs[0].logprobs is None


def test_stream_deltas_concatenate_to_the_full_text(engine: Engine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=20)
    (full,) = engine.generate(PROMPTS[1], params, use_tqdm=False)
    chunks = list(engine.generate_stream(PROMPTS[1], params))
    assert "".join(c.outputs[0].text for c in chunks) == full.outputs[0].text
    assert [t for c in chunks for t in c.outputs[0].token_ids] == full.outputs[0].token_ids
    assert chunks[-1].finished and chunks[-1].outputs[0].finish_reason == full.outputs[0].finish_reason
    assert not any(c.finished for c in chunks[:-1])


def test_chat_stream_matches_chat(engine: Engine) -> None:
    messages = [{"role": "user", "content": "Name a color."}]
    params = SamplingParams(temperature=0.0, max_tokens=16)
    (full,) = engine.chat(messages, params, use_tqdm=False)
    assert "".join(c.outputs[0].text for c in engine.chat_stream(messages, params)) == full.outputs[0].text


def test_closing_a_stream_early_aborts_it(engine: Engine) -> None:
    stream = engine.generate_stream(PROMPTS[2], SamplingParams(max_tokens=200, ignore_eos=True))
    next(stream)
    stream.close()
    assert engine.generate(PROMPTS[0], GREEDY, use_tqdm=False)[0].finished
    assert not engine._core.has_unfinished_requests()  # the closed stream's request was aborted


def test_tokenizer_round_trip(engine: Engine) -> None:
    tok = engine.tokenizer
    for text in [
        "Hello, world!",
        "naïve café — ünïcödé",
        "数学 and emoji 🎉",
        "  two  spaces\r\nand CRLF\t",
        "x = [i**2 for i in range(10)]",
    ]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert tok.vocab_size == 49152
    assert tok.token_to_id("<|im_start|>") is not None and tok.token_to_id("no such token here") is None
