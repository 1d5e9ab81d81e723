"""A server's own rendering of a chat prompt (llama-server's POST /apply-template), on a loopback stand-in that
answers as llama-server's source does ({"messages"} -> {"prompt"})."""

import pytest

from loopback import answering
from parity.capture.server.http import StatusError, server_root
from parity.capture.server.template import server_rendering
from parity.core.errors import CaptureError


@pytest.fixture
def stand_in():
    with answering({}) as served:
        yield served


def test_the_servers_rendering_is_asked_at_its_root_whatever_address_was_given(stand_in):
    server, url = stand_in
    server.answers["/apply-template"] = (200, lambda body: {"prompt": f"<s>[{body['messages'][0]['content']}]"})
    messages = [{"role": "user", "content": "hi"}]
    assert server_rendering(f"{url}/v1/chat/completions", messages) == "<s>[hi]"
    assert server.requests == [("/apply-template", {"messages": messages})]
    assert server_root(f"{url}/v1/chat/completions/") == server_root(f"{url}/v1") == url


def test_a_server_without_the_endpoint_or_with_no_prompt_in_its_answer_is_one_error(stand_in):
    server, url = stand_in
    with pytest.raises(StatusError) as missing:
        server_rendering(url, [{"role": "user", "content": "hi"}])
    assert missing.value.status == 404
    server.answers["/apply-template"] = (200, {"prompt": ["not", "text"]})
    with pytest.raises(CaptureError, match="answered without a \"prompt\" string"):
        server_rendering(url, [{"role": "user", "content": "hi"}])
