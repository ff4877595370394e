"""The text-generation tab (demos/text_generation.py): the streamed pieces build up to the Python
API's continuation, and in headless Chromium the Generate button shows prompt + the greedy
continuation that `TextGenerator.generate` gives; an empty prompt is an error message, not a crash."""
from __future__ import annotations

import pytest
from _browser import TIMEOUT_MS, open_app
from _events import stop_cancels
from _gpt import write_tiny_gpt2
from playwright.sync_api import expect

from mmkit.core import GenerationOptions
from mmkit.inference.text_generation import load_text_generator, save_text_generator

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


def test_a_huge_prompt_is_tokenized_once_by_its_tail_and_the_cut_is_shown(generator, monkeypatch):
    """A prompt of megabytes cost 42 s and 3.5 GB (tokenized in full, three times) for the model's last
    tokens: now only its tail is tokenized, once, the kept ids are those of the whole prompt, and the
    browser user is told the prompt was cut."""
    import gradio as gr

    from demos.text_generation import continue_prompt

    prompt = " ".join(f"the teacher draws {n} moons." for n in range(12_000))  # ~330,000 characters
    keep = generator.model.max_len - 20
    expected = generator.tokenizer.encode(prompt)[-keep:]
    tokenized: list[int] = []
    encode = generator.tokenizer.encode
    monkeypatch.setattr(generator.tokenizer, "encode", lambda text: tokenized.append(len(text)) or encode(text))
    with pytest.warns(UserWarning, match=f"the prompt has {len(prompt)} characters .*; keeping its last {keep} "):
        states = list(continue_prompt(generator, prompt, 20, 0.0, 40, 1.0, 0))
    assert len(tokenized) == 1 and tokenized[0] < 20_000, tokenized  # once, a tail of a few thousand characters
    assert generator.prepare_prompt(prompt, 20).ids == expected  # the tail's last tokens are the prompt's
    assert states[0] == prompt and states[-1] == prompt + generator.generate(prompt, GenerationOptions(20))
    with pytest.warns(UserWarning, match="keeping its last 1 "):  # the slider's top: the prompt's last token
        list(continue_prompt(generator, PROMPT, generator.model.max_len - 1, 0.0, 40, 1.0, 0))
    with pytest.raises(gr.Error, match="prompt is empty"):
        list(continue_prompt(generator, "\n \t", 20, 0.0, 40, 1.0, 0))


@pytest.mark.parametrize("args, message", [
    (("a\ud800b", 20, 0.0, 40, 1.0, 0), "the prompt is not valid Unicode: an unpaired surrogate .* at character 1"),
    ((PROMPT, float("nan"), 0.0, 40, 1.0, 0), r"max new tokens must be a whole number in \[1, 127\], got nan"),
    ((PROMPT, 20, float("nan"), 40, 1.0, 0), r"temperature must be a number in \[0.0, 2.0\], got nan"),
    ((PROMPT, 20, 1.0, 2.5, 1.0, 0), r"top-k must be a whole number in \[0, 200\], got 2.5"),
    ((PROMPT, 20, 1.0, 40, float("nan"), 0), r"top-p must be a number in \[0.05, 1.0\], got nan"),
    ((PROMPT, 20, 1.0, 40, 0.9, float("nan")), r"seed must be a whole number in \[0, 2\*\*64 - 1\], got nan"),
    ((PROMPT, 20, 1.0, 40, 0.9, float("inf")), r"seed must be a whole number in \[0, 2\*\*64 - 1\], got inf"),
    ((PROMPT, 20, 1.0, 40, 0.9, 1e30), r"seed must be a whole number in \[0, 2\*\*64 - 1\], got 1e\+30"),
    ((PROMPT, 20, 1.0, 40, 0.9, -1), r"seed must be a whole number in \[0, 2\*\*64 - 1\], got -1"),
])
def test_odd_values_from_the_http_api_are_one_line_errors(generator, args, message):
    """Values the browser's widgets never send but the API passes on (TypeError, OverflowError, gradio's own
    rounding of NaN, top-p NaN silently off): each is a gr.Error naming the field."""
    import gradio as gr

    from demos.text_generation import continue_prompt

    with pytest.raises(gr.Error, match=message):
        list(continue_prompt(generator, *args))


def test_the_seed_field_leaves_nan_to_the_tab_function(generator):
    import gradio as gr

    from demos.text_generation import build_app

    [seed] = [b for b in build_app(generator).blocks.values() if getattr(b, "elem_id", None) == "seed"]
    assert isinstance(seed, gr.Number) and seed.preprocess(float("nan")) != seed.preprocess(float("nan"))  # NaN kept


@pytest.mark.parametrize("value", [None, "<b> & c"], ids=["null", "text"])
def test_a_slider_given_null_or_text_over_the_http_api_is_the_fields_one_line_error(serve_blocks, generator, capfd,
                                                                                      value):
    """Gradio's own slider compared null or text with its bounds: a TypeError, a server traceback and a bare
    "Error" for the caller. `demos.inputs.slider` (every demo's slider) hands it to the tab function's check.
    The client reads the text it sent as it sent it, not HTML-escaped as the browser is given it (refused
    before the generator's first value, where Gradio has set the event's request as for a plain function)."""
    from pathlib import Path

    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from demos.text_generation import build_app

    client = Client(serve_blocks(build_app(generator)), verbose=False)
    capfd.readouterr()
    with pytest.raises(AppError, match=rf"^max new tokens must be a whole number in \[1, 127\], got {value!r}$"):
        client.predict(PROMPT, value, 0.0, 40, 1.0, 0, api_name="/generate_text")
    assert "Traceback" not in capfd.readouterr().err
    demos = Path(__file__).resolve().parents[2] / "demos"
    assert [p.name for p in demos.glob("*.py") if "gr.Slider(" in p.read_text()] == ["inputs.py"]  # the one maker
    assert not list(demos.glob("*.pyi"))  # no stub written into the source tree



def test_a_stop_button_cancels_the_stream(generator):
    """A long generation could only be left to run to its end: no Stop button."""
    from demos.text_generation import build_app

    assert stop_cancels(build_app(generator), "stop", "generate_text")


def _with_config(tmp_path, settings: dict):
    import json

    directory = tmp_path / "gpt2"
    _, tok = write_tiny_gpt2(directory, seed=2, n_positions=128)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": tok.eos_id, **settings}))
    return load_text_generator(directory)


@pytest.mark.parametrize("settings, start", [
    ({}, {"temperature": 0.0, "top_k": 50, "top_p": 1.0}),  # a GPT-2's own: no sampling, top-k 50 when it does
    ({"do_sample": True, "temperature": 0.7, "top_p": 0.9}, {"temperature": 0.7, "top_k": 50, "top_p": 0.9}),
    ({"do_sample": True, "top_k": 0, "temperature": 5.0}, {"temperature": 2.0, "top_k": 0, "top_p": 1.0}),
    ({"num_beams": 3, "top_k": 400, "top_p": 0.01}, {"temperature": 0.0, "top_k": 200, "top_p": 0.05}),
    ({"max_new_tokens": 30}, {"temperature": 0.0, "top_k": 50, "top_p": 1.0, "max_new_tokens": 30}),
    ({"max_new_tokens": 500}, {"temperature": 0.0, "top_k": 50, "top_p": 1.0, "max_new_tokens": 127}),
], ids=["gpt2", "sampling", "all-tokens-hot", "beams-out-of-range", "own-length", "length-out-of-range"])
def test_the_sliders_start_at_the_models_own_settings(tmp_path, settings, start):
    from demos.text_generation import starting_values

    assert starting_values(_with_config(tmp_path, settings)) == {"max_new_tokens": 64, **start}


def test_the_tab_decodes_with_the_models_own_rules(tmp_path, generator):
    """The sliders are given over the model's own settings, as `mmkit generate-text`'s flags: temperature 0 is the
    model's beam search where it has one, its repetition penalty holds when sampling, top-k 0 is off. An mmkit
    export without settings starts where the tab always did (greedy, top-k 40)."""
    from demos.text_generation import continue_prompt, starting_values

    beams = _with_config(tmp_path, {"num_beams": 3, "repetition_penalty": 1.5, "top_k": 7})
    expected = beams.generate(PROMPT, beams.default_options(max_new_tokens=20, temperature=0))
    assert expected != beams.generate(PROMPT, GenerationOptions(max_new_tokens=20))  # the beams and penalty tell
    assert list(continue_prompt(beams, PROMPT, 20, 0.0, 40, 1.0, 0))[-1] == PROMPT + expected
    for top_k in (7, 0):
        options = beams.default_options(max_new_tokens=20, temperature=1.2, top_k=top_k, top_p=1.0, seed=5)
        assert options.repetition_penalty == 1.5 and options.top_k == (top_k or None)
        got = list(continue_prompt(beams, PROMPT, 20, 1.2, top_k, 1.0, 5))[-1]
        assert got == PROMPT + beams.generate(PROMPT, options)
    assert starting_values(load_text_generator(generator.export(tmp_path / "export")))["top_k"] == 50  # kept
    plain = load_text_generator(save_text_generator(generator.model, generator.tokenizer, tmp_path / "plain"))
    assert starting_values(plain) == {"temperature": 0.0, "top_k": 40, "top_p": 1.0, "max_new_tokens": 64}
