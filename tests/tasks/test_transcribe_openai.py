"""openai-whisper `.pt` checkpoints in `mmkit transcribe`: the tokenizer built from openai-whisper's
`.tiktoken` files equals openai's own (`whisper.tokenizer.get_tokenizer`: ids, special tokens,
prompts, suppressed tokens) for all three vocabulary sizes, and the command on a tiny random
openai-format checkpoint decodes what openai-whisper's own decoder and mmkit's greedy loop decode, with and
without an initial prompt."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from whisper_fixtures import synth_speechlike, write_wav

from mmkit.audio import log_mel_spectrogram, pad_or_trim
from mmkit.core import Greedy, SuppressAtBegin, SuppressTokens, generate
from mmkit.data.tiktoken_files import bytes_to_unicode
from mmkit.data.whisper_tokenizer import TokenizerError, WhisperTokenizer
from mmkit.models import Whisper
from mmkit.cli.transcribe import main
from mmkit.inference import load_speech_model as load_checkpoint, save_speech_checkpoint as save_checkpoint
from mmkit.inference import DecodingOptions as MmkitOptions, Transcriber

whisper = pytest.importorskip("whisper")
from whisper.decoding import DecodingOptions, DecodingTask, SuppressBlank  # noqa: E402
from whisper.model import ModelDimensions  # noqa: E402
from whisper.tokenizer import get_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

# vocab_size -> get_tokenizer arguments (openai: multilingual iff n_vocab >= 51865; 51866 adds "yue")
VOCABS = {51864: dict(multilingual=False), 51865: dict(multilingual=True, num_languages=99),
          51866: dict(multilingual=True, num_languages=100)}
TEXTS = [
    "Hello world, it's a test. Don't we've they'll I'd?",
    " Grüße aus München – die Straße ist naß! Über Öl & Äpfel.",
    "你好，世界。日本語のテキストです。한국어 텍스트",
    "♪♪ la la ♪ 🎵🎶 👍🏽 👨‍👩‍👧 ♩♫♬",
    "  leading spaces\t\ttabs\n\nnew lines\r\n   trailing   ",
    "12345 3.14159 1,000,000 (a) [b] {c} <d> \"e\" #f @g -- --- >>>",
    " ",
    "",
]


@pytest.fixture(scope="module", params=sorted(VOCABS))
def pair(request):
    """(mmkit tokenizer from openai-whisper's assets, openai's tokenizer) for one vocabulary size."""
    kwargs = VOCABS[request.param]
    return WhisperTokenizer.from_openai(request.param), get_tokenizer(**kwargs), kwargs


def _random_texts(n: int, seed: int = 0) -> list[str]:
    """Mixed-script strings that exercise many merge orders (ties between splits included)."""
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEZ0123456789 .,'!?-\n\t") + list("äöüßéèçñ") + \
        list("的一是不了人我在有他这中大来上") + list("あいうえおカタナ") + ["♪", "🎵", "😀", "  "]
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(alphabet, size=int(rng.integers(1, 40)))) for _ in range(n)]


def test_tiktoken_tokenizer_encodes_and_decodes_as_openai(pair):
    tok, ref, _ = pair
    for text in TEXTS + _random_texts(300):
        ids = tok.encode(text)
        assert ids == ref.encode(text), text
        assert tok.decode(ids) == ref.decode(ids) == text
    # every text token is the same byte string
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    n_text = ref.eot
    ours = [bytes(byte_of[c] for c in tok.backend.id_to_token(i)) for i in range(n_text)]
    assert ours == [ref.encoding.decode_single_token_bytes(i) for i in range(n_text)]


def test_tiktoken_tokenizer_special_tokens_are_openais(pair):
    tok, ref, kwargs = pair
    enc = ref.encoding
    assert tok.vocab_size == enc.n_vocab
    assert [tok.backend.id_to_token(i) for i in range(ref.eot, enc.n_vocab)] == [
        enc.decode_single_token_bytes(i).decode() for i in range(ref.eot, enc.n_vocab)]
    assert (tok.eot, tok.sot, tok.sot_prev, tok.sot_lm, tok.no_speech, tok.no_timestamps) == (
        ref.eot, ref.sot, ref.sot_prev, ref.sot_lm, ref.no_speech, ref.no_timestamps)
    assert (tok.transcribe, tok.translate, tok.timestamp_begin) == (ref.transcribe, ref.translate, ref.timestamp_begin)
    assert tok.timestamp_end == enc.n_vocab and tok.backend.id_to_token(enc.n_vocab - 1) == "<|30.00|>"
    assert tok.is_multilingual == kwargs["multilingual"]
    assert tok.language_ids == dict(sorted(zip(ref.all_language_codes, ref.all_language_tokens), key=lambda p: p[1]))
    if kwargs["multilingual"]:
        for language, task in (("en", "transcribe"), ("de", "translate"), ("ja", "transcribe")):
            prompted = get_tokenizer(**kwargs, language=language, task=task)
            assert tok.sot_sequence(language, task) == list(prompted.sot_sequence)
            assert tok.sot_sequence(language, task, without_timestamps=True) == list(
                prompted.sot_sequence_including_notimestamps)
    else:
        assert tok.sot_sequence(None, without_timestamps=True) == list(ref.sot_sequence_including_notimestamps)
    # decoding defaults: openai's suppress_tokens="-1" list and SuppressBlank
    suppress = DecodingTask._get_suppress_tokens(SimpleNamespace(options=DecodingOptions(), tokenizer=ref))
    assert tok.suppress_tokens == list(suppress)
    logits = torch.zeros(1, enc.n_vocab)
    SuppressBlank(ref, sample_begin=1).apply(logits, torch.tensor([[ref.sot]]))
    assert tok.begin_suppress_tokens == torch.isinf(logits[0]).nonzero()[:, 0].tolist()
    ts = [tok.timestamp_begin, *tok.encode(" hi"), tok.timestamp_begin + 50]
    assert tok.decode_with_timestamps(ts) == ref.decode_with_timestamps(ts) == "<|0.00|> hi<|1.00|>"


def test_tiktoken_refusals(tmp_path, monkeypatch):
    import importlib.util

    with pytest.raises(TokenizerError, match="no openai-whisper tokenizer has 51000 ids"):
        WhisperTokenizer.from_openai(51000)
    asset = Path(importlib.util.find_spec("whisper").submodule_search_locations[0]) / "assets" / "gpt2.tiktoken"
    with pytest.raises(TokenizerError, match="cannot make a vocabulary of 1000 ids"):
        WhisperTokenizer.from_tiktoken(asset, 1000)
    (tmp_path / "bad.tiktoken").write_text("aGk= 0\naGk= 1\n")  # the same token twice: rank 0 left out
    with pytest.raises(TokenizerError, match="must be 0..0"):
        WhisperTokenizer.from_tiktoken(tmp_path / "bad.tiktoken", 1000)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(TokenizerError, match="pip install openai-whisper"):
        WhisperTokenizer.from_openai(51865)


# --- the command on a tiny openai-format checkpoint ------------------------------------------------

def _openai_model(n_vocab: int, seed: int = 0) -> whisper.model.Whisper:
    """Tiny random openai-whisper model with 30 s windows (so mmkit cuts audio as for real ones)."""
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=1,
                           n_vocab=n_vocab, n_text_ctx=64, n_text_state=64, n_text_head=4, n_text_layer=2)
    torch.manual_seed(seed)
    model = whisper.model.Whisper(dims)
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.2)  # torch.empty in openai's code
        model.decoder.token_embedding.weight.normal_(0, 0.5)  # peaked logits: no near-ties in argmax
    return model.eval()


def _save(model: whisper.model.Whisper, path: Path) -> Path:
    torch.save({"dims": asdict(model.dims), "model_state_dict": model.state_dict()}, path)  # as openai's files
    return path


@pytest.fixture(scope="module")
def openai_pt(tmp_path_factory):
    model = _openai_model(51865)
    return model, _save(model, tmp_path_factory.mktemp("openai") / "tiny-random.pt")


EXACT = ["--temperature", "0", "--no-speech-threshold", "none", "--logprob-threshold", "none",
         "--compression-ratio-threshold", "none", "--no-repetition-guard"]


def test_cli_transcribes_with_an_openai_checkpoint(openai_pt, tmp_path, capsys):
    reference, pt = openai_pt
    audio = synth_speechlike(4, seed=1)
    wav = write_wav(tmp_path / "clip.wav", audio)
    out = tmp_path / "out"
    args = [str(wav), "--model", str(pt), "--without-timestamps", "--max-new-tokens", "10", *EXACT]
    assert main([*args, "--language", "de", "-f", "all", "-o", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {f"clip.{ext}" for ext in ("txt", "json", "srt", "vtt", "tsv")}
    doc = json.loads((out / "clip.json").read_text())
    (segment,) = doc["segments"]
    assert doc["language"] == "de" and len(segment["tokens"]) == 10
    assert capsys.readouterr().out.strip() == doc["text"].strip()

    # the same decode by openai-whisper on its own model ...
    mel = log_mel_spectrogram(pad_or_trim(audio))  # (80, 3000)
    ref_tok = get_tokenizer(True, language="de", task="transcribe")
    result = whisper.decoding.decode(reference, mel, DecodingOptions(
        language="de", without_timestamps=True, sample_len=10, fp16=False))
    assert segment["tokens"] == result.tokens and segment["text"].strip() == result.text
    # ... and by mmkit's greedy loop on the imported model, with openai's prompt and suppressions
    model = Whisper.from_openai(pt)
    prompt = torch.tensor([ref_tok.sot_sequence_including_notimestamps])
    suppress = DecodingTask._get_suppress_tokens(SimpleNamespace(options=DecodingOptions(), tokenizer=ref_tok))
    with torch.no_grad():
        g = generate(model, prompt, 10, Greedy(), context=model.encode(mel[None]), eos_id=ref_tok.eot,
                     logit_filters=[SuppressAtBegin(ref_tok.encode(" ") + [ref_tok.eot], prompt.shape[1]),
                                    SuppressTokens(list(suppress))])
    new = g.sequences[0][prompt.shape[1]:].tolist()
    assert new[:new.index(ref_tok.eot) if ref_tok.eot in new else None] == segment["tokens"]

    # language detection (no --language, timestamps on) picks openai's language
    assert main([str(wav), "--model", str(pt), "--max-new-tokens", "10", *EXACT, "-f", "json", "-o",
                 str(tmp_path / "detect"), "--quiet"]) == 0
    _, probs = reference.detect_language(mel)
    detected = json.loads((tmp_path / "detect" / "clip.json").read_text())
    assert detected["language"] == max(probs, key=probs.get)


def test_tokenizer_override_native_conversion_and_bad_vocab_sizes(openai_pt, tmp_path, capsys):
    _, pt = openai_pt
    asset = Path(whisper.__file__).parent / "assets" / "multilingual.tiktoken"
    model, tok = load_checkpoint(pt, tokenizer=asset)
    assert tok.vocab_size == model.vocab_size == 51865 and tok.is_multilingual
    # .pt -> mmkit checkpoint directory: the same weights and the same tokenizer come back
    native_model, native = load_checkpoint(save_checkpoint(model, tok, tmp_path / "native"))
    assert native.suppress_tokens == tok.suppress_tokens and native.begin_suppress_tokens == tok.begin_suppress_tokens
    assert native.encode(TEXTS[2]) == tok.encode(TEXTS[2]) and native.sot_sequence("de") == tok.sot_sequence("de")
    torch.testing.assert_close(native_model.state_dict(), model.state_dict(), rtol=0, atol=0)
    odd = _save(_openai_model(1000), tmp_path / "odd.pt")
    wav = write_wav(tmp_path / "clip.wav", synth_speechlike(1))
    assert main([str(wav), "--model", str(odd)]) == 2  # one message, no traceback
    assert "no openai-whisper tokenizer has 1000 ids" in capsys.readouterr().err
    assert main([str(wav), "--model", str(pt), "--tokenizer", str(tmp_path)]) == 2  # a directory without one
    assert "no Whisper tokenizer files" in capsys.readouterr().err


# --- the initial prompt ------------------------------------------------------------------------------

# 40+ tokens: more than n_text_ctx // 2 - 1 = 31, so openai's truncation to the last tokens is exercised too
PROMPT = "  Glossary: mmkit, Whisper, tiktoken, CTranslate2, faster-whisper; names are spelled as written here, " \
         "with commas and full stops.  "


@pytest.fixture(scope="module")
def openai_imported(openai_pt):
    return load_checkpoint(openai_pt[1])


@pytest.fixture(scope="module")
def prompted_pt(tmp_path_factory):
    """(openai model, the same imported by mmkit) whose <|nospeech|> logit is scaled so that its probability
    at <|startoftranscript|> is neither 0 nor 1 after the prompt (a random model's is ~1e-6: compared at 4
    decimals, reading it at the wrong position would pass)."""
    model = _openai_model(51865)
    with torch.no_grad():
        model.decoder.token_embedding.weight[get_tokenizer(True).no_speech] *= 4.0
    return model, load_checkpoint(_save(model, tmp_path_factory.mktemp("prompted") / "nospeech.pt"))


@pytest.mark.parametrize("beam_size", [None, 5], ids=["greedy", "beam5"])
@pytest.mark.parametrize("without_timestamps", [True, False], ids=["notimestamps", "timestamps"])
def test_initial_prompt_decodes_as_openai(prompted_pt, beam_size, without_timestamps):
    """<|startofprev|> + the prompt's last tokens before the task tokens: the tokens, the detected language (from
    <|startoftranscript|> alone, as openai's `detect_language`) and the no-speech probability (read at
    <|startoftranscript|>, after the prompt) are openai-whisper's `decode(..., DecodingOptions(prompt=...))`."""
    reference, (model, tok) = prompted_pt
    assert len(tok.encode(" " + PROMPT.strip())) > model.n_text_ctx // 2 - 1
    audio = synth_speechlike(30, seed=2)  # one full window: openai's decode sees the same 30 s
    mel = log_mel_spectrogram(pad_or_trim(audio))
    exact = dict(without_timestamps=without_timestamps, temperatures=(0.0,), no_speech_threshold=None,
                 logprob_threshold=None, compression_ratio_threshold=None, repetition_guard=False, max_new_tokens=10,
                 beam_size=beam_size or 1)
    ours = Transcriber(model, tok, MmkitOptions(initial_prompt=PROMPT, **exact)).transcribe(audio)
    result = whisper.decoding.decode(reference, mel, DecodingOptions(
        prompt=PROMPT, without_timestamps=without_timestamps, sample_len=10, fp16=False, beam_size=beam_size))
    assert [t for s in ours.segments for t in s.tokens] == result.tokens and result.tokens
    assert ours.language == result.language
    assert ours.segments[0].no_speech_prob == pytest.approx(result.no_speech_prob, abs=1e-4)
    assert 0.01 < result.no_speech_prob < 0.99, result.no_speech_prob
    # the prompt reached the decoder: without it the text and the no-speech probability change
    plain = Transcriber(model, tok, MmkitOptions(**exact)).transcribe(audio)
    assert [t for s in plain.segments for t in s.tokens] != result.tokens
    assert abs(plain.segments[0].no_speech_prob - ours.segments[0].no_speech_prob) > 0.01


def test_cli_initial_prompt_is_the_api_prompt(openai_pt, openai_imported, tmp_path):
    model, tok = openai_imported
    audio = synth_speechlike(4, seed=3)
    wav = write_wav(tmp_path / "clip.wav", audio)
    args = [str(wav), "--model", str(openai_pt[1]), "--without-timestamps", "--max-new-tokens", "8", *EXACT,
            "--language", "en", "-f", "json", "-o", str(tmp_path), "--quiet", "--initial-prompt", PROMPT]
    assert main(args) == 0
    (segment,) = json.loads((tmp_path / "clip.json").read_text())["segments"]
    api = Transcriber(model, tok, MmkitOptions(
        language="en", without_timestamps=True, temperatures=(0.0,), no_speech_threshold=None, logprob_threshold=None,
        compression_ratio_threshold=None, repetition_guard=False, max_new_tokens=8, initial_prompt=PROMPT))
    (expected,) = api.transcribe(audio).segments
    assert segment["tokens"] == expected.tokens and segment["no_speech_prob"] == round(expected.no_speech_prob, 4)


# --- beam search with hypotheses that end early ------------------------------------------------------

@pytest.fixture(scope="module")
def early_eot_pt(tmp_path_factory):
    """(openai model, the same imported by mmkit) whose <|endoftext|> and timestamp logits are scaled up, so
    that beams end after a few tokens and finished hypotheses of different lengths compete (with the tiny
    model above every beam runs to the limit, where the ranking's length rule never matters)."""
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=4, n_text_layer=2)
    torch.manual_seed(0)
    model = whisper.model.Whisper(dims)
    ref = get_tokenizer(True)
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.2)
        model.decoder.token_embedding.weight.normal_(0, 0.5)
        model.decoder.token_embedding.weight[ref.timestamp_begin:] *= 2.0
        model.decoder.token_embedding.weight[ref.eot] *= 10.2
    model.eval()
    return model, load_checkpoint(_save(model, tmp_path_factory.mktemp("early_eot") / "eot.pt"))


def test_beam_search_with_early_ending_hypotheses_keeps_openais_choice(early_eot_pt):
    """openai ranks finished beams by sum log p / text tokens (EOT not counted); counting EOT kept another one."""
    reference, (model, tok) = early_eot_pt
    audio = synth_speechlike(30, seed=0)
    result = whisper.decoding.decode(reference, log_mel_spectrogram(pad_or_trim(audio)), DecodingOptions(
        language="en", without_timestamps=True, sample_len=30, fp16=False, beam_size=5))
    ours = Transcriber(model, tok, MmkitOptions(language="en", without_timestamps=True, temperatures=(0.0,),
                                                no_speech_threshold=None, logprob_threshold=None,
                                                compression_ratio_threshold=None, repetition_guard=False,
                                                max_new_tokens=30, beam_size=5)).transcribe(audio)
    assert len(result.tokens) < 30  # openai's best beam ended: finished hypotheses were ranked
    assert [t for s in ours.segments for t in s.tokens] == result.tokens
