"""`save_whisper_dir`: an mmkit Whisper (an imported transformers checkpoint, or a native model with openai's
English-only or multilingual tokenizer, or one trained from scratch with a character tokenizer) saved as a
transformers Whisper directory loads in `WhisperForConditionalGeneration` and `AutoProcessor` with the same logits,
features, token ids and greedy `generate()` tokens, reads back through `load_speech_model` as it was, and what
transformers cannot hold is refused in one line before anything is written. `save_ct2_whisper_dir`: the same models
as CTranslate2 folders decode in `ctranslate2.models.Whisper` and faster-whisper (where installed) as mmkit does and
read back through mmkit's CTranslate2 reader; what CTranslate2 cannot hold is refused in one line."""
from __future__ import annotations

import json

import pytest
import torch

from mmkit.audio import HOP_LENGTH, log_mel_spectrogram, pad_or_trim
from mmkit.cli.bench.transcribe import synth_speechlike, write_toy_checkpoint
from mmkit.data.char_tokenizer import CharTokenizer
from mmkit.data.whisper_tokenizer import WhisperTokenizer
from mmkit.inference import DecodingOptions, Transcriber, load_speech_model
from mmkit.inference.whisper_dir import save_ct2_whisper_dir, save_whisper_dir
from mmkit.models import Whisper
from mmkit.weights.native import WeightsError
from tests.inference._export_checks import (
    EXISTING, check_held_folder_refused, check_nothing_left, check_within_half_int8_step, disk_full, fail_moving_config,
    one_line,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/inference/conftest.py)

transformers = pytest.importorskip("transformers")

N_AUDIO_CTX = 100  # 2 s windows: WhisperFeatureExtractor's chunk_length 2
# Decoding as one deterministic pass (tests/tasks/test_transcribe.py's EXACT): no fallback, silence skip or guard
EXACT = dict(temperatures=(0.0,), no_speech_threshold=None, logprob_threshold=None, compression_ratio_threshold=None,
             repetition_guard=False, without_timestamps=True)
TEXTS = ["hello world", " the speech test!", "  two  spaces\n\nand new lines\ttab ", "don't 123,456.7 -- ♪ (a) [b]",
         "café naïve façade Ærø", "emoji 😀👍🏽 and CJK 漢字かな한글", "<|endoftext|> x <|en|><|transcribe|><|0.00|>",
         "<|startoftranscript|>text<|notimestamps|>", " lead", ""]
AUDIO = [synth_speechlike(s, seed=i) for i, s in enumerate((1.9, 1.2, 0.7, 2.0))]


def _widen(model: Whisper, eot: int, seed: int, eot_scale: float) -> Whisper:
    """`model` with weights wide enough that greedy tokens vary with the audio and some windows end at <|endoftext|>
    before their limit (`write_toy_checkpoint`'s scales: N(0, 2.4/√dim) projections and biases, the key biases
    among them, N(0, 0.3) embeddings, gains about 1; the special and timestamp rows halved, <|endoftext|>'s scaled
    by `eot_scale`)."""
    g = torch.Generator().manual_seed(seed)
    std = 2.4 / model.tok_embed.embedding_dim ** 0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = name.endswith("weight") and p.dim() == 1
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "embed" in name else std) + gain)
        model.tok_embed.weight[eot + 1:] *= 0.5
        model.tok_embed.weight[eot] *= eot_scale
    return model.eval()


def _native(tok: WhisperTokenizer | CharTokenizer, seed: int, eot_scale: float, **config) -> Whisper:
    torch.manual_seed(seed)
    model = Whisper(**{**dict(n_mels=80, n_audio_ctx=N_AUDIO_CTX, n_text_ctx=64, vocab_size=tok.vocab_size, dim=64,
                              encoder_depth=1, decoder_depth=2, num_heads=4), **config})
    return _widen(model, tok.eot, seed, eot_scale)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A transformers checkpoint (the speech tests' toy: multilingual toy tokenizer, 2 s windows) read by
    `load_speech_model`, saved again."""
    hub = write_toy_checkpoint(tmp_path_factory.mktemp("hub"), d_model=64, encoder_layers=1, decoder_layers=2,
                               heads=4, n_text_tokens=400, multilingual=True, n_audio_ctx=N_AUDIO_CTX, eot_scale=3.0)
    model, tok = load_speech_model(hub)
    return model, tok, save_whisper_dir(model, tok, tmp_path_factory.mktemp("imported-hf") / "whisper")


@pytest.fixture(scope="module")
def english(tmp_path_factory):
    """A native model with openai's English-only tokenizer (51,864 ids) and alignment heads."""
    tok = WhisperTokenizer.from_openai(51864)
    model = _native(tok, 4, 4.0, alignment_heads=[[1, 0], [1, 3]])  # seeds and scales picked for `_widen`
    return model, tok, save_whisper_dir(model, tok, tmp_path_factory.mktemp("english-hf") / "whisper")


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory):
    """A native model with openai's multilingual tokenizer (51,865 ids, 99 languages)."""
    tok = WhisperTokenizer.from_openai(51865)
    model = _native(tok, 1, 2.0)
    return model, tok, save_whisper_dir(model, tok, tmp_path_factory.mktemp("multilingual-hf") / "whisper")


@pytest.fixture(scope="module")
def chars(tmp_path_factory):
    """A native model with a character tokenizer (no language, task or timestamp tokens), as the espeak recipe's."""
    tok = CharTokenizer.build(["the quick brown fox jumps over the lazy dog", "hello world 0123456789'"])
    model = _native(tok, 1, 2.0)
    return model, tok, save_whisper_dir(model, tok, tmp_path_factory.mktemp("chars-hf") / "whisper")


@pytest.fixture(params=["imported", "english", "multilingual"])
def saved(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["imported", "english", "multilingual", "chars"])
def any_saved(request):
    return request.getfixturevalue(request.param)


def _hf(directory):
    """WhisperForConditionalGeneration on `directory`, after checking that transformers loads every weight and has
    nothing to warn of in the generation config."""
    model, info = transformers.WhisperForConditionalGeneration.from_pretrained(directory, output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    transformers.GenerationConfig.from_pretrained(directory).validate(strict=True)  # raises where a load would warn
    return model.eval()


def _mel(model: Whisper, audios=AUDIO) -> torch.Tensor:
    """(B, 80, 2·n_audio_ctx) mmkit log-Mel of the clips, each padded to the model's window."""
    window = 2 * model.n_audio_ctx * HOP_LENGTH
    return torch.stack([log_mel_spectrogram(pad_or_trim(a, window)) for a in audios])


def test_transformers_computes_the_same_logits(any_saved, request):
    """WhisperForConditionalGeneration.from_pretrained on the saved directory: every weight loaded, and logits equal
    to the mmkit model's in fp32 for windows and random decoder ids; the native models' key biases, which Whisper's
    k_proj has not, are far from zero, and dropped (they cancel in softmax; 3e-5 apart measured)."""
    model, tok, directory = any_saved
    hf = _hf(directory)
    tokens = torch.randint(0, model.vocab_size, (len(AUDIO), 12), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = tok.sot
    mel = _mel(model)
    with torch.no_grad():
        expected = model(tokens, model.encode(mel))
        logits = hf(input_features=mel, decoder_input_ids=tokens).logits
    assert expected.std() > 1  # not a degenerate model
    assert (logits - expected).abs().max().item() <= 1e-4
    key_bias = max(b.chunk(3)[1].abs().max().item() for k, b in model.state_dict().items() if k.endswith("qkv.bias"))
    assert key_bias == 0.0 if request.node.callspec.params["any_saved"] == "imported" else key_bias > 0.1


def test_the_processors_features_are_mmkits_log_mel(saved):
    """AutoProcessor's WhisperFeatureExtractor (the model's Mel bins and 2 s window) gives mmkit's log-Mel of clips
    shorter than the window and of a full one, within 1e-5 (measured: 1.2e-7 on these clips, numpy float64 STFT
    against torch float32)."""
    model, _, directory = saved
    processor = transformers.AutoProcessor.from_pretrained(directory)
    assert type(processor).__name__ == "WhisperProcessor"
    assert type(processor.feature_extractor).__name__ == "WhisperFeatureExtractor"
    features = processor(AUDIO, sampling_rate=16_000, return_tensors="pt").input_features
    assert features.shape == (len(AUDIO), 80, 2 * N_AUDIO_CTX)
    assert (features - _mel(model)).abs().max().item() <= 1e-5


def test_the_tokenizer_encodes_and_decodes_as_mmkits(saved):
    """The directory's tokenizer (AutoTokenizer, and WhisperProcessor's) encodes text to `tokenizer.encode`'s ids
    (spaces, new lines, punctuation, accents, emoji, CJK, special tokens' text) and decodes ids with the special
    ones skipped as `tokenizer.decode` does."""
    _, tok, directory = saved
    hf_tok = transformers.AutoTokenizer.from_pretrained(directory)
    assert type(hf_tok).__name__ == "WhisperTokenizer"
    assert transformers.AutoProcessor.from_pretrained(directory).tokenizer.get_vocab() == hf_tok.get_vocab()
    assert (hf_tok.eos_token_id, len(hf_tok)) == (tok.eot, tok.vocab_size)
    for text in TEXTS:
        ids = tok.encode(text)
        assert hf_tok(text, add_special_tokens=False).input_ids == ids, text
        assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids), text
    assert tok.eot in tok.encode(TEXTS[6])  # special tokens' text is the special token, in both


def _mmkit_greedy(model, tok, language=None) -> tuple[list[list[int]], list[str]]:
    """mmkit's greedy decoding of each clip's window without timestamps (EXACT): its tokens and detected language."""
    transcriber = Transcriber(model, tok, DecodingOptions(language=language, **EXACT))
    transcripts = [transcriber.transcribe(a) for a in AUDIO]
    return [[t for s in tr.segments for t in s.tokens] for tr in transcripts], [tr.language for tr in transcripts]


def _hf_greedy(hf, features, eot, **given) -> list[list[int]]:
    with torch.no_grad():
        out = hf.generate(features, return_timestamps=False, **given)
    return [[t for t in row if t != eot] for row in out.tolist()]


def test_generate_gives_mmkits_greedy_tokens(saved):
    """transformers' `generate(input_features)` on the processor's features, given no decoding argument (language
    detection on the multilingual models, as mmkit's), gives mmkit's greedy tokens of each window without timestamps
    (both suppress the generation config's suppress_tokens, and its begin_suppress_tokens first; both stop at
    <|endoftext|> or after max_length = half the text context): varied tokens, some windows ending early."""
    model, tok, directory = saved
    hf = _hf(directory)
    features = transformers.AutoProcessor.from_pretrained(directory)(
        AUDIO, sampling_rate=16_000, return_tensors="pt").input_features
    ours, languages = _mmkit_greedy(model, tok)
    assert _hf_greedy(hf, features, tok.eot) == ours
    limit = model.n_text_ctx // 2
    assert min(map(len, ours)) < limit and max(len(set(t)) for t in ours) >= 4, ours
    if tok.is_multilingual:  # a language given: the same <|lang|><|transcribe|> prompt on both sides
        assert all(languages)
        ours, _ = _mmkit_greedy(model, tok, "de")
        assert _hf_greedy(hf, features, tok.eot, language="de", task="transcribe") == ours


def test_load_speech_model_reads_it_back(saved):
    """`load_speech_model` on the saved directory: the same config (alignment heads too), logits, tokenizer and
    decoding settings as the model saved."""
    model, tok, directory = saved
    again, again_tok = load_speech_model(directory)
    assert again.config == model.config
    tokens = torch.randint(0, model.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    mel = _mel(model, AUDIO[:2])
    with torch.no_grad():
        assert (again(tokens, again.encode(mel)) - model(tokens, model.encode(mel))).abs().max().item() <= 1e-4
    assert again_tok.backend.get_vocab() == tok.backend.get_vocab()
    for name in ("suppress_tokens", "begin_suppress_tokens", "language_ids", "is_multilingual", "timestamp_begin",
                 "max_initial_timestamp_index"):
        assert getattr(again_tok, name) == getattr(tok, name), name
    assert _mmkit_greedy(again, again_tok) == _mmkit_greedy(model, tok)


def test_the_generation_config_is_the_tokenizers_with_the_models_heads(english, multilingual):
    """generation_config.json: the tokenizer's ids, the suppressed tokens resolved as mmkit applies them, max_length
    half the text context, and alignment_heads the model's where it names them (none else)."""
    for model, tok, directory in (english, multilingual):
        gen = json.loads((directory / "generation_config.json").read_text())
        assert (gen["decoder_start_token_id"], gen["eos_token_id"], gen["no_timestamps_token_id"]) == (
            tok.sot, tok.eot, tok.no_timestamps)
        assert (gen["suppress_tokens"], gen["begin_suppress_tokens"]) == (tok.suppress_tokens,
                                                                          tok.begin_suppress_tokens)
        assert gen["max_length"] == 32 and gen["is_multilingual"] == tok.is_multilingual
        assert gen.get("alignment_heads") == model.alignment_heads
    assert english[0].alignment_heads == [[1, 0], [1, 3]]


def test_a_character_tokenizer_model_generates_in_transformers(chars):
    """A model trained with a character tokenizer: AutoTokenizer (the generic class over its tokenizer.json) encodes
    and decodes as the CharTokenizer; greedy `generate()` on AutoProcessor's features with no decoding argument gives
    mmkit's greedy tokens (prompt <|startoftranscript|><|notimestamps|>, its special tokens but <|endoftext|>
    suppressed, max_length the rest of the text context, as mmkit's transcriber for such a model); and
    `load_speech_model` reads it back with its CharTokenizer and logits."""
    model, tok, directory = chars
    hf_tok = transformers.AutoTokenizer.from_pretrained(directory)
    for text in ("hello world", "The  QUICK fox!", "dog's 42", ""):
        ids = tok.encode(text)
        assert hf_tok(text, add_special_tokens=False).input_ids == ids, text
        assert hf_tok.decode(ids + [tok.eot], skip_special_tokens=True) == tok.decode(ids), text
    gen = json.loads((directory / "generation_config.json").read_text())
    assert gen["is_multilingual"] is False and "lang_to_id" not in gen and gen["max_length"] == 62
    hf = _hf(directory)
    features = transformers.AutoProcessor.from_pretrained(directory)(
        AUDIO, sampling_rate=16_000, return_tensors="pt").input_features
    ours, _ = _mmkit_greedy(model, tok)
    assert _hf_greedy(hf, features, tok.eot) == ours
    assert min(map(len, ours)) < 62 and max(len(set(t)) for t in ours) >= 4, ours
    again, again_tok = load_speech_model(directory)
    assert isinstance(again_tok, CharTokenizer) and again_tok == tok and again.config == model.config
    assert _mmkit_greedy(again, again_tok) == _mmkit_greedy(model, tok)


@pytest.mark.parametrize("change, named", [
    ({"drop_path_rate": 0.1}, "drop_path_rate=0.1 (stochastic depth"),
    ({"dropout": 0.1}, "dropout=0.1 beside resid_dropout=0.0"),
    ({"n_audio_ctx": 120}, "2.4 s windows"),
    ({"int8": True}, "an int8 model is not exported"),
    ({"untied": True}, "an untied output head"),
    ({"unknown": True}, "config fields WhisperConfig has no counterpart for (rotary)"),
], ids=["drop-path", "dropout", "window", "int8", "untied", "unknown-field"])
def test_what_transformers_cannot_hold_is_refused_before_anything_is_written(english, tmp_path, change, named):
    """Stochastic depth, an embedding dropout apart from the residual one, a window that is not whole seconds, an
    int8 model, an untied output head and a config field this converter does not know (a later Whisper's) are each
    one line naming what, with nothing written."""
    from mmkit.inference.quantize import quantize_linear_int8, untie_head

    _, tok, _ = english
    change = dict(change)
    int8, untied, unknown = (change.pop(k, False) for k in ("int8", "untied", "unknown"))
    torch.manual_seed(0)
    model = Whisper(n_mels=80, n_audio_ctx=change.pop("n_audio_ctx", 50), n_text_ctx=16, vocab_size=tok.vocab_size,
                    dim=32, encoder_depth=1, decoder_depth=1, num_heads=2, **change).eval()
    if int8:
        quantize_linear_int8(model)
    if untied:
        untie_head(model)
    if unknown:
        model.config["rotary"] = True
    with pytest.raises(WeightsError) as err:
        save_whisper_dir(model, tok, tmp_path / "out")
    assert named in one_line(err.value) and not (tmp_path / "out").exists()


def test_a_folder_holding_files_is_refused(english, tmp_path):
    model, tok, _ = english
    check_held_folder_refused(lambda out: save_whisper_dir(model, tok, out), tmp_path)


@EXISTING
@pytest.mark.parametrize("stage", ["writing", "moving"])
def test_a_failed_write_leaves_nothing_behind(english, tmp_path, monkeypatch, existing, stage):
    """A full disk met midway (the weights written, the tokenizer not), or a failure moving the last file into
    place (config.json: the other files moved already), is one line naming the folder and takes back what was
    written: a new folder is gone, an empty one is empty again."""
    model, tok, _ = english
    target = tmp_path / "whisper"
    if stage == "writing":
        monkeypatch.setattr(tok, "save", disk_full)
    else:
        fail_moving_config(monkeypatch, target, ["model.safetensors", "tokenizer.json", "preprocessor_config.json"])
    check_nothing_left(lambda out: save_whisper_dir(model, tok, out), target, existing)


# --- CTranslate2 / faster-whisper -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct2_english(english, tmp_path_factory):
    model, tok, _ = english
    return model, tok, save_ct2_whisper_dir(model, tok, tmp_path_factory.mktemp("english-ct2") / "whisper")


@pytest.fixture(scope="module")
def ct2_multilingual(multilingual, tmp_path_factory):
    model, tok, _ = multilingual
    return model, tok, save_ct2_whisper_dir(model, tok, tmp_path_factory.mktemp("multilingual-ct2") / "whisper")


@pytest.fixture(scope="module")
def ct2_windows_30s(tmp_path_factory):
    """A multilingual model with openai's 30 s windows (1500 encoder positions): faster-whisper pads every window's
    features to 3000 frames (`faster_whisper.audio.pad_or_trim`), so it runs no other window."""
    pytest.importorskip("ctranslate2", reason="ctranslate2 converts and reads CTranslate2 folders")
    tok = WhisperTokenizer.from_openai(51865)
    model = _native(tok, 3, 3.0, n_audio_ctx=1500)
    return model, tok, save_ct2_whisper_dir(model, tok, tmp_path_factory.mktemp("windows-30s-ct2") / "whisper")


@pytest.fixture(params=["english", "multilingual", "windows_30s"])
def ct2_saved(request):
    pytest.importorskip("ctranslate2", reason="ctranslate2 converts and reads CTranslate2 folders")
    return request.getfixturevalue(f"ct2_{request.param}")


def test_ctranslate2_generates_mmkits_greedy_tokens(ct2_saved):
    """ctranslate2.models.Whisper on the folder (float32): the language it detects is mmkit's, and greedy `generate`
    of each window's features with mmkit's prompt (the config's suppressed tokens, -1, and blank suppression at the
    start; max_length the text context, of which CTranslate2 decodes half, as mmkit) gives mmkit's greedy tokens.
    The folder holds what faster-whisper reads beside model.bin, and CTranslate2's config.json the suppressed
    tokens, language ids and alignment heads (the model's, else CTranslate2's default: the last half of the
    decoder's layers, which is mmkit's default too)."""
    import ctranslate2

    model, tok, directory = ct2_saved
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json", "generation_config.json"} <= {
        p.name for p in directory.iterdir()}
    config = json.loads((directory / "config.json").read_text())
    assert (config["suppress_ids"], config["suppress_ids_begin"]) == (tok.suppress_tokens, tok.begin_suppress_tokens)
    assert config["lang_ids"] == (list(tok.language_ids.values()) if tok.is_multilingual else [])
    assert config["alignment_heads"] == (model.alignment_heads or [[1, h] for h in range(4)])
    ct2 = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="float32")
    assert ct2.is_multilingual == tok.is_multilingual
    features = ctranslate2.StorageView.from_array(_mel(model).numpy())
    ours, languages = _mmkit_greedy(model, tok)
    if tok.is_multilingual:
        assert [r[0][0] for r in ct2.detect_language(features)] == [f"<|{lang}|>" for lang in languages]
    prompts = [tok.sot_sequence(lang if tok.is_multilingual else None, "transcribe", True) for lang in languages]
    results = ct2.generate(features, prompts, beam_size=1, max_length=model.n_text_ctx)
    assert [r.sequences_ids[0] for r in results] == ours
    assert min(map(len, ours)) < model.n_text_ctx // 2 and max(len(set(t)) for t in ours) >= 4, ours


def test_load_speech_model_reads_the_ctranslate2_folder(ct2_saved):
    """`load_speech_model` (its CTranslate2 reader) on the folder: the model's logits within 1e-4, its
    tokenizer and decoding settings (from the generation_config.json beside model.bin), and its greedy tokens."""
    model, tok, directory = ct2_saved
    again, again_tok = load_speech_model(directory)
    heads = model.alignment_heads or [[1, h] for h in range(4)]  # CTranslate2 writes its default out
    assert again.config == {**model.config, "alignment_heads": heads}
    tokens = torch.randint(0, model.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    mel = _mel(model, AUDIO[:2])
    with torch.no_grad():
        assert (again(tokens, again.encode(mel)) - model(tokens, model.encode(mel))).abs().max().item() <= 1e-4
    for name in ("suppress_tokens", "begin_suppress_tokens", "language_ids", "is_multilingual", "timestamp_begin"):
        assert getattr(again_tok, name) == getattr(tok, name), name
    assert _mmkit_greedy(again, again_tok) == _mmkit_greedy(model, tok)


def test_faster_whisper_transcribes_as_mmkit(ct2_windows_30s):
    """faster-whisper's `WhisperModel` on the folder (float32), greedy at one temperature without timestamps, silence
    skip, fallback thresholds or the previous text (its max_length, openai's 448 hard-coded, set to the model's text
    context: it decodes half of it, as mmkit), detects mmkit's language and writes mmkit's tokens and text (up to the
    leading space mmkit strips) of whole 30 s windows. Shorter audio is not compared: faster-whisper computes the
    features of the audio alone and pads them with zeros, where openai and mmkit pad the audio to the window."""
    faster_whisper = pytest.importorskip("faster_whisper")
    model, tok, directory = ct2_windows_30s
    fw = faster_whisper.WhisperModel(str(directory), device="cpu", compute_type="float32", cpu_threads=1)
    fw.max_length = model.n_text_ctx
    transcriber = Transcriber(model, tok, DecodingOptions(**EXACT))
    varied = set()
    for seed in (0, 2):
        audio = synth_speechlike(30.0, seed=seed)
        segments, info = fw.transcribe(audio, beam_size=1, temperature=0.0, without_timestamps=True,
                                       vad_filter=False, condition_on_previous_text=False,
                                       compression_ratio_threshold=None, log_prob_threshold=None,
                                       no_speech_threshold=None)
        segments = list(segments)
        ours = transcriber.transcribe(audio)
        assert [s.tokens for s in segments] == [s.tokens for s in ours.segments]
        assert ("".join(s.text for s in segments).strip(), info.language) == (ours.text, ours.language)
        varied |= {t for s in segments for t in s.tokens}
    assert len(varied) >= 4, varied


def test_what_ctranslate2_cannot_hold_is_refused(imported, chars, english, tmp_path, monkeypatch):
    """A character tokenizer model, a tokenizer whose language layout CTranslate2 would read otherwise (the toy
    multilingual vocabulary of 2,008 ids: English-only to CTranslate2), and any model without ctranslate2 installed,
    are one line each, nothing written."""
    import importlib.util

    refused = [(chars, "a model trained with a char tokenizer is not saved for CTranslate2"),
               (imported, "a Whisper of 2008 ids with a multilingual tokenizer is not saved for CTranslate2")]
    for (model, tok, _), named in refused:
        with pytest.raises(WeightsError) as err:
            save_ct2_whisper_dir(model, tok, tmp_path / "out")
        assert one_line(err.value).startswith(named) and not (tmp_path / "out").exists()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ctranslate2"
                        else find_spec(name, *a))
    with pytest.raises(WeightsError, match=r"needs ctranslate2, which is not installed \(pip install ctranslate2\)"):
        save_ct2_whisper_dir(*english[:2], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_int8_weights_are_a_quarter_and_decode_alike(ct2_english, tmp_path):
    """quantization="int8" stores int8 weights (model.bin under 0.4 of float32's: the embedding of 51,864 rows is
    most of it). What the file holds is checked apart from CTranslate2's int8 kernels, which differ from CPU to CPU
    (with VNNI or without: a third of these wide random weights' top-1 changes between them): CTranslate2 running
    the int8 folder in float32 arithmetic decodes as mmkit's reading of it (`load_speech_model` dequantizes), and
    that model's weights are the float32 ones within half an int8 step."""
    import ctranslate2

    model, tok, directory = ct2_english
    int8 = save_ct2_whisper_dir(model, tok, tmp_path / "int8", quantization="int8")
    assert (int8 / "model.bin").stat().st_size < 0.4 * (directory / "model.bin").stat().st_size
    read, _ = load_speech_model(int8)
    exact = model.state_dict()
    for key, got in read.state_dict().items():
        if key.endswith(".weight"):
            check_within_half_int8_step(got, exact[key], key)
    features = ctranslate2.StorageView.from_array(_mel(model).numpy())
    ours, _ = _mmkit_greedy(read, tok)
    prompts = [tok.sot_sequence(None, "transcribe", True)] * len(AUDIO)
    results = ctranslate2.models.Whisper(str(int8), device="cpu", compute_type="float32").generate(
        features, prompts, beam_size=1, max_length=model.n_text_ctx)
    assert [r.sequences_ids[0] for r in results] == ours


@EXISTING
def test_a_failed_ctranslate2_write_leaves_nothing_behind(english, tmp_path, monkeypatch, existing):
    """A full disk met while CTranslate2 writes model.bin (the transformers folder written) is one line naming the
    folder; a new folder is gone, an empty one is empty again (the hidden transformers folder too)."""
    from mmkit.inference import ct2_dir

    def full_disk(source, out, files, loader, quantization):
        assert {"model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {p.name for p in
                                                                                        source.iterdir()}
        out.mkdir()
        (out / "model.bin").write_bytes(b"part")
        disk_full()

    monkeypatch.setattr(ct2_dir, "_convert", full_disk)
    model, tok, _ = english
    check_nothing_left(lambda out: save_ct2_whisper_dir(model, tok, out), tmp_path / "ct2", existing)
