"""Drives the worker's OpenAI server with the official Python SDK.

Run by the Go test TestPythonOpenAISDK (worker/server), which starts the
server and passes its address in DISAGG_BASE_URL, the API key in
DISAGG_API_KEY and the served model name in DISAGG_MODEL.
"""

import os

import openai
import pytest

BASE_URL = os.environ.get("DISAGG_BASE_URL")
API_KEY = os.environ.get("DISAGG_API_KEY", "none")
MODEL = os.environ.get("DISAGG_MODEL", "")

pytestmark = pytest.mark.skipif(not BASE_URL, reason="DISAGG_BASE_URL not set (run through the Go test TestPythonOpenAISDK)")


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=BASE_URL + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_completion(client):
    c = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2)
    assert c.object == "text_completion"
    assert len(c.choices) == 1
    choice = c.choices[0]
    assert isinstance(choice.text, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < c.usage.completion_tokens <= 8
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    assert len(choice.logprobs.tokens) == c.usage.completion_tokens
    assert len(choice.logprobs.token_logprobs) == c.usage.completion_tokens


def test_completion_stream(client):
    stream = client.completions.create(
        model=MODEL, prompt=["Hello", "World"], max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    texts, finishes, usage = {}, {}, None
    for chunk in stream:
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
        if chunk.usage:
            usage = chunk.usage
    assert sorted(finishes) == [0, 1]
    assert usage is not None and usage.completion_tokens > 0


def test_chat(client):
    c = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
        max_tokens=8, temperature=0, n=2, logprobs=True, top_logprobs=2,
    )
    assert c.object == "chat.completion"
    assert [ch.index for ch in c.choices] == [0, 1]
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == c.choices[1].message.content
    assert c.choices[0].logprobs.content
    assert len(c.choices[0].logprobs.content[0].top_logprobs) == 2


def test_chat_stream(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_bad_request(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt="x", max_tokens=0)
    assert exc.value.status_code == 400
    err = exc.value.body
    assert err["type"] == "invalid_request_error"
    assert err["param"] == "max_tokens"
    assert err["message"]


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.body["code"] == "model_not_found"


def test_bad_api_key():
    bad = openai.OpenAI(base_url=BASE_URL + "/v1", api_key="wrong-key", max_retries=0)
    if API_KEY == "none":
        pytest.skip("the server has no API key")
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
