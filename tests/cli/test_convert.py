"""`mmkit convert MODEL OUT --to FORMAT`: an mmkit ViT export becomes a timm folder that timm loads with the same
logits, preprocessing and class names; mistakes (a folder that holds files, a model of another family, a model the
format cannot express, a failure midway) are one line with nothing written."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from mmkit.cli import main
from mmkit.models import ViT

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def vit_export(tmp_path_factory):
    torch.manual_seed(0)
    model = ViT(image_size=32, patch_size=8, num_classes=3, dim=32, depth=2, num_heads=4).eval()
    return model.save_pretrained(tmp_path_factory.mktemp("vit") / "export", metadata={
        "class_names": ["circle", "square", "star"], "mean": [0.2, 0.3, 0.4], "std": [0.5, 0.5, 0.5],
        "crop_pct": 1.0}), model


def test_a_vit_export_becomes_a_timm_folder(vit_export, tmp_path, caplog):
    export, model = vit_export
    (tmp_path / "timm").mkdir()  # an empty folder is filled
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert main(["convert", str(export), str(tmp_path / "timm"), "--to", "timm"]) == 0
    assert f'load it with timm.create_model("local-dir:{tmp_path / "timm"}", pretrained=True)' in caplog.text
    theirs = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model(x), rtol=0, atol=1e-4)
    assert theirs.pretrained_cfg["label_names"] == ["circle", "square", "star"]
    assert (theirs.pretrained_cfg["mean"], theirs.pretrained_cfg["crop_pct"]) == ([0.2, 0.3, 0.4], 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timm"]  # no temp folder left beside it


def test_mistakes_are_one_line_and_nothing_is_written(vit_export, tmp_path, capsys):
    export, _ = vit_export
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "mine.txt").write_text("keep")
    wide = ViT(image_size=32, patch_size=8, num_classes=2, dim=32, depth=1, num_heads=4, norm_eps=1e-5)
    odd = wide.save_pretrained(tmp_path / "odd")
    for args, message in (
            ([str(export), str(tmp_path / "held"), "--to", "timm"], "holds files already"),
            ([str(export), str(tmp_path / "o1"), "--to", "transformers"],
             "holds a 'ViT' model, not an mmkit GPT, BERT, Seq2Seq or Whisper export"),
            ([str(odd), str(tmp_path / "o2"), "--to", "timm"], "timm's ViT normalises with eps 1e-06"),
            ([str(tmp_path / "missing"), str(tmp_path / "o3"), "--to", "timm"], "model directory not found"),
    ):
        assert main(["convert", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mmkit convert: error: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held", "odd"]
    assert [p.name for p in (tmp_path / "held").iterdir()] == ["mine.txt"]


def test_a_failure_midway_leaves_no_folder(vit_export, tmp_path, capsys, monkeypatch):
    """The weights written, then the disk full at the config: neither OUT nor a temp folder stays."""
    from mmkit.errors import WriteFailed

    export, _ = vit_export

    def half(self, directory, class_names=None):
        (directory / "model.safetensors").write_bytes(b"x")
        raise WriteFailed.of(f"write {directory / 'config.json'}", "No space left on device", "")

    monkeypatch.setattr(ViT, "save_timm", half)
    assert main(["convert", str(export), str(tmp_path / "out"), "--to", "timm"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_gpt_export_becomes_a_transformers_gpt2_folder(tmp_path, capsys, caplog):
    """The GPT row: the export's weights, tokenizer and decoding settings as a GPT-2 folder (`save_gpt2_dir`, whose
    own tests hold the parity in full); a GPT export asked for timm is one line."""
    from _gpt import tiny_tokenizer
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from mmkit.inference.text_generation import save_text_generator
    from mmkit.models import GPT

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = GPT(vocab_size=tok.vocab_size, max_len=32, dim=32, depth=2, num_heads=4).eval()
    export = save_text_generator(model, tok, tmp_path / "export", {"temperature": 0.8, "top_k": 40})
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert main(["convert", str(export), str(tmp_path / "hf"), "--to", "transformers"]) == 0
    assert 'AutoModelForCausalLM.from_pretrained("' in caplog.text
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(tmp_path / "hf").encode("the cat sees the moon")])
    assert ids.tolist() == [tok.encode("the cat sees the moon")]
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model(ids), rtol=0, atol=1e-4)
    assert (theirs.generation_config.do_sample, theirs.generation_config.top_k) == (True, 40)
    assert main(["convert", str(export), str(tmp_path / "t"), "--to", "timm"]) == 2
    assert "holds a 'GPT' model, not an mmkit ViT export (--to timm converts ViT exports;" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "hf"]


def test_a_clip_export_becomes_an_open_clip_folder(tmp_path, caplog):
    """The CLIP row: a recipe-shaped export (CLIP's BPE, the recipe's preprocessing) loads in open_clip with the same
    embeddings (`CLIP.save_open_clip`, whose own tests hold the parity in full)."""
    open_clip = pytest.importorskip("open_clip")
    from mmkit.models import CLIP
    from mmkit.models.clip import CLIPTextTower, CLIPVisionTower

    torch.manual_seed(0)
    model = CLIP(CLIPVisionTower(embed_dim=24, image_size=32, patch_size=8, dim=32, depth=2, num_heads=4),
                 CLIPTextTower(embed_dim=24, max_len=16, dim=32, depth=2, num_heads=4)).eval()
    export = model.save_pretrained(tmp_path / "export")
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert main(["convert", str(export), str(tmp_path / "oc"), "--to", "open_clip"]) == 0
    assert 'open_clip.create_model_and_transforms("local-dir:' in caplog.text
    theirs, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    ids = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")(["a red circle"])
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval().encode_text(ids), model.encode_text(ids), rtol=0, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "oc").iterdir()) == ["open_clip_config.json",
                                                                   "open_clip_model.safetensors"]


def _bert_export(directory):
    """A masked-LM BERT export as the recipe makes it (no pooler)."""
    from _bert import tiny_wordpiece

    from mmkit.inference.encoder import save_encoder
    from mmkit.models import BERT

    tok = tiny_wordpiece()
    torch.manual_seed(0)
    mlm = BERT(vocab_size=len(tok), pad_id=tok.pad_id, max_len=32, dim=32, depth=2, num_heads=4, pooler=False,
               mlm_head=True).eval()
    return save_encoder(mlm, tok, directory)


def test_a_bert_export_becomes_a_transformers_folder_and_a_mean_head_is_refused(tmp_path, capsys, caplog):
    """The BERT row: a masked-LM export loads in BertForMaskedLM with the same logits (`save_bert_dir`, whose own
    tests hold the parity in full); the classify recipe's mean-pooled head, which no transformers class builds, is
    one line with nothing written."""
    from _bert import tiny_wordpiece
    from transformers import BertForMaskedLM

    from mmkit.inference.encoder import save_encoder
    from mmkit.models import BERT

    tok = tiny_wordpiece()
    torch.manual_seed(0)
    mlm = BERT(vocab_size=len(tok), pad_id=tok.pad_id, max_len=32, dim=32, depth=2, num_heads=4, pooler=False,
               mlm_head=True).eval()
    export = save_encoder(mlm, tok, tmp_path / "mlm")
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert main(["convert", str(export), str(tmp_path / "hf"), "--to", "transformers"]) == 0
    assert "load it with the transformers class its config.json names" in caplog.text
    ids = torch.tensor([tok.encode("the cat sees the moon")])
    with torch.no_grad():
        theirs = BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()(ids).logits
        torch.testing.assert_close(theirs, mlm.mlm_logits(mlm(ids)), rtol=0, atol=1e-4)
    mean = BERT(vocab_size=len(tok), pad_id=tok.pad_id, max_len=32, dim=32, depth=1, num_heads=4, mlm_head=False,
                num_classes=2, classifier_head="mean")
    export = save_encoder(mean, tok, tmp_path / "mean", ["a", "b"])
    capsys.readouterr()
    assert main(["convert", str(export), str(tmp_path / "hf2"), "--to", "transformers"]) == 2
    err = capsys.readouterr().err
    assert "mean" in err and err.count("\n") == 1, err
    assert not (tmp_path / "hf2").exists()


def test_a_translation_export_becomes_a_marian_folder(tmp_path, caplog):
    """The Seq2Seq row: the recipe-shaped export (`write_native_export`) loads in MarianMTModel and MarianTokenizer
    and translates as `mmkit translate` does (`save_marian_dir`, whose own tests hold the parity in full)."""
    from transformers import MarianMTModel, MarianTokenizer

    from mmkit.inference.translator import load_translator
    from tests.inference._translation_fixtures import write_native_export

    export = write_native_export(tmp_path / "export")
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert main(["convert", str(export), str(tmp_path / "marian"), "--to", "transformers"]) == 0
    assert "MarianMTModel.from_pretrained(" in caplog.text
    translator = load_translator(export)
    tok = MarianTokenizer.from_pretrained(tmp_path / "marian")
    theirs = MarianMTModel.from_pretrained(tmp_path / "marian").eval()
    for text in ("ten", "four hundred and sixty-six"):
        ids = tok([text], return_tensors="pt").input_ids
        assert ids[0].tolist() == translator.encode_source(text)
        out = theirs.generate(ids, max_new_tokens=8)[0].tolist()
        assert tok.decode(out, skip_special_tokens=True) == translator.translate(
            [text], translator.default_options(max_new_tokens=8))[0].text.strip()


def test_gpt_bert_and_translation_exports_become_ctranslate2_folders(tmp_path, capsys, caplog, monkeypatch):
    """The ctranslate2 rows (`ct2_dir`, whose own tests hold the parity in full): a GPT export decodes in
    ctranslate2.Generator and a Seq2Seq export in ctranslate2.Translator as mmkit decodes them, a BERT export's
    hidden states in ctranslate2.Encoder are mmkit's (its MLM head said not carried); a ViT asked for
    ctranslate2 is one line, and without ctranslate2 installed so is the command, before the model loads."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    import importlib.util

    from _gpt import tiny_tokenizer

    import numpy as np

    from mmkit.inference.encoder import load_encoder
    from mmkit.inference.text_generation import load_text_generator, save_text_generator
    from mmkit.inference.translator import load_translator
    from mmkit.models import GPT
    from tests.inference._translation_fixtures import write_native_export

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = GPT(vocab_size=tok.vocab_size, max_len=32, dim=32, depth=2, num_heads=4).eval()
    gpt = save_text_generator(model, tok, tmp_path / "gpt")
    seq2seq = write_native_export(tmp_path / "seq2seq")
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert main(["convert", str(gpt), str(tmp_path / "gpt-ct2"), "--to", "ctranslate2"]) == 0
        assert main(["convert", str(seq2seq), str(tmp_path / "seq2seq-ct2"), "--to", "ctranslate2"]) == 0
    assert 'ctranslate2.Generator("' in caplog.text and 'ctranslate2.Translator("' in caplog.text
    generator = load_text_generator(gpt)
    ids = tok.encode("the cat sees")
    out = ctranslate2.Generator(str(tmp_path / "gpt-ct2")).generate_batch(
        [[tok.hf.id_to_token(i) for i in ids]], max_length=8, sampling_topk=1, include_prompt_in_result=False)
    assert tok.decode(out[0].sequences_ids[0]) == generator.generate("the cat sees",
                                                                      generator.default_options(max_new_tokens=8))
    translator = load_translator(seq2seq)
    source = translator.encode_source("four hundred and sixty-six")
    vocabulary = json.loads((tmp_path / "seq2seq-ct2" / "shared_vocabulary.json").read_text())
    result = ctranslate2.Translator(str(tmp_path / "seq2seq-ct2")).translate_batch(
        [[vocabulary[i] for i in source]], beam_size=1, max_decoding_length=8,
        suppress_sequences=[[vocabulary[i]] for i in translator.codec.suppress] or None)
    expected = translator.translate(["four hundred and sixty-six"], translator.default_options(max_new_tokens=8))
    assert [vocabulary.index(piece) for piece in result[0].hypotheses[0]] == expected[0].tokens
    assert main(["convert", str(gpt), str(tmp_path / "gpt-int8"), "--to", "ctranslate2",
                 "--quantization", "int8"]) == 0
    sizes = [(tmp_path / name / "model.bin").stat().st_size for name in ("gpt-int8", "gpt-ct2")]
    assert sizes[0] < 0.4 * sizes[1]
    for args, message in (
            (["--to", "transformers", "--quantization", "int8"], "--quantization is for --to ctranslate2"),
            (["--to", "ctranslate2", "--quantization", "int4"], "quantization 'int4' is none of")):
        assert main(["convert", str(gpt), str(tmp_path / "q"), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    bert = _bert_export(tmp_path / "bert")
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert main(["convert", str(bert), str(tmp_path / "bert-ct2"), "--to", "ctranslate2"]) == 0
    assert 'ctranslate2.Encoder("' in caplog.text and "the masked-LM head is not carried" in caplog.text
    encoder = load_encoder(bert)
    ids = encoder.tokenizer.encode("the cat sees the moon")
    hidden = ctranslate2.Encoder(str(tmp_path / "bert-ct2")).forward_batch([ids]).last_hidden_state
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(np.asarray(hidden)), encoder.model.encode(torch.tensor([ids])),
                                   rtol=0, atol=1e-4)
    vit = ViT(image_size=32, patch_size=8, num_classes=2, dim=32, depth=1, num_heads=4).save_pretrained(tmp_path / "v")
    assert main(["convert", str(vit), str(tmp_path / "v-ct2"), "--to", "ctranslate2"]) == 2
    assert "holds a 'ViT' model, not an mmkit GPT, BERT, Seq2Seq or Whisper export" in capsys.readouterr().err
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ctranslate2"
                        else find_spec(name, *a))
    assert main(["convert", str(gpt), str(tmp_path / "none"), "--to", "ctranslate2"]) == 2
    err = capsys.readouterr().err
    assert err == ("mmkit convert: error: a CTranslate2 folder needs ctranslate2, which is not installed "
                   "(pip install ctranslate2)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "bert-ct2", "gpt", "gpt-ct2", "gpt-int8", "seq2seq",
                                                          "seq2seq-ct2", "v"]


def test_a_whisper_export_becomes_transformers_and_ctranslate2_folders(tmp_path, caplog):
    """The Whisper rows (`whisper_dir`, whose own tests hold the parity in full): a native export with openai's
    English-only tokenizer loads in WhisperForConditionalGeneration with the same logits, and its CTranslate2
    folder (model.bin, tokenizer.json, preprocessor_config.json, as faster-whisper reads them) reads back through
    mmkit's CTranslate2 reader with the same logits."""
    pytest.importorskip("ctranslate2")
    from transformers import WhisperForConditionalGeneration

    from mmkit.data.whisper_tokenizer import WhisperTokenizer
    from mmkit.inference import load_speech_model
    from mmkit.inference.speech_checkpoints import save_speech_checkpoint
    from mmkit.models import Whisper

    tok = WhisperTokenizer.from_openai(51864)
    torch.manual_seed(0)
    model = Whisper(n_mels=80, n_audio_ctx=100, n_text_ctx=64, vocab_size=tok.vocab_size, dim=64, encoder_depth=1,
                    decoder_depth=2, num_heads=4).eval()
    export = save_speech_checkpoint(model, tok, tmp_path / "export")
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert main(["convert", str(export), str(tmp_path / "hf"), "--to", "transformers"]) == 0
        assert main(["convert", str(export), str(tmp_path / "ct2"), "--to", "ctranslate2"]) == 0
    assert "WhisperForConditionalGeneration.from_pretrained(" in caplog.text
    assert 'faster_whisper.WhisperModel("' in caplog.text
    assert {"model.bin", "tokenizer.json", "preprocessor_config.json"} <= {p.name for p in (tmp_path / "ct2").iterdir()}
    mel, tokens = torch.randn(1, 80, 200), torch.tensor([tok.sot_sequence(without_timestamps=True)])
    with torch.no_grad():
        ours = model(tokens, model.encode(mel))
        theirs = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()(
            input_features=mel, decoder_input_ids=tokens).logits
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
        again, _ = load_speech_model(tmp_path / "ct2")
        torch.testing.assert_close(again(tokens, again.encode(mel)), ours, rtol=0, atol=1e-4)
