"""Whisper transcription audit fixes: best-of candidates ranked as openai's `MaximumLikelihoodRanker` (EOT not
counted), windows under one Mel frame not decoded, language detected (not pinned to English) by the interactive
defaults, and the initial prompt's refusals. The prompt's token-for-token parity with openai-whisper is in
test_transcribe_openai.py. Models are tiny and random (see whisper_fixtures)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import whisper_fixtures
from whisper_fixtures import synth_speechlike, write_wav

import mmkit.inference.window_decoder as window_decoder
from mmkit.audio import HOP_LENGTH, SAMPLE_RATE
from mmkit.cli.transcribe import main
from mmkit.core import KVCache
from mmkit.core.decoding import Generation
from mmkit.data.char_tokenizer import CharTokenizer
from mmkit.inference import DecodingOptions, Transcriber, greedy_options, load_transcriber, save_speech_checkpoint
from mmkit.models.whisper import Whisper

pytestmark = pytest.mark.usefixtures("single_thread")
whisper_checkpoint, whisper_hf_dir = whisper_fixtures.whisper_checkpoint, whisper_fixtures.whisper_hf_dir  # fixtures

EXACT = dict(temperatures=(0.0,), no_speech_threshold=None, logprob_threshold=None, compression_ratio_threshold=None,
             repetition_guard=False)


# --- best-of ranking (finding 3; the beam search's is in tests/core/test_decoding.py) -------------------------

# (text tokens, sum log p including <|endoftext|>) of a window's best-of candidates, all ended by EOT
CANDIDATES = [
    [([11], -1.0), ([11, 12, 13], -2.4)],  # EOT counted: -0.5 vs -0.6 keeps [11]; openai: -1.0 vs -0.8
    [([11, 12, 13, 14], -3.0), ([15, 16], -1.6), ([17], -0.9)],
    [([20, 21], -0.5), ([22, 23, 24, 25, 26], -1.4)],
]


def test_best_of_keeps_the_candidate_openais_ranker_keeps(monkeypatch):
    whisper = pytest.importorskip("whisper")
    from mmkit.data.whisper_tokenizer import WhisperTokenizer

    tok = WhisperTokenizer.from_openai(51865)
    prompt = tok.sot_sequence("en")
    n = max(len(c) for c in CANDIDATES)
    rows = [c + [c[-1]] * (n - len(c)) for c in CANDIDATES]  # best_of rows per window; repeats change no ranking

    def sampled(model, prompts, max_new, strategy, **kwargs):  # what the loop returns for the sampled rows
        seqs = [torch.tensor(prompt + tokens + [tok.eot]) for window in rows for tokens, _ in window]
        scores = torch.tensor([lp for window in rows for _, lp in window])
        return Generation(torch.zeros(len(seqs), 1), torch.zeros(len(seqs)), scores, seqs)

    monkeypatch.setattr(window_decoder, "generate", sampled)
    options = DecodingOptions(language="en", temperatures=(0.0, 0.5), best_of=n, without_timestamps=True)
    decoder = window_decoder.WindowDecoder(SimpleNamespace(n_text_ctx=448), tok, options)
    B = len(CANDIDATES)
    kept = decoder.decode_once(torch.zeros(B, 1, 4), KVCache(), torch.tensor([prompt] * B), torch.zeros(B),
                               attempt=1, audios=[np.full(10, i, np.float32) for i in range(B)])
    ranker = whisper.decoding.MaximumLikelihoodRanker(length_penalty=None)  # openai's default ranker
    best = ranker.rank([[torch.tensor(t) for t, _ in window] for window in rows],
                       [[lp for _, lp in window] for window in rows])
    assert [d.tokens for d in kept] == [rows[b][i][0] for b, i in enumerate(best)]
    assert kept[0].tokens == [11, 12, 13]  # the case counting EOT got wrong
    assert kept[0].avg_logprob == pytest.approx(-2.4 / 4)  # the reported mean still counts EOT, as openai's


# --- windows under one Mel frame (finding 5) ----------------------------------------------------------------

def test_a_file_shorter_than_one_mel_frame_gives_an_empty_transcript(whisper_checkpoint, whisper_hf_dir, tmp_path,
                                                                      capsys):
    model, tok, _ = whisper_checkpoint
    tr = Transcriber(model, tok, DecodingOptions(language="en", max_new_tokens=5, **EXACT))
    for n in (1, 10, HOP_LENGTH - 1):
        t = tr.transcribe(np.full(n, 0.1, np.float32))
        assert (t.error, t.segments, t.text) == (None, [], ""), n
    # one frame of audio is decoded: the limit is a frame, not a threshold on the level
    assert tr.transcribe(np.full(HOP_LENGTH, 0.1, np.float32)).segments
    wav = write_wav(tmp_path / "short.wav", np.full(10, 0.1, np.float32), subtype="FLOAT")
    assert main([str(wav), "--model", str(whisper_hf_dir), "--language", "en", "--max-new-tokens", "5",
                 "-f", "json", "-o", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "\n"  # the empty transcript, no noise
    assert '"segments": []' in (tmp_path / "short.json").read_text()


def test_a_tail_shorter_than_one_mel_frame_adds_no_segment(whisper_checkpoint):
    model, tok, _ = whisper_checkpoint
    tr = Transcriber(model, tok, DecodingOptions(language="en", max_new_tokens=5, without_timestamps=True, **EXACT))
    audio = synth_speechlike(30, seed=1)
    whole = tr.transcribe(audio)
    tailed = tr.transcribe(np.concatenate([audio, np.full(10, 0.1, np.float32)]))  # 30.000625 s
    assert tailed.duration == round((30 * SAMPLE_RATE + 10) / SAMPLE_RATE, 3)
    assert [s.tokens for s in tailed.segments] == [s.tokens for s in whole.segments] and len(whole.segments) == 1


# --- interactive defaults detect the language (finding 2) --------------------------------------------------

def test_load_transcriber_detects_the_language_of_multilingual_checkpoints(whisper_hf_dir):
    lt = load_transcriber(whisper_hf_dir)
    assert lt.tokenizer.is_multilingual and lt.options.language is None
    assert greedy_options(lt.tokenizer) == DecodingOptions(temperatures=(0.0,))
    audio = synth_speechlike(3, seed=4)
    detected = Transcriber.from_checkpoint(whisper_hf_dir, DecodingOptions(temperatures=(0.0,), max_new_tokens=3))
    expected = detected.transcribe(audio).language
    assert expected != "en"  # else this test could not tell detection from the old pinned English
    assert load_transcriber(whisper_hf_dir, options=None).transcribe(audio).language == expected


# --- initial prompt refusals (finding 1) -------------------------------------------------------------------

@pytest.fixture(scope="module")
def char_export(tmp_path_factory):
    """A tiny Whisper with a character tokenizer: no <|startofprev|>, so no prompt."""
    tok = CharTokenizer.build(["hello world"])
    torch.manual_seed(0)
    model = Whisper(n_audio_ctx=50, n_text_ctx=16, vocab_size=tok.vocab_size, dim=32, encoder_depth=1,
                    decoder_depth=1, num_heads=2)
    return model, tok, save_speech_checkpoint(model, tok, tmp_path_factory.mktemp("char") / "export")


def test_initial_prompt_is_refused_without_startofprev_in_one_line(char_export, tmp_path, capsys):
    model, tok, export = char_export
    with pytest.raises(ValueError, match=r"no <\|startofprev\|> token"):
        Transcriber(model, tok, DecodingOptions(initial_prompt="hello"))
    assert Transcriber(model, tok, DecodingOptions(initial_prompt="")).prompt_prefix == []  # "" is no prompt
    wav = write_wav(tmp_path / "clip.wav", synth_speechlike(1))
    assert main([str(wav), "--model", str(export), "--initial-prompt", "hello", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no <|startofprev|> token" in err and "Traceback" not in err
    assert not (tmp_path / "clip.txt").exists()


def test_initial_prompt_that_leaves_no_room_is_refused(whisper_checkpoint):
    model, tok, _ = whisper_checkpoint
    small = Whisper(n_audio_ctx=model.n_audio_ctx, n_text_ctx=6, vocab_size=tok.vocab_size, dim=8, encoder_depth=1,
                    decoder_depth=1, num_heads=2)
    # n_text_ctx 6 keeps 2 prompt tokens: <|startofprev|> + 2 + <|sot|><|en|><|transcribe|> fill all 6 positions
    with pytest.raises(ValueError, match="3 prompt and 3 task tokens fill the decoder's context of 6 tokens"):
        Transcriber(small, tok, DecodingOptions(initial_prompt="a long glossary of names"))
    with pytest.raises(TypeError, match="initial_prompt must be a string or None"):
        DecodingOptions(initial_prompt=["names"])
    # the real size keeps the last n_text_ctx // 2 - 1 tokens of " " + the stripped text, after <|startofprev|>
    text = " ".join(f"word{i}" for i in range(400))
    prefix = Transcriber(model, tok, DecodingOptions(initial_prompt=f"  {text}\n")).prompt_prefix
    assert prefix == [tok.sot_prev, *tok.encode(" " + text)[-(model.n_text_ctx // 2 - 1):]]
