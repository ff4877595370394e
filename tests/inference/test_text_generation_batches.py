"""`TextGenerator.generate_many`: prompts of different lengths decoded in left-padded batches give each prompt the
continuation `generate` gives it alone (greedy, beam search, seeded sampling with top-k, stop strings, min_new_tokens,
and the prompt-reading repetition penalty and n-gram ban, which skip each row's padding), in input order."""
from __future__ import annotations

import pytest
from _gpt import write_tiny_gpt2

from mmkit.core import GenerationOptions
from mmkit.inference.text_generation import load_text_generator

PROMPTS = ["The cat sees", "A small bird follows the moon. Our old teacher", "my", "The teacher draws a quiet song and",
           "a dog likes the river"]
OPTIONS = {
    "greedy": GenerationOptions(max_new_tokens=16),
    "beam": GenerationOptions(max_new_tokens=10, beam_size=3),
    "sampled": GenerationOptions(max_new_tokens=16, temperature=1.3, top_k=40, seed=7),
    "min-new": GenerationOptions(max_new_tokens=12, min_new_tokens=6),
    "penalty": GenerationOptions(max_new_tokens=12, repetition_penalty=1.5, no_repeat_ngram_size=2),
    "penalty-beam": GenerationOptions(max_new_tokens=10, beam_size=3, repetition_penalty=1.3, no_repeat_ngram_size=3),
}


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    write_tiny_gpt2(directory)
    return load_text_generator(directory)


@pytest.mark.parametrize("case", list(OPTIONS))
@pytest.mark.parametrize("batch_size", [2, 8])
def test_each_prompt_gets_what_it_gets_alone(generator, case, batch_size):
    options = OPTIONS[case]
    alone = [generator.generate(p, options) for p in PROMPTS]
    assert generator.generate_many(PROMPTS, options, batch_size=batch_size) == alone
    assert len(set(alone)) == len(PROMPTS)  # varied continuations: the comparison means something


def test_stop_strings_cut_each_row_as_alone(generator):
    options = OPTIONS["greedy"]
    full = generator.generate(PROMPTS[1], options)
    stop = full[4:7]
    alone = [generator.generate(p, options, stop=[stop]) for p in PROMPTS]
    assert generator.generate_many(PROMPTS, options, stop=[stop]) == alone and alone[1] == full[: full.find(stop)]


def test_bad_calls_are_refused_in_one_line(generator):
    with pytest.raises(TypeError, match="a list of prompts"):
        generator.generate_many("The cat sees")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        generator.generate_many(PROMPTS, batch_size=0)
    with pytest.raises(ValueError, match="^prompt 2: the prompt is empty$"):
        generator.generate_many(["The cat", "  "], OPTIONS["greedy"])
    assert generator.generate_many([]) == []
