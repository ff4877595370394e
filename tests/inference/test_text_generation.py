"""TextGenerator: greedy tokens equal transformers' `generate` on the same tiny GPT-2 checkpoint;
streaming, stop strings, sampling seeds, beam search and bad prompts; mmkit exports round-trip."""
from __future__ import annotations

import logging

import pytest
import torch
from _gpt import tiny_tokenizer, write_tiny_gpt2

from mmkit.core import GenerationOptions
from mmkit.inference.text_generation import TextGenerator, load_text_generator, save_text_generator
from mmkit.models import GPT
from mmkit.weights.native import WeightsError


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    model, tok = write_tiny_gpt2(directory)
    return directory, model, tok


@pytest.mark.parametrize("prompt", ["The cat sees", "A small bird follows the moon. Our"])
def test_greedy_tokens_equal_transformers_generate(hf_dir, prompt):
    directory, hf, tok = hf_dir
    generator = load_text_generator(directory)
    ids = torch.tensor([tok.encode(prompt)])
    ref = hf.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.eos_id)[0, ids.shape[1]:].tolist()
    if tok.eos_id in ref:
        ref = ref[: ref.index(tok.eos_id)]
    assert len(set(ref)) > 3  # the comparison is between varied continuations, not one repeated token
    pieces: list[str] = []
    text = generator.generate(prompt, GenerationOptions(max_new_tokens=24), on_text=pieces.append)
    assert text == tok.decode(ref)
    assert "".join(pieces) == text and len(pieces) > 1  # streamed in several pieces


def test_stream_yields_the_generated_text_and_stop_strings_cut(hf_dir):
    directory, _, _ = hf_dir
    generator = load_text_generator(directory)
    full = generator.generate("The cat sees", GenerationOptions(max_new_tokens=24))
    assert "".join(generator.stream("The cat sees", GenerationOptions(max_new_tokens=24))) == full
    stop = full[5:8]
    cut = generator.generate("The cat sees", GenerationOptions(max_new_tokens=24), stop=[stop])
    assert cut == full[: full.find(stop)]
    assert "".join(generator.stream("The cat sees", GenerationOptions(max_new_tokens=24), stop=[stop])) == cut


def test_sampling_is_reproducible_with_a_seed_and_beam_search_runs(hf_dir):
    directory, _, _ = hf_dir
    generator = load_text_generator(directory)
    sample = GenerationOptions(max_new_tokens=16, temperature=1.5, top_k=50, seed=3)
    first = generator.generate("The cat sees", sample)
    assert generator.generate("The cat sees", sample) == first
    others = {generator.generate("The cat sees", GenerationOptions(max_new_tokens=16, temperature=1.5, seed=s))
              for s in range(4)}
    assert len(others) > 1
    beam = generator.generate("The cat sees", GenerationOptions(max_new_tokens=8, beam_size=3))
    assert isinstance(beam, str) and beam == generator.generate("The cat sees", GenerationOptions(8, beam_size=3))


def test_bad_prompts_are_clear_errors_and_long_prompts_keep_their_end(hf_dir, caplog):
    directory, _, tok = hf_dir
    generator = load_text_generator(directory)
    for prompt in ("", "   \n\t"):
        with pytest.raises(ValueError, match="prompt is empty"):
            generator.generate(prompt)
    with pytest.raises(ValueError, match="no room"):
        generator.generate("The cat", GenerationOptions(max_new_tokens=64))
    long_prompt = " ".join(["the cat sees the moon."] * 40)
    with caplog.at_level(logging.WARNING):
        ids = generator.encode_prompt(long_prompt, 16)
    assert len(ids) == 64 - 16 and ids == tok.encode(long_prompt)[-48:] and "keeping its last 48" in caplog.text
    for run in (lambda: generator.generate(long_prompt, GenerationOptions(max_new_tokens=2)),
                lambda: "".join(generator.stream(long_prompt, GenerationOptions(max_new_tokens=2)))):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            run()
        assert caplog.text.count("keeping its last 62") == 1  # once, though the prompt is checked first


def test_a_prompt_of_unknown_tokens_is_refused(tmp_path):
    tok = tiny_tokenizer()
    model = GPT(vocab_size=200, max_len=32, dim=16, depth=1, num_heads=2)  # ids >= 200 are unknown to it
    generator = TextGenerator(model, tok, tok.eos_id)
    # A text made only of learned merges past the model's 200 ids (e.g. a whole word).
    text = next(t for t in (tok.decode([i]) for i in range(tok.eos_id - 1, 199, -1))
                if t.strip() and min(tok.encode(t)) >= 200)
    with pytest.raises(ValueError, match="no token this model knows"):
        generator.encode_prompt(text, 4)


def test_mmkit_export_round_trips_and_wrong_directories_are_refused(hf_dir, tmp_path):
    directory, _, _ = hf_dir
    generator = load_text_generator(directory)
    save_text_generator(generator.model, generator.tokenizer, tmp_path / "export")
    again = load_text_generator(tmp_path / "export")
    options = GenerationOptions(max_new_tokens=12)
    assert again.generate("A dog", options) == generator.generate("A dog", options)
    assert again.eos_id == generator.eos_id
    with pytest.raises(FileNotFoundError):
        load_text_generator(tmp_path / "missing")
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text('{"architecture": "ViT", "config": {}}')
    with pytest.raises(WeightsError, match="not a GPT"):
        load_text_generator(tmp_path / "vit")


def test_int8_generator_quantizes_every_linear_and_keeps_fp32_top1(hf_dir):
    directory, _, tok = hf_dir
    fp32, int8 = load_text_generator(directory), load_text_generator(directory, quantize="int8")
    linears = [m for m in int8.model.modules() if isinstance(m, torch.nn.Linear)]
    assert int8.model.head is not None and linears == []  # every Linear, the output projection too, is int8
    ids = torch.tensor([tok.encode("A small bird follows the moon. Our old man remembers the cat")])
    with torch.inference_mode():
        a, b = fp32.model(ids), int8.model(ids)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.8
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.95
    assert int8.generate("The cat sees", GenerationOptions(max_new_tokens=8))


@pytest.mark.parametrize("length_penalty, early_stopping, repetition_penalty",
                         [(1.0, False, 1.0), (2.0, False, 1.0), (1.0, True, 1.0), (0.5, "never", 1.0),
                          (1.0, False, 1.5)])
def test_beam_search_tokens_equal_transformers_generate(hf_dir, length_penalty, early_stopping, repetition_penalty):
    """`GenerationOptions(beam_size=K)` (generate-text's --beam-size) is transformers' `generate(num_beams=K)`,
    with its length_penalty, early_stopping and repetition_penalty (applied to log-probabilities there), also where
    beams end: it was openai-whisper's rule, which stopped at K finished beams (5 tokens where transformers gives
    12) and filtered raw logits."""
    from mmkit.core import generate

    directory, hf, _ = hf_dir
    model = GPT.from_hf(directory)
    options = GenerationOptions(max_new_tokens=12, beam_size=4, length_penalty=length_penalty,
                                early_stopping=early_stopping, repetition_penalty=repetition_penalty)
    torch.manual_seed(1)
    compared = 0
    for prompt in [torch.randint(0, model.vocab_size, (1, n)) for n in (1, 3, 7)]:
        P = prompt.shape[1]
        greedy = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0]
        for eos in (None, int(greedy[P + 2]), int(greedy[P + 5])):  # end tokens the beams meet
            ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), num_beams=4, max_new_tokens=12,
                              do_sample=False, length_penalty=length_penalty, early_stopping=early_stopping,
                              repetition_penalty=repetition_penalty, eos_token_id=eos,
                              pad_token_id=0 if eos is None else eos)[0, P:].tolist()
            if eos is not None and eos in ref:
                ref = ref[: ref.index(eos) + 1]
            got = generate(model, prompt, 12, options.strategy(), eos_id=eos, pad_id=0 if eos is None else eos,
                           logit_filters=options.filters()).sequences[0][P:].tolist()
            assert got[:len(ref)] == ref and set(got[len(ref):]) <= {eos}
            compared += 1
    assert compared == 9


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("no_repeat, min_new", [(2, 0), (3, 0), (1, 0), (0, 6), (2, 5)])
def test_no_repeat_ngram_and_min_new_tokens_equal_transformers_generate(hf_dir, beam_size, no_repeat, min_new):
    from mmkit.core import generate

    directory, hf, _ = hf_dir
    model = GPT.from_hf(directory)
    options = GenerationOptions(max_new_tokens=10, beam_size=beam_size, no_repeat_ngram_size=no_repeat,
                                min_new_tokens=min_new)
    torch.manual_seed(2)
    for prompt in [torch.randint(0, model.vocab_size, (1, n)) for n in (1, 4)] + [torch.tensor([[5, 9, 5, 9, 5]])]:
        P = prompt.shape[1]
        greedy = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0]
        eos = int(greedy[P + 1])  # an end token met early: min_new_tokens holds it back
        ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), num_beams=beam_size, max_new_tokens=10,
                          do_sample=False, no_repeat_ngram_size=no_repeat or None, min_new_tokens=min_new or None,
                          eos_token_id=eos, pad_token_id=eos)[0, P:].tolist()
        ref = ref[: ref.index(eos) + 1] if eos in ref else ref
        got = generate(model, prompt, 10, options.strategy(), eos_id=eos, pad_id=eos,
                       logit_filters=options.filters(eos, P)).sequences[0][P:].tolist()
        assert got[:len(ref)] == ref and set(got[len(ref):]) <= {eos}
        if min_new:
            assert eos not in got[:min_new]


def test_the_cli_and_the_api_refuse_impossible_lengths():
    with pytest.raises(ValueError, match="min_new_tokens 9 exceeds max_new_tokens 8"):
        GenerationOptions(max_new_tokens=8, min_new_tokens=9)
    with pytest.raises(ValueError, match="no_repeat_ngram_size must be >= 0"):
        GenerationOptions(no_repeat_ngram_size=-1)
    for rule in (1.0, 0, "sometimes"):  # 1.0 == True, yet the beam search tests `is True`: it acted as False
        with pytest.raises(ValueError, match="early_stopping must be None, True, False or 'never'"):
            GenerationOptions(early_stopping=rule)


@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, False), (0.5, True), (2.0, "never")])
def test_beam_n_best_equals_transformers_num_return_sequences(hf_dir, length_penalty, early_stopping):
    """`BeamSearch(n_best=n)` returns transformers' `generate(num_beams=K, num_return_sequences=n)`: the same n
    hypotheses in the same order, with its `sequences_scores`, where beams end early and where they run out."""
    from mmkit.core import BeamSearch, generate

    directory, hf, _ = hf_dir
    model = GPT.from_hf(directory)
    torch.manual_seed(1)
    compared = 0
    for prompt in [torch.randint(0, model.vocab_size, (1, n)) for n in (1, 5)]:
        P = prompt.shape[1]
        greedy = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0]
        for eos in (None, int(greedy[P + 2])):
            ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), num_beams=4, num_return_sequences=3,
                              max_new_tokens=10, do_sample=False, length_penalty=length_penalty,
                              early_stopping=early_stopping, eos_token_id=eos, pad_token_id=0 if eos is None else eos,
                              output_scores=True, return_dict_in_generate=True)
            got = generate(model, prompt, 10, BeamSearch(4, length_penalty, early_stopping, n_best=3), eos_id=eos,
                           pad_id=0 if eos is None else eos)
            assert len(got.sequences) == 3
            for j in range(3):
                expected = ref.sequences[j, P:].tolist()
                expected = expected[: expected.index(eos) + 1] if eos in expected else expected
                assert got.sequences[j][P:].tolist() == expected
                assert float(got.scores[j]) == pytest.approx(float(ref.sequences_scores[j]), abs=1e-4)
                compared += 1
    assert compared == 12


def test_samples_with_beams_are_the_n_best_continuations(hf_dir):
    directory, hf, tok = hf_dir
    generator = load_text_generator(directory)
    options = GenerationOptions(max_new_tokens=8, beam_size=4)
    texts = generator.samples("The cat sees", options, 3)
    ids = torch.tensor([tok.encode("The cat sees")])
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), num_beams=4, num_return_sequences=3,
                      max_new_tokens=8, do_sample=False, early_stopping=False, pad_token_id=tok.eos_id)
    rows = [row[ids.shape[1]:].tolist() for row in ref]
    assert texts == [tok.decode(row[: row.index(tok.eos_id)] if tok.eos_id in row else row) for row in rows]
    assert len(set(texts)) == 3 and texts[0] == generator.generate("The cat sees", options)
    with pytest.raises(ValueError, match="5 continuations exceed the beam size 4"):
        generator.samples("The cat sees", options, 5)


@pytest.mark.parametrize("options", [GenerationOptions(max_new_tokens=10, temperature=1.4, seed=9),
                                     GenerationOptions(max_new_tokens=10, beam_size=3)], ids=["samples", "beams"])
def test_n_continuations_of_prompts_batched_are_what_each_gets_alone(hf_dir, options):
    """`continuations(prompts, n)`: left-padded batches give each prompt the n continuations `samples` gives it
    alone; a seeded prompt's first sample is `generate`'s (sample j draws from its own seed)."""
    directory, _, _ = hf_dir
    generator = load_text_generator(directory)
    prompts = ["The cat sees", "A small bird follows the moon. Our", "Why"]
    alone = [generator.samples(p, options, 3) for p in prompts]
    assert generator.continuations(prompts, options, 3, batch_size=2) == alone
    assert [texts[0] for texts in alone] == [generator.generate(p, options) for p in prompts]
    assert generator.generate_many(prompts, options, batch_size=3) == [texts[0] for texts in alone]


def test_samples_are_several_continuations_drawn_together(hf_dir):
    directory, _, _ = hf_dir
    generator = load_text_generator(directory)
    options = GenerationOptions(max_new_tokens=12, temperature=1.5, seed=3)
    texts = generator.samples("The cat sees", options, 4)
    assert len(texts) == 4 and len(set(texts)) > 1  # other draws, one batch
    assert generator.samples("The cat sees", options, 4) == texts  # the seed reproduces them
    stop = next(t for t in texts if len(t) > 6)[3:5]
    cut = generator.samples("The cat sees", options, 4, stop=[stop])
    assert [t[: t.find(stop)] if stop in t else t for t in texts] == cut  # each row cut at its own stop
    with pytest.raises(ValueError, match="several continuations need sampling"):
        generator.samples("The cat sees", GenerationOptions(max_new_tokens=4), 2)
    with pytest.raises(ValueError, match=r"must be an integer in \[1, 64\]"):
        generator.samples("The cat sees", options, 0)


def _with_generation_config(hf_dir, tmp_path, settings: dict):
    import json
    import shutil

    directory, _, tok = hf_dir
    copy = shutil.copytree(directory, tmp_path / "gpt2")
    (copy / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id, **settings}))
    return copy


@pytest.mark.parametrize("settings, defaults", [
    ({"do_sample": True, "temperature": 1.3, "top_k": 7}, {"temperature": 1.3, "top_k": 7}),
    ({"do_sample": True}, {"temperature": 1.0, "top_k": 50}),  # transformers' GenerationConfig defaults
    ({"do_sample": True, "top_k": None, "temperature": None}, {"temperature": 1.0, "top_k": 50}),  # null: unset
    ({"num_beams": 3, "length_penalty": 0.5, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
     {"beam_size": 3, "length_penalty": 0.5, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2}),
], ids=["sampling", "sampling-defaults", "sampling-nulls", "beams"])
def test_a_gpt2_generation_config_is_the_models_own_decoding(hf_dir, tmp_path, settings, defaults):
    """transformers' `generate` decodes a GPT-2 directory as its generation_config.json says: so does
    `generate()` without options (`TextGenerator.default_options`), with the same tokens (sampled ones under the
    same torch seed)."""
    from transformers import GPT2LMHeadModel

    directory = _with_generation_config(hf_dir, tmp_path, settings)
    _, _, tok = hf_dir
    generator = load_text_generator(directory)
    assert generator.defaults == defaults
    ref = GPT2LMHeadModel.from_pretrained(directory).eval()
    for n, prompt in enumerate(["The cat sees", "A small bird follows the moon. Our"]):
        ids = torch.tensor([tok.encode(prompt)])
        torch.manual_seed(n)
        got = generator.generate(prompt, generator.default_options(max_new_tokens=10))
        torch.manual_seed(n)
        expected = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                                pad_token_id=tok.eos_id)[0, ids.shape[1]:].tolist()
        assert got == tok.decode(expected[: expected.index(tok.eos_id)] if tok.eos_id in expected else expected)


def test_options_given_override_the_models_other_way_and_bad_settings_are_one_line(hf_dir, tmp_path, caplog):
    """A sampling option given drops the model's beams (and their length penalty), a beam count keeps its beam
    settings; a setting mmkit does not apply is named at load, one it cannot use is one line naming the file."""
    beams = load_text_generator(_with_generation_config(hf_dir, tmp_path / "b", {"num_beams": 3,
                                                                                   "length_penalty": 0.5}))
    options = beams.default_options(temperature=0.9)
    assert (options.beam_size, options.length_penalty, options.temperature) == (1, 1.0, 0.9)
    assert beams.default_options(beam_size=2).length_penalty == 0.5
    with caplog.at_level(logging.WARNING):
        load_text_generator(_with_generation_config(hf_dir, tmp_path / "m", {"min_length": 30, "num_beams": 1}))
    assert "not applied by mmkit (transformers' generate would): min_length 30" in caplog.text
    with pytest.raises(WeightsError, match=r"generation_config.json: a decoding setting mmkit cannot use "
                                           r"\(beam_size must be >= 1, got 0\)"):
        load_text_generator(_with_generation_config(hf_dir, tmp_path / "bad", {"num_beams": 0}))


def test_a_transformers_directorys_sampling_takes_top_k_50_unless_given(hf_dir, tmp_path):
    """`generate(do_sample=True, temperature=T)` on a GPT-2 directory samples among the 50 likeliest tokens: so
    does a sampling run built by `default_options`; top_k 0 switches it off; an mmkit export has no fallback."""
    directory, hf, tok = hf_dir
    generator = load_text_generator(directory)
    assert generator.sampling_fallbacks == {"top_k": 50}
    differ = 0
    for n, prompt in enumerate(["The cat sees", "A small bird follows the moon. Our", "Why"]):
        ids = torch.tensor([tok.encode(prompt)])
        got = []
        for top_k in (None, 0):
            torch.manual_seed(n)
            got.append(generator.generate(prompt, generator.default_options(max_new_tokens=10, temperature=1.8,
                                                                            top_k=top_k)))
            torch.manual_seed(n)
            expected = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.8,
                                   max_new_tokens=10, pad_token_id=tok.eos_id,
                                   **({} if top_k is None else {"top_k": 0}))[0, ids.shape[1]:].tolist()
            expected = expected[: expected.index(tok.eos_id)] if tok.eos_id in expected else expected
            assert got[-1] == tok.decode(expected), (prompt, top_k)
        differ += got[0] != got[1]
    assert differ
    export = save_text_generator(GPT.from_hf(directory), tok, tmp_path / "export")
    assert load_text_generator(export).sampling_fallbacks == {}
