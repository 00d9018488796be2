"""Images in user messages across dialects, through the real server: the openai SDK's data URLs and
http URLs reach an Anthropic-type provider as base64 and url image sources, and the anthropic SDK's
image sources reach an OpenAI-type provider as image_url parts; the Responses API's input_image
likewise. The loopback upstream answers by naming the images it was sent."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.support import ServerFactory
from tests.upstream import relay_config

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
URL = "https://example.com/cat.png"
SEEN = f"saw: base64 image/png {PIXEL}; url {URL}"


@pytest.fixture(scope="module")
def server(upstream, tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("images"))
    yield factory(relay_config(upstream.url, 9, extra="topics: {}"), env={"RELAY_TEST_KEY": "k"})
    factory.close()


@pytest.mark.parametrize("model", ["t-image", "m-image"])
def test_openai_sdk_images_reach_either_provider(server, model):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)
    content = [
        {"type": "text", "text": "what are these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        {"type": "image_url", "image_url": {"url": URL}},
    ]
    completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}])
    assert completion.choices[0].message.content == SEEN


@pytest.mark.parametrize("model", ["t-image", "m-image"])
def test_anthropic_sdk_images_reach_either_provider(server, model):
    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=20)
    content = [
        {"type": "text", "text": "what are these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
        {"type": "image", "source": {"type": "url", "url": URL}},
    ]
    with client.messages.stream(
        model=model, max_tokens=50, messages=[{"role": "user", "content": content}]
    ) as s:
        assert "".join(s.text_stream) == SEEN


@pytest.mark.parametrize("model", ["t-image", "m-image"])
def test_responses_input_images_reach_either_provider(server, model):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)
    content = [
        {"type": "input_text", "text": "what are these?"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{PIXEL}"},
        {"type": "input_image", "image_url": URL},
    ]
    response = client.responses.create(model=model, input=[{"role": "user", "content": content}])
    assert response.output_text == SEEN


def test_an_image_detail_an_anthropic_provider_cannot_take_is_refused(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)
    content = [{"type": "image_url", "image_url": {"url": URL, "detail": "low"}}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m-image", messages=[{"role": "user", "content": content}])
    assert "'image_url.detail'" in info.value.message
