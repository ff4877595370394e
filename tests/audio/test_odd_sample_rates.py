"""Sample rates with no small ratio to 16 kHz (44099 Hz from some recorders, primes): torchaudio's
dense resampling kernel for them is gigabytes whatever the file's length, so `resample` evaluates
the same filter sparsely. Memory stays small, results match torchaudio's filter, the common rates
keep torchaudio's exact output.
"""
from __future__ import annotations

import json
import logging
import math
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from mmkit.audio import SAMPLE_RATE, AudioLoadError, load_audio, resample, stream_audio
from mmkit.audio import io
from test_audio_io import _peak_hz, _tone
from tests._memory import PEAK_KIB

COMMON_RATES = [8000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000, 88_200, 96_000, 192_000]


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/status is Linux's")
def test_a_tiny_44099_hz_file_reads_in_little_memory(tmp_path):
    # the audit's 444-byte file: torchaudio's dense kernel for 44099 -> 16000 Hz is 16000 x 44133 floats
    # (2.8 GB, ~12 GB while built); peak RSS is measured in a fresh process, after the imports, with an
    # address-space cap so that a regression fails fast instead of taking the machine's memory
    path = tmp_path / "odd_tiny.wav"
    sf.write(path, np.full(200, 0.01, np.float32), 44_099, subtype="PCM_16")
    assert path.stat().st_size == 444
    script = textwrap.dedent(f"""
        import json, resource
        from mmkit.audio import load_audio
        vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 30), resource.RLIM_INFINITY))
        before = peak_kib()
        y = load_audio({str(path)!r})
        after = peak_kib()
        print(json.dumps({{"growth_mb": (after - before) / 1024, "n": int(y.size), "mean": float(y.mean())}}))
    """)
    done = subprocess.run([sys.executable, "-c", PEAK_KIB + script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["growth_mb"] < 500, result
    assert result["n"] == math.ceil(200 * SAMPLE_RATE / 44_099) and 0 < result["mean"] < 0.011


@pytest.mark.parametrize("sr", [1, 7, 997, 8001, 22_051, 44_099, 47_999, 96_001, 383_999])
def test_odd_rates_give_finite_audio_of_the_right_length(tmp_path, sr):
    seconds = 40 if sr < 1000 else 1.5
    x = _tone(min(300, sr / 4), sr, seconds) if sr >= 8000 else np.full(int(sr * seconds), 0.25, np.float32)
    sf.write(tmp_path / "a.wav", x, sr, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav")
    assert y.dtype == np.float32 and y.size == math.ceil(x.size * SAMPLE_RATE / sr)
    assert np.isfinite(y).all()
    inner = y[y.size // 4:-y.size // 4]  # away from the filter's edges (zeros beyond the ends)
    if sr >= 8000:
        assert abs(_peak_hz(inner) - 300) < 3
        assert np.sqrt(np.mean(inner**2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-2)
    else:
        np.testing.assert_allclose(inner, 0.25, atol=1e-3)


@pytest.mark.parametrize("sr, sample_rate", [(1999, 1000), (997, 1000), (44_100, 16_000), (11_025, 16_000),
                                             (16_000, 44_100), (7, 3)])
def test_sparse_resampling_is_torchaudios_filter(monkeypatch, sr, sample_rate):
    # small enough for torchaudio's dense kernel, so compare with it, computed in float64 (torchaudio
    # builds its float32 kernel in float32, off by up to ~1e-4 for large ratios); the sparse weights
    # are computed in float64 and stored in float32
    monkeypatch.setattr(io, "_MAX_DENSE_KERNEL", 0)
    x = np.random.default_rng(sr).standard_normal((2, int(sr * 1.3) + 5)).astype(np.float32) * 0.1
    y = resample(x, sr, sample_rate)
    expected = AF.resample(torch.from_numpy(x).double(), sr, sample_rate).numpy()
    assert y.dtype == np.float32 and y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sr", COMMON_RATES)
def test_common_rates_keep_torchaudios_exact_output(sr):
    x = np.random.default_rng(sr).standard_normal(int(sr * 0.7)).astype(np.float32) * 0.1
    expected = AF.resample(torch.from_numpy(x), sr, SAMPLE_RATE).numpy() if sr != SAMPLE_RATE else x
    np.testing.assert_array_equal(resample(x, sr), expected)


@pytest.mark.parametrize("sr", [44_099, 22_051])
def test_odd_rate_streamed_blocks_equal_the_whole_file(tmp_path, sr):
    x = np.random.default_rng(sr).standard_normal(int(sr * 3.3)).astype(np.float32) * 0.1
    sf.write(tmp_path / "a.wav", x, sr, subtype="FLOAT")
    blocks = list(stream_audio(tmp_path / "a.wav", block_seconds=0.7))
    assert len(blocks) >= 2
    np.testing.assert_allclose(np.concatenate(blocks), resample(x, sr), rtol=0, atol=1e-6)


def test_sparse_resampling_is_logged_once_per_rate_pair(tmp_path, caplog):
    sf.write(tmp_path / "a.wav", _tone(300, 44_099, 0.2), 44_099)
    io._sparse_taps.cache_clear()
    with caplog.at_level(logging.INFO, logger="mmkit.audio.io"):
        load_audio(tmp_path / "a.wav")
        load_audio(tmp_path / "a.wav")
    assert [r.getMessage() for r in caplog.records].count(
        "resampling at ratio 44099:16000 (no small ratio): torchaudio's filter evaluated sparsely") == 1


def test_an_absurd_sample_rate_is_refused_in_one_line(tmp_path):
    path = tmp_path / "corrupt.wav"
    sf.write(path, np.zeros(100, np.float32), SAMPLE_RATE, subtype="PCM_16")
    header = bytearray(path.read_bytes())
    header[24:32] = struct.pack("<II", 2**31 - 1, (2**31 - 1) * 2 % 2**32)  # fmt chunk: rate, byte rate
    path.write_bytes(header)
    with pytest.raises(AudioLoadError) as err:
        load_audio(path)
    assert err.value.reason == "sample rate 2147483647 Hz: above 1000000 Hz (a corrupt header?)"
    with pytest.raises(ValueError, match="each must be in 1..1000000 Hz"):
        resample(np.zeros(10, np.float32), 0)
