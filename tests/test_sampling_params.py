"""SamplingParams: vLLM defaults, normalization, and validation errors that name the field."""

from __future__ import annotations

import pytest

from ember import EmberError, Engine, InvalidRequestError, SamplingParams


def test_defaults_follow_vllm() -> None:
    p = SamplingParams()
    assert (p.n, p.max_tokens, p.min_tokens, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 16, 0, 1.0, 1.0, 0, 0.0)
    assert p.seed is None and p.stop is None and p.stop_token_ids is None and p.logprobs is None
    assert p.ignore_eos is False and p.skip_special_tokens is True


def test_stop_string_becomes_list_and_to_dict_has_every_field() -> None:
    p = SamplingParams(stop="\n", stop_token_ids=(5, 6))
    assert p.stop == ["\n"] and p.stop_token_ids == [5, 6]
    d = p.to_dict()
    assert d["stop"] == ["\n"] and d["max_tokens"] == 16
    assert set(d) == {
        "n", "max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
        "stop", "stop_token_ids", "ignore_eos", "logprobs", "skip_special_tokens",
        "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "prompt_logprobs",
        "include_stop_str_in_output", "detokenize", "structured_outputs",
    }  # fmt: skip


def test_children_of_seeded_request_get_consecutive_seeds() -> None:
    p = SamplingParams(n=3, seed=10)
    assert [p.for_child(i).seed for i in range(3)] == [10, 11, 12]
    assert all(p.for_child(i).n == 1 for i in range(3))
    assert SamplingParams(n=2).for_child(1).seed is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -1.0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -2),
        ("n", 0),
        ("max_tokens", 0),
        ("logprobs", 21),
        ("prompt_logprobs", 21),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -2.01),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("logit_bias", {5: 100.5}),
        ("logit_bias", {-3: 1.0}),
    ],
)
def test_out_of_range_value_names_the_field(field: str, value: float) -> None:
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**{field: value})
    assert field in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, EmberError)


def test_new_fields_have_vllm_defaults() -> None:
    p = SamplingParams()
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert p.logit_bias is None and p.prompt_logprobs is None
    assert p.include_stop_str_in_output is False and p.detokenize is True


def test_stop_needs_detokenize() -> None:
    with pytest.raises(InvalidRequestError, match=r"stop.*detokenize"):
        SamplingParams(stop=["x"], detokenize=False)
    SamplingParams(stop_token_ids=[2], detokenize=False)


def test_only_the_first_child_computes_prompt_logprobs() -> None:
    p = SamplingParams(n=2, prompt_logprobs=1)
    assert p.for_child(0).prompt_logprobs == 1 and p.for_child(1).prompt_logprobs is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"presence_penalty": -2.0},
        {"frequency_penalty": 2.0},
        {"repetition_penalty": 0.01},
        {"logit_bias": {0: -100, "12": 100}},
        {"prompt_logprobs": 20},
    ],
)
def test_penalty_boundaries_are_accepted(kwargs: dict[str, object]) -> None:
    SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"temperature": 0.0}, {"top_k": -1}, {"top_p": 1.0}, {"logprobs": 20}, {"logprobs": 0}]
)
def test_boundary_values_are_accepted(kwargs: dict[str, float]) -> None:
    SamplingParams(**kwargs)


def test_params_are_frozen_comparable_and_survive_pickle_and_copy() -> None:
    import copy
    import pickle

    p = SamplingParams(temperature=0.7, top_p=0.9, stop=["x"], logit_bias={"3": 2.5}, seed=4, n=2)
    with pytest.raises(AttributeError):
        p.temperature = 0.1  # type: ignore[misc]
    # Floats read back as written (the engine keeps f32), ids as ints.
    assert (p.temperature, p.top_p, p.logit_bias) == (0.7, 0.9, {3: 2.5})
    assert p == SamplingParams(**p.to_dict()) and p != SamplingParams(temperature=0.7)
    assert pickle.loads(pickle.dumps(p)) == p and copy.deepcopy(p) == p and copy.copy(p) == p
    assert "temperature=0.7" in repr(p) and repr(p).startswith("SamplingParams(")
    child = p.for_child(1)
    assert (child.n, child.seed, child.stop, child.temperature) == (1, 5, ["x"], 0.7)


def test_unknown_fields_and_wrong_types_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        SamplingParams(temprature=0.5)  # type: ignore[call-arg]
    with pytest.raises(InvalidRequestError, match="temperature must be a number, got str"):
        SamplingParams(temperature="hot")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="max_tokens must be at least 1, got -3"):
        SamplingParams(max_tokens=-3)
    # None is the default for every field, and unsets the optional ones.
    assert SamplingParams(n=None, max_tokens=None).max_tokens is None  # type: ignore[arg-type]
    assert SamplingParams(n=None).n == 1  # type: ignore[arg-type]


def test_params_cannot_be_changed_and_a_changed_copy_is_validated_again() -> None:
    params = SamplingParams(max_tokens=4, stop=["x"])
    with pytest.raises(AttributeError):
        params.n = -1  # type: ignore[misc]
    with pytest.raises(AttributeError):  # not even by going around the class's own setattr
        object.__setattr__(params, "n", -1)
    assert params.n == 1
    with pytest.raises(InvalidRequestError, match="temperature") as info:
        SamplingParams(**{**params.to_dict(), "n": 1, "temperature": -1.0})
    assert info.value.param == "temperature"


def test_the_engine_takes_only_sampling_params(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match=r"params must be an ember\.SamplingParams, got dict") as info:
        engine._core.add_request("r", [1, 2], {"n": -1})  # type: ignore[arg-type]
    assert info.value.param == "params"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 129}, "n must be in \\[1, 128\\], got 129"),
        ({"n": True}, "n must be an integer, got bool"),
        ({"seed": 2**64}, "seed must be an integer in \\[0, 18446744073709551615\\], got 18446744073709551616"),
        ({"stop": ["a"] * 65}, "stop may have at most 64 entries, got 65"),
        ({"stop": ["ok", 5]}, "stop\\[1\\] must be a string"),
        ({"stop": ["\ud800"]}, "stop\\[0\\] must be a string of valid Unicode"),
        ({"stop_token_ids": [1, True]}, "stop_token_ids\\[1\\] must be a token id"),
        ({"stop_token_ids": b"ab"}, "stop_token_ids must be a list of token ids"),
        ({"stop_token_ids": [-5]}, "stop_token_ids\\[0\\] must be a token id \\(an int in \\[0, 4294967295\\]\\)"),
        ({"logit_bias": {" 5": 1.0}}, "logit_bias keys must be token ids \\(decimal digits\\)"),
        ({"logit_bias": {"1_0": 1.0}}, "logit_bias keys must be token ids"),
        ({"logit_bias": {i: 1.0 for i in range(1025)}}, "logit_bias may have at most 1024 entries"),
        ({"temperature": True}, "temperature must be a number, got bool"),
    ],
)
def test_values_of_the_wrong_kind_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message) as info:
        SamplingParams(**kwargs)  # type: ignore[arg-type]
    assert info.value.param == next(iter(kwargs))
