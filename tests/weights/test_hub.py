"""Hub downloads without a network (`mmkit.weights.hub`): the endpoint probe, the offline mode `hub_access` turns on
when the hub is out of reach, a hub-cached tokenizer loading at once then, and the commands' one-line failures in
seconds instead of ~50 s of retries. Nothing here leaves the machine: the "hub" is a closed or listening port on
127.0.0.1 (`HF_ENDPOINT`).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest
from huggingface_hub import constants
from PIL import Image

from mmkit.weights import WeightsError
from mmkit.weights.hub import failure, hub_access, hub_unreachable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def online(monkeypatch):
    """The hub's offline mode off (conftest turns it on for every test), the endpoint a closed local port."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_the_probe_says_why_the_hub_is_out_of_reach(online, monkeypatch):
    reason = hub_unreachable()
    assert reason.startswith("connecting to 127.0.0.1: ") and "refused" in reason
    with socket.socket() as server:  # a port that answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_unreachable() is None
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_unreachable() == "HF_HUB_OFFLINE is set"


def test_behind_a_proxy_the_hub_is_not_probed(online, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.example.invalid")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert hub_unreachable() is None  # the proxy may reach it: the download finds out
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    assert hub_unreachable() is None


def test_hub_access_turns_offline_mode_on_only_inside(online, caplog):
    root = logging.getLogger()
    with hub_access() as reason:
        assert "refused" in reason and constants.HF_HUB_OFFLINE
        root.error("open_clip's own download error")  # reported by the caller instead
    assert constants.HF_HUB_OFFLINE is False and root.filters == []
    root.error("after")
    assert [r.getMessage() for r in caplog.records if r.name == "root"] == ["after"]
    assert failure(OSError("x"), reason).startswith("not in the Hugging Face hub cache, and the hub is out of reach: ")
    assert failure(OSError("two\n  lines"), None) == "OSError: two lines"


def test_hub_access_leaves_a_reachable_hub_alone(online, monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        with hub_access() as reason:
            assert reason is None and constants.HF_HUB_OFFLINE is False


def test_repo_ids_fail_at_once_when_the_hub_is_out_of_reach(online, tmp_path, monkeypatch):
    from mmkit.models import Whisper

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(WeightsError, match="not in the Hugging Face hub cache, and the hub is out of reach"):
        Whisper.from_hf("no-such-owner/no-such-whisper")
    assert time.monotonic() - start < 10


def _offline_env(tmp_path) -> dict[str, str]:
    """A process whose hub is a closed local port, its cache `tmp_path/hub`, its offline mode off."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return {**env, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HUB_CACHE": str(tmp_path / "hub")}


def _cache_tokenizer(cache, repo: str) -> None:
    """A small fast tokenizer in the hub cache's layout, as a download leaves it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "photo": 4, "cat": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    commit = "0" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    tokenizer.save(str(snapshot / "tokenizer.json"))
    # the repo's model config, which AutoTokenizer reads too (timm's, for this repo)
    (snapshot / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_siglip_224"}))
    (snapshot / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>",
         "unk_token": "<unk>", "model_max_length": 64}))


@pytest.mark.slow
def test_siglip_tokenizer_from_the_hub_cache_or_one_line_at_once(tmp_path):
    """Out of reach, SigLIP's hub tokenizer loads from the hub cache at once; not cached, it fails at once with
    the reason (it took ~50 s of retries)."""
    code = ("from mmkit.data.text import open_clip_tokenizer\n"
            "try:\n"
            "    print(open_clip_tokenizer('ViT-B-16-SigLIP', context_length=6)(['a photo of a cat']).tolist())\n"
            "except OSError as e:\n"
            "    print('OSError:', e)\n")
    env = _offline_env(tmp_path)
    run = lambda: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    start = time.monotonic()
    missing = run()
    assert time.monotonic() - start < 60, "waited on retries"
    assert missing.stdout.startswith("OSError: ViT-B-16-SigLIP needs its tokenizer timm/ViT-B-16-SigLIP"), missing
    assert "not in the Hugging Face hub cache, and the hub is out of reach: connecting to 127.0.0.1" in missing.stdout
    assert "Retrying" not in missing.stderr
    _cache_tokenizer(tmp_path / "hub", "timm/ViT-B-16-SigLIP")
    cached = run()
    assert cached.stdout.strip() == "[[3, 4, 2, 3, 5, 0]]", cached  # "of" unknown, padded to 6


@pytest.mark.slow
def test_label_with_a_pretrained_tag_offline_is_one_line_in_seconds(tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "imgs" / "a" / "x.png")
    out = tmp_path / "labels.csv"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "mmkit", "label", str(tmp_path / "imgs"), "--labels", "cat,dog",
                             "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k", "--out", str(out)],
                            env=_offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert time.monotonic() - start < 90, "waited on retries"
    assert result.returncode == 2 and not out.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mmkit label: error: open_clip could not load ViT-B-32 / laion2b_s34b_b79k (not in "
                               "the Hugging Face hub cache, and the hub is out of reach: connecting to 127.0.0.1")
