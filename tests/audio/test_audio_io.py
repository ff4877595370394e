"""load_audio: formats, channel mixing, resampling to 16 kHz, and the bad-input policy."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from mmkit.audio import SAMPLE_RATE, AudioLoadError, load_audio, resample, stream_audio


def _tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / sr)[spectrum.argmax()])


def test_16k_mono_float_wav_loads_bit_exact(tmp_path):
    x = _tone(440, SAMPLE_RATE, 0.5) * 2.5  # clipped (|x| > 1) audio is valid and kept as is
    sf.write(tmp_path / "a.wav", x, SAMPLE_RATE, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav")
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_array_equal(y, x)


def test_stereo_44k_int16_is_mixed_down_and_resampled(tmp_path):
    sr = 44_100
    left, right = _tone(1000, sr, 1.0, 0.6), _tone(1000, sr, 1.0, 0.2)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), sr, subtype="PCM_16")
    y = load_audio(tmp_path / "s.wav")
    assert abs(y.size - SAMPLE_RATE) <= 1
    assert abs(_peak_hz(y) - 1000) < 2
    inner = y[1000:-1000]  # away from the resampling filter's edges
    assert np.sqrt(np.mean(inner**2)) == pytest.approx(0.4 / np.sqrt(2), rel=1e-2)  # mean of channels


@pytest.mark.parametrize("fmt, sr", [("FLAC", 22_050), ("OGG", 48_000), ("MP3", 32_000)])
def test_compressed_formats(tmp_path, fmt, sr):
    path = tmp_path / f"a.{fmt.lower()}"
    try:
        sf.write(path, _tone(700, sr, 1.0), sr, format=fmt)
    except (sf.LibsndfileError, TypeError, ValueError) as e:
        pytest.skip(f"this libsndfile cannot write {fmt}: {e}")
    y = load_audio(path)
    assert abs(y.size - SAMPLE_RATE) < SAMPLE_RATE * 0.1  # lossy codecs may pad a few frames
    assert abs(_peak_hz(y) - 700) < 3


def test_custom_target_rate(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(300, SAMPLE_RATE, 1.0), SAMPLE_RATE)
    assert load_audio(tmp_path / "a.wav", sample_rate=8000).size == 8000


def test_not_audio_missing_and_empty_files_raise(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 20)
    with pytest.raises(AudioLoadError, match="not a readable audio file") as err:
        load_audio(text)
    assert err.value.path == str(text) and str(text) in str(err.value)
    # callers show `path: reason` (the CLI) or the reason alone (the speech demo, where the path is the
    # server's temporary file): soundfile's "Error opening '<path>': ..." must not repeat it
    assert err.value.reason == "not a readable audio file (Format not recognised)"
    assert str(err.value).count("notes.wav") == 1
    with pytest.raises(AudioLoadError, match="file not found"):
        load_audio(tmp_path / "missing.flac")
    with pytest.raises(AudioLoadError, match="a folder, not an audio file"):
        load_audio(tmp_path)
    sf.write(tmp_path / "empty.wav", np.zeros((0,), np.float32), SAMPLE_RATE)
    with pytest.raises(AudioLoadError, match="empty audio"):
        load_audio(tmp_path / "empty.wav")


def test_non_finite_samples_are_refused(tmp_path):
    x = _tone(440, SAMPLE_RATE, 0.1)
    x[[5, 9]] = [np.nan, np.inf]
    sf.write(tmp_path / "nan.wav", x, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match="2 non-finite"):
        load_audio(tmp_path / "nan.wav")


def test_samples_far_beyond_full_scale_are_refused_but_integer_scaled_floats_are_heard(tmp_path):
    """A float file of samples x 1e30 made a transcript of NaN (log-mel power overflows float32): refused in
    one line. Floats written at int16/int32 scale are loud, not broken: they load as they are."""
    x = _tone(440, SAMPLE_RATE, 0.1)
    sf.write(tmp_path / "huge.wav", x * 1e30, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match=r"samples reach [0-9.]+e\+(29|30), far beyond full scale"):
        load_audio(tmp_path / "huge.wav")
    sf.write(tmp_path / "int32_scaled.wav", x * 2**31, SAMPLE_RATE, subtype="FLOAT")
    assert np.abs(load_audio(tmp_path / "int32_scaled.wav")).max() > 1e9


@pytest.mark.parametrize("sr, channels", [(44_100, 2), (48_000, 1), (8_000, 1), (16_000, 2), (22_050, 1), (11_025, 1)])
def test_streamed_blocks_equal_the_whole_file(tmp_path, sr, channels):
    # blockwise mixing and resampling (bounded memory for long files) gives the whole signal's samples:
    # each block's sinc filter sees the same neighbours (issue 9 #4)
    x = np.random.default_rng(sr).standard_normal((int(sr * 3.3), channels)).astype(np.float32) * 0.1
    sf.write(tmp_path / "a.wav", x, sr, subtype="FLOAT")
    mono = x.mean(axis=1, dtype=np.float32)
    whole = mono if sr == SAMPLE_RATE else resample(mono, sr)
    blocks = list(stream_audio(tmp_path / "a.wav", block_seconds=0.7))
    assert len(blocks) >= 2 and all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_allclose(np.concatenate(blocks), whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(load_audio(tmp_path / "a.wav"), whole, rtol=0, atol=1e-6)


def test_bad_samples_partway_raise_from_the_stream(tmp_path):
    x = _tone(440, SAMPLE_RATE, 3.0)
    x[40_000] = np.nan  # in the third 1 s block
    sf.write(tmp_path / "nan.wav", x, SAMPLE_RATE, subtype="FLOAT")
    stream = stream_audio(tmp_path / "nan.wav", block_seconds=1.0)
    assert len(next(stream)) == SAMPLE_RATE and len(next(stream)) == SAMPLE_RATE
    with pytest.raises(AudioLoadError, match="1 non-finite"):
        next(stream)
