"""`save_ct2_generator` / `save_ct2_translator`: an mmkit GPT or Seq2Seq saved as a CTranslate2 folder decodes in
`ctranslate2.Generator` / `ctranslate2.Translator` to the tokens mmkit decodes greedily, holds the tokenizer files
that give the same ids, and is written whole or not at all; without ctranslate2 the export is one line."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from mmkit.inference import ct2_dir
from mmkit.inference.ct2_dir import save_ct2_generator, save_ct2_translator
from mmkit.inference.translator import load_translator
from mmkit.weights.native import WeightsError
from tests.inference._export_checks import (
    EXISTING, check_held_folder_refused, check_nothing_left, check_within_half_int8_step, disk_full,
)
from tests.inference._translation_fixtures import write_marian_dir, write_native_export
from tests.inference.test_gpt2_dir import PROMPTS, _native_generator
from tests.inference.test_marian_dir import SOURCES, _widen

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/inference/conftest.py)

ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 converts and reads CTranslate2 folders")


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    generator = _native_generator()
    return generator, save_ct2_generator(generator, tmp_path_factory.mktemp("gpt") / "ct2")


def test_the_generator_continues_as_mmkit_greedily(gpt):
    """ctranslate2.Generator on the folder: greedy continuations of prompts' tokens are mmkit's, varied ones; the
    folder's tokenizer files (AutoTokenizer) give the prompts' ids."""
    from transformers import AutoTokenizer

    generator, directory = gpt
    assert {"model.bin", "config.json", "vocabulary.json", "tokenizer.json", "generation_config.json"} <= \
        {p.name for p in directory.iterdir()}
    tok = AutoTokenizer.from_pretrained(directory)
    ct2 = ctranslate2.Generator(str(directory), device="cpu")
    for prompt in PROMPTS:
        ids = generator.tokenizer.encode(prompt)
        assert tok(prompt)["input_ids"] == ids
        out = ct2.generate_batch([tok.convert_ids_to_tokens(ids)], max_length=16, sampling_topk=1,
                                 include_prompt_in_result=False)[0].sequences_ids[0]
        assert len(set(out)) > 3, out
        expected = generator.generate(prompt, generator.default_options(max_new_tokens=16))
        assert generator.tokenizer.decode(out) == expected


def _ct2_logits(generator, directory, compute_type: str = "default") -> tuple:
    """(CTranslate2's logits, mmkit's) for the same random token rows."""
    import numpy as np

    ids = torch.randint(0, generator.tokenizer.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = generator.model(ids).numpy()
    ct2 = ctranslate2.Generator(str(directory), device="cpu", compute_type=compute_type)
    return np.asarray(ct2.forward_batch(ids.tolist())), ours


def test_the_generator_computes_mmkits_logits(gpt):
    generator, directory = gpt
    theirs, ours = _ct2_logits(generator, directory)
    assert abs(theirs - ours).max() <= 1e-4


def test_int8_weights_are_a_quarter_and_agree(gpt, tmp_path):
    """--quantization int8 stores int8 weights (the file a quarter of float32's, as the int8 folders faster-whisper
    users fetch), each within half an int8 step of the float32 folder's (read back with mmkit's reader), which
    CTranslate2 runs: in float32 arithmetic its logits are the float32 folder's within that rounding. (Its int8
    kernels differ from CPU to CPU, with VNNI or without, so their outputs are not pinned here.) An unknown type is
    one line, nothing written."""
    from mmkit.weights.from_ctranslate2 import dequantized, read_ctranslate2_model

    generator, directory = gpt
    int8 = save_ct2_generator(generator, tmp_path / "int8", quantization="int8")
    assert (int8 / "model.bin").stat().st_size < 0.4 * (directory / "model.bin").stat().st_size
    exact, stored = (read_ctranslate2_model(d / "model.bin")[1] for d in (directory, int8))
    assert any(v.dtype == torch.int8 for v in stored.values())
    for key, got in dequantized(stored, "int8")[0].items():
        check_within_half_int8_step(got, exact[key].float(), key)
    theirs, ours = _ct2_logits(generator, int8, compute_type="float32")
    assert abs(theirs - ours).max() <= 0.05 * abs(ours).max()
    with pytest.raises(WeightsError, match=r"^quantization 'int4' is none of CTranslate2's \(int8, "):
        save_ct2_generator(generator, tmp_path / "int4", quantization="int4")
    assert not (tmp_path / "int4").exists()


def _ct2_tokens(translator, directory, text: str) -> list[int]:
    """ctranslate2.Translator's greedy translation of `text`'s source pieces as ids, given the translator's length
    limit for it and its suppressed tokens that the folder's vocabulary holds (an opus-mt conversion drops <pad>)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    vocabulary = set(json.loads((directory / "shared_vocabulary.json").read_text()))
    ids = translator.encode_source(text)
    limit = translator.default_options().limit(len(ids), translator.max_target_tokens)
    banned = [[piece] for piece in tok.convert_ids_to_tokens(translator.codec.suppress) if piece in vocabulary]
    ct2 = ctranslate2.Translator(str(directory), device="cpu")
    result = ct2.translate_batch([tok.convert_ids_to_tokens(ids)], beam_size=1, max_decoding_length=limit,
                                 suppress_sequences=banned or None)
    return tok.convert_tokens_to_ids(result[0].hypotheses[0])


@pytest.mark.parametrize("layout", ["native", "opus-mt", "opus-mt-pad-row"])
def test_the_translator_translates_as_mmkit_greedily(tmp_path, layout):
    """ctranslate2.Translator: greedy translations are `translate`'s tokens, some ending at EOS. The recipe's
    Seq2Seq starts its decoder from <s> (kept, every id kept); an opus-mt model whose <pad> row is zero is
    converted as CTranslate2 converts opus-mt (zero start vector, <pad> dropped); one whose <pad> row is not zero
    keeps <pad> as its start token."""
    if layout == "native":
        translator = _widen(load_translator(write_native_export(tmp_path / "src")), 2, 3.0)
    else:
        translator = _widen(load_translator(write_marian_dir(tmp_path / "hub")), 0, 4.0)
        if layout == "opus-mt":
            with torch.no_grad():
                translator.model.tok_embed.weight[translator.codec.pad_id] = 0.0
    directory = save_ct2_translator(translator, tmp_path / "ct2")
    config = json.loads((directory / "config.json").read_text())
    vocabulary = json.loads((directory / "shared_vocabulary.json").read_text())
    assert len(vocabulary) == translator.model.config["vocab_size"] - (layout == "opus-mt")
    assert config["decoder_start_token"] == ("<s>" if layout == "native" else "</s>" if layout == "opus-mt"
                                             else "<pad>")
    results = translator.translate(SOURCES)
    for text, result in zip(SOURCES, results):
        assert _ct2_tokens(translator, directory, text) == result.tokens, text
    assert max(len(set(r.tokens)) for r in results) >= 4, [r.tokens for r in results]


def test_without_ctranslate2_nothing_is_written(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ctranslate2"
                        else find_spec(name, *a))
    with pytest.raises(WeightsError, match=r"needs ctranslate2, which is not installed \(pip install ctranslate2\)"):
        save_ct2_generator(_native_generator(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_what_ctranslate2_cannot_convert_isone_line(tmp_path, monkeypatch):
    def refused(*_args):
        raise NotImplementedError("This model is not supported by CTranslate2 or this converter")

    monkeypatch.setattr(ct2_dir, "_convert", refused)
    with pytest.raises(WeightsError, match="^CTranslate2 cannot convert this model: This model is not supported"):
        save_ct2_generator(_native_generator(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@EXISTING
def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch, existing):
    """A full disk met while CTranslate2 writes (the transformers folder written) is one line naming the folder;
    a new folder is gone, an empty one is empty again (the hidden transformers folder too)."""
    def full_disk(source, out, files, loader, quantization):
        assert (source / "model.safetensors").is_file()
        out.mkdir()
        (out / "model.bin").write_bytes(b"part")
        disk_full()

    monkeypatch.setattr(ct2_dir, "_convert", full_disk)
    check_nothing_left(lambda out: save_ct2_generator(_native_generator(), out), tmp_path / "ct2", existing)


def test_a_folder_holding_files_is_refused(tmp_path):
    check_held_folder_refused(lambda out: save_ct2_generator(_native_generator(), out), tmp_path, "model.bin")


def _encoder_cases(tmp_path):
    """(name, LoadedEncoder): the masked-LM recipe's layout (no pooler), a pooled-[CLS] classifier with token types,
    and an imported RoBERTa classifier (offset positions, byte-level BPE)."""
    from _bert import tiny_wordpiece, write_tiny_roberta_classifier

    from mmkit.inference.encoder import LoadedEncoder, load_encoder
    from tests.inference.test_bert_dir import _native

    tok = tiny_wordpiece()
    write_tiny_roberta_classifier(tmp_path / "roberta-hub")
    return [("mlm", LoadedEncoder(_native(tok, pooler=False, mlm_head=True), tok)),
            ("classifier", LoadedEncoder(_native(tok, seed=1, mlm_head=False, num_classes=3, type_vocab_size=2), tok,
                                         {"class_names": ["neg", "neutral", "pos"]})),
            ("roberta", load_encoder(tmp_path / "roberta-hub"))]


def test_the_encoder_gives_mmkits_hidden_states(tmp_path, caplog):
    """ctranslate2.Encoder on the folder: hidden states of varied texts (padding apart) equal the mmkit encoder's
    (≤1e-4), pooler_output the pooled [CLS] where the model has a pooler and zeros where it has none; a head
    CTranslate2 cannot hold is said, not dropped in silence."""
    import logging

    import numpy as np

    from mmkit.inference.ct2_dir import save_ct2_encoder
    from tests.inference.test_bert_dir import _batch

    for name, encoder in _encoder_cases(tmp_path):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mmkit"):
            directory = save_ct2_encoder(encoder, tmp_path / name)
        said = {"mlm": "the masked-LM head is not carried", "classifier": "the classifier is not carried",
                "roberta": "the classifier is not carried"}[name]
        assert said in caplog.text, name
        model = encoder.model
        batch = _batch(encoder.tokenizer, types=model.type_embed.num_embeddings > 1)
        mask = batch["attention_mask"].bool()
        rows = [ids[m].tolist() for ids, m in zip(batch["input_ids"], mask)]
        types = [t[m].tolist() for t, m in zip(batch["token_type_ids"], mask)] if "token_type_ids" in batch else None
        out = ctranslate2.Encoder(str(directory), device="cpu").forward_batch(rows, token_type_ids=types)
        hidden, pooled = np.asarray(out.last_hidden_state), np.asarray(out.pooler_output)
        with torch.no_grad():
            ours = model.encode(**batch)
            assert ours[mask].std() > 0.5, name  # varied states, so the comparison can fail
            for i, row in enumerate(rows):
                assert abs(hidden[i, :len(row)] - ours[i, :len(row)].numpy()).max() <= 1e-4, name
            if model.pooler is not None:
                assert abs(pooled - model.pool(ours).numpy()).max() <= 1e-4, name
            else:
                assert not pooled.any(), name
