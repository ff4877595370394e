"""The text-generation tab (demos/text_generation.py): the streamed pieces build up to the Python
API's continuation, and in headless Chromium the Generate button shows prompt + the greedy
continuation that `TextGenerator.generate` gives; an empty prompt is an error message, not a crash."""
from __future__ import annotations

import pytest
from _browser import TIMEOUT_MS, open_app
from _gpt import write_tiny_gpt2
from playwright.sync_api import expect

from mmkit.core import GenerationOptions
from mmkit.inference.text_generation import load_text_generator

PROMPT = "The teacher draws"


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    write_tiny_gpt2(directory, seed=2, n_positions=128)
    return load_text_generator(directory)


def test_continue_prompt_streams_growing_text_up_to_the_api_result(generator):
    import gradio as gr

    from demos.text_generation import continue_prompt

    expected = PROMPT + generator.generate(PROMPT, GenerationOptions(max_new_tokens=20))
    states = list(continue_prompt(generator, PROMPT, 20, 0.0, 40, 1.0, 0))
    assert states[0] == PROMPT and states[-1] == expected and len(states) > 2
    assert all(b.startswith(a) for a, b in zip(states, states[1:]))  # each update extends the last
    sampled = list(continue_prompt(generator, PROMPT, 20, 1.0, 5, 0.9, 3))[-1]
    assert sampled == list(continue_prompt(generator, PROMPT, 20, 1.0, 5, 0.9, 3))[-1]  # the seed holds
    with pytest.raises(gr.Error, match="prompt is empty"):
        list(continue_prompt(generator, "  ", 20, 0.0, 40, 1.0, 0))


def test_demo_shows_the_prompt_and_the_greedy_continuation(page, serve_blocks, generator):
    from demos.text_generation import build_app

    expected = PROMPT + generator.generate(PROMPT, GenerationOptions(max_new_tokens=64))
    assert len(expected) > len(PROMPT) + 10
    open_app(page, serve_blocks(build_app(generator)))
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#generate").click()
    expect(page.locator("#generated textarea")).to_have_value(expected, timeout=TIMEOUT_MS)
    page.locator("#prompt textarea").fill("   ")
    page.locator("#generate").click()
    expect(page.get_by_text("the prompt is empty").first).to_be_visible(timeout=TIMEOUT_MS)
