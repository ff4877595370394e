"""`mmkit generate-text`: prints the prompt and the same greedy continuation as transformers'
`generate` on a tiny GPT-2 checkpoint directory; user mistakes are one line on stderr, exit 2."""
from __future__ import annotations

import logging

import pytest
import torch
from _gpt import write_tiny_gpt2

from mmkit.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    model, tok = write_tiny_gpt2(directory, seed=1)
    return directory, model, tok


def test_greedy_output_is_the_prompt_and_transformers_continuation(checkpoint, capsys):
    directory, hf, tok = checkpoint
    prompt = "The old man remembers"
    ids = torch.tensor([tok.encode(prompt)])
    ref = hf.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tok.eos_id)[0, ids.shape[1]:].tolist()
    ref = ref[: ref.index(tok.eos_id)] if tok.eos_id in ref else ref
    assert main(["generate-text", prompt, "--model", str(directory), "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out == prompt + tok.decode(ref) + "\n"


def test_sampling_options_and_seed_reproduce(checkpoint, capsys):
    directory, _, _ = checkpoint
    args = ["generate-text", "A dog", "--model", str(directory), "--max-new-tokens", "12", "--temperature", "1.2",
            "--top-p", "0.9", "--seed", "7"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("A dog")
    assert main(["generate-text", "A dog", "--model", str(directory), "--max-new-tokens", "6", "--beam-size", "2",
                 "--stop", "zzz"]) == 0
    assert capsys.readouterr().out.startswith("A dog")


@pytest.mark.parametrize("extra, decoding", [([], "greedy"), (["--beam-size", "2"], "beam-search")])
def test_a_seed_without_sampling_is_said_to_be_unused(checkpoint, capsys, caplog, extra, decoding):
    directory, _, _ = checkpoint
    args = ["generate-text", "A dog", "--model", str(directory), "--max-new-tokens", "4", *extra]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main([*args, "--seed", "3"]) == 0
    assert capsys.readouterr().out == plain
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"--seed 3 is unused: {decoding} decoding is deterministic (sample with --temperature, --top-k or --top-p)"]


@pytest.mark.parametrize("extra, unused, decoding", [
    (["--length-penalty", "-3"], "--length-penalty -3 is", "greedy decoding"),
    (["--early-stopping", "never", "--beam-size", "1"], "--early-stopping never is", "greedy decoding"),
    (["--length-penalty", "1", "--early-stopping", "true", "--temperature", "0.8"],
     "--length-penalty 1 and --early-stopping true are", "sampling"),
])
def test_beam_options_without_beams_are_said_to_be_unused(checkpoint, capsys, caplog, extra, unused, decoding):
    """As --seed without sampling: transformers' GenerationConfig.validate flags them outside beam search, mmkit
    ignored them without a word."""
    directory, _, _ = checkpoint
    args = ["generate-text", "A dog", "--model", str(directory), "--max-new-tokens", "4", "--seed", "3"]
    assert main([*args, *extra]) == 0
    capsys.readouterr()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "--seed" not in r.getMessage()] == [
        f"{unused} unused: {decoding} has no beams to rank or stop (search with --beam-size B > 1)"]
    caplog.clear()
    assert main([*args, "--beam-size", "2", "--length-penalty", "-3", "--early-stopping", "never"]) == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "--seed 3 is unused: beam-search decoding is deterministic (sample with --temperature, --top-k or --top-p)"]


def test_beam_options_are_transformers_and_the_default_length_fits_a_small_context(checkpoint, capsys):
    """--beam-size B with --length-penalty/--early-stopping is transformers' generate(num_beams=B, ...); without
    --max-new-tokens the length is 64 at most half the context (the default 64 filled this 64-token model's
    whole context: "no room for a prompt", for a number the user never gave)."""
    directory, hf, tok = checkpoint
    prompt = "The old man remembers"
    ids = torch.tensor([tok.encode(prompt)])
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), num_beams=3, max_new_tokens=10, do_sample=False,
                      length_penalty=0.5, early_stopping="never", pad_token_id=tok.eos_id)[0, ids.shape[1]:].tolist()
    ref = ref[: ref.index(tok.eos_id)] if tok.eos_id in ref else ref
    assert main(["generate-text", prompt, "--model", str(directory), "--max-new-tokens", "10", "--beam-size", "3",
                 "--length-penalty", "0.5", "--early-stopping", "never"]) == 0
    assert capsys.readouterr().out == prompt + tok.decode(ref) + "\n"
    assert main(["generate-text", prompt, "--model", str(directory)]) == 0  # 32 new tokens
    assert capsys.readouterr().out.startswith(prompt)
    with pytest.raises(SystemExit) as stopped:
        main(["generate-text", prompt, "--model", str(directory), "--early-stopping", "sometimes"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "--early-stopping: choose from false, true, never, got 'sometimes'" in err


def test_no_repeat_ngram_size_and_min_new_tokens_are_transformers(checkpoint, capsys):
    directory, hf, tok = checkpoint
    prompt = "The old man remembers"
    ids = torch.tensor([tok.encode(prompt)])
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                      no_repeat_ngram_size=2, min_new_tokens=4, pad_token_id=tok.eos_id)[0, ids.shape[1]:].tolist()
    ref = ref[: ref.index(tok.eos_id)] if tok.eos_id in ref else ref
    assert main(["generate-text", prompt, "--model", str(directory), "--max-new-tokens", "16",
                 "--no-repeat-ngram-size", "2", "--min-new-tokens", "4"]) == 0
    assert capsys.readouterr().out == prompt + tok.decode(ref) + "\n"


def test_num_return_sequences_prints_each_continuation_after_the_prompt(checkpoint, capsys):
    from mmkit.core import GenerationOptions
    from mmkit.inference.text_generation import load_text_generator

    directory, _, _ = checkpoint
    assert main(["generate-text", "A dog", "--model", str(directory), "--max-new-tokens", "8", "--temperature",
                 "1.3", "--seed", "5", "--num-return-sequences", "3"]) == 0
    generator = load_text_generator(directory)  # a transformers directory: top_k 50 where none is given
    texts = generator.samples("A dog", generator.default_options(max_new_tokens=8, temperature=1.3, seed=5), 3)
    assert capsys.readouterr().out == "\n".join(f"A dog{t}\n" for t in texts)
    assert main(["generate-text", "A dog", "--model", str(directory), "--num-return-sequences", "2"]) == 2
    assert "--num-return-sequences 2 needs sampling" in capsys.readouterr().err
    # a beam search's n best, best first
    best = load_text_generator(directory).samples("A dog", GenerationOptions(max_new_tokens=8, beam_size=4), 3)
    assert main(["generate-text", "A dog", "--model", str(directory), "--max-new-tokens", "8", "--beam-size", "4",
                 "--num-return-sequences", "3"]) == 0
    assert capsys.readouterr().out == "\n".join(f"A dog{t}\n" for t in best) and len(best) == 3
    assert main(["generate-text", "A dog", "--model", str(directory), "--beam-size", "2",
                 "--num-return-sequences", "3"]) == 2
    assert "2 beams keep 2 hypotheses" in capsys.readouterr().err


def test_a_prompt_cut_to_the_context_is_echoed_as_the_model_reads_it(checkpoint, capsys, caplog):
    """A prompt longer than the context is cut to its end with a warning; the echo shows that end after "…"
    (it showed the whole prompt, before a continuation of text the model never saw)."""
    directory, _, tok = checkpoint
    prompt = "The first words are dropped. " + "A small bird follows the moon. " * 12
    assert main(["generate-text", prompt, "--model", str(directory), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("…") and "The first words" not in out and out[1:].startswith(tok.decode(
        tok.encode(prompt)[-60:]))
    assert "keeping its last 60" in caplog.text


@pytest.mark.parametrize("extra, message", [
    (["--prompt-is", "  "], "the prompt is empty"),
    (["--max-new-tokens", "64"], "no room for a prompt"),
    (["--max-new-tokens", "0"], "max_new_tokens must be >= 1, got 0"),  # not the default 64
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--beam-size", "2", "--temperature", "0.7"], "beam search is deterministic"),
    (["--device", "banana"], "--device 'banana': not a device"),
    (["--device", "meta"], "--device meta: mmkit runs on cpu, cuda or mps"),
])
def test_user_mistakes_are_one_line_and_exit_2(checkpoint, capsys, extra, message):
    directory, _, _ = checkpoint
    prompt = extra[1] if extra[0] == "--prompt-is" else "The cat"
    extra = [] if extra[0] == "--prompt-is" else extra
    assert main(["generate-text", prompt, "--model", str(directory), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmkit generate-text: error: ") and message in err[0]


def test_missing_or_wrong_model_directories_exit_2(tmp_path, capsys):
    assert main(["generate-text", "hi", "--model", str(tmp_path / "none")]) == 2
    assert "model directory not found" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert main(["generate-text", "hi", "--model", str(tmp_path)]) == 2
    assert "not a GPT" in capsys.readouterr().err


def test_quantize_int8_generates_and_unknown_kinds_exit_2(checkpoint, capsys):
    directory, _, _ = checkpoint
    assert main(["generate-text", "The cat", "--model", str(directory), "--max-new-tokens", "6",
                 "--quantize", "int8"]) == 0
    assert capsys.readouterr().out.startswith("The cat")
    with pytest.raises(SystemExit) as e:
        main(["generate-text", "The cat", "--model", str(directory), "--quantize", "int4"])
    assert e.value.code == 2


def test_bf16_generates_and_bf16_with_int8_is_one_line(checkpoint, capsys):
    """`--precision bf16` (emulated where the CPU lacks it) decodes with fp32 logits; its tokens are
    not asserted equal to fp32's (a near tie may still flip), only that it runs and streams the prompt."""
    directory, _, _ = checkpoint
    assert main(["generate-text", "The cat", "--model", str(directory), "--max-new-tokens", "6",
                 "--precision", "bf16"]) == 0
    assert capsys.readouterr().out.startswith("The cat")
    assert main(["generate-text", "The cat", "--model", str(directory), "--precision", "bf16",
                 "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "int8 Linear layers run on fp32" in err


@pytest.mark.parametrize("extra", [[], ["--temperature", "1.2", "--top-k", "30", "--seed", "5"]])
def test_several_prompts_print_what_each_prints_alone(checkpoint, capsys, extra):
    """Decoded together (left-padded batches of 2), each prompt's block is the one a run of it alone prints."""
    directory, _, _ = checkpoint
    prompts = ["The old man remembers", "A dog", "my friend finds the long road and"]
    common = ["--model", str(directory), "--max-new-tokens", "12", *extra]
    alone = []
    for prompt in prompts:
        assert main(["generate-text", prompt, *common]) == 0
        alone.append(capsys.readouterr().out)
    assert main(["generate-text", *prompts, *common, "--batch-size", "2"]) == 0
    assert capsys.readouterr().out == "\n".join(alone)


def test_several_prompts_name_a_bad_one_and_take_n_continuations_each(checkpoint, capsys):
    """Several prompts with --num-return-sequences N: each prompt's N continuations, as the prompt alone gets
    them (seeded samples: sample j from its own seed; beams: the N best), each printed after its prompt."""
    from mmkit.core import GenerationOptions
    from mmkit.inference.text_generation import load_text_generator

    directory, _, _ = checkpoint
    assert main(["generate-text", "A dog", "   ", "--model", str(directory), "--max-new-tokens", "4"]) == 2
    assert capsys.readouterr().err == "mmkit generate-text: error: prompt 2: the prompt is empty\n"
    generator = load_text_generator(directory)
    for flags, options in ((["--temperature", "1", "--seed", "4"],
                            generator.default_options(max_new_tokens=6, temperature=1.0, seed=4)),
                           (["--beam-size", "3"], GenerationOptions(6, beam_size=3))):
        alone = {p: generator.samples(p, options, 2) for p in ("A dog", "The small cat sees")}
        assert main(["generate-text", "A dog", "The small cat sees", "--model", str(directory), "--max-new-tokens",
                     "6", "--num-return-sequences", "2", "--batch-size", "2", *flags]) == 0
        assert capsys.readouterr().out == "\n".join(f"{p}{t}\n" for p, texts in alone.items() for t in texts)


def test_a_generation_config_decodes_unless_options_choose_otherwise(checkpoint, tmp_path, capsys, caplog):
    """A GPT-2 directory whose generation_config.json asks for 3 beams: generate-text searches with them (said
    once), as transformers' generate does; --temperature given samples instead."""
    import json
    import shutil

    from mmkit.inference.text_generation import load_text_generator

    directory, _, tok = checkpoint
    copy = shutil.copytree(directory, tmp_path / "gpt2")
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": tok.eos_id, "num_beams": 3,
                                                             "repetition_penalty": 1.4}))
    generator = load_text_generator(copy)
    expected = generator.generate("A dog", generator.default_options(max_new_tokens=8))
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert main(["generate-text", "A dog", "--model", str(copy), "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == f"A dog{expected}\n"
    assert "decoding with the model's own settings: beam_size 3, repetition_penalty 1.4 (--beam-size ... " \
           "--repetition-penalty ... to choose others)" in caplog.text
    sampled = generator.generate("A dog", generator.default_options(max_new_tokens=8, temperature=1.2, seed=3))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert main(["generate-text", "A dog", "--model", str(copy), "--max-new-tokens", "8", "--temperature", "1.2",
                     "--seed", "3"]) == 0
    assert capsys.readouterr().out == f"A dog{sampled}\n"
    assert "decoding with the model's own settings: repetition_penalty 1.4, top_k 50 (--repetition-penalty ... " \
           "--top-k ... to choose others)" in caplog.text  # transformers' top_k where none is given
