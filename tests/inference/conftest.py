"""Fixtures of the inference tests: a tiny random-init MarianMT and T5 directory (transformers' layout, with
tokenizer files), written once per test module; and one intra-op thread for a module of tiny models."""
from __future__ import annotations

import pytest
import torch

from tests.inference._translation_fixtures import write_marian_dir, write_t5_dir


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    return write_marian_dir(tmp_path_factory.mktemp("marian"))


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return write_t5_dir(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread while a module of tiny models runs (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    two OpenMP threads spinning against other processes on a 2-core machine made such a module ten times slower
    (transformers' beam search runs hundreds of small ops a token); `make test`'s workers keep to one thread already
    (tests/conftest.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
