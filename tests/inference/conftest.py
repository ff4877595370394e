"""Fixtures of the translator's test files: a tiny random-init MarianMT and T5 directory (transformers' layout,
with tokenizer files), written once per test module."""
from __future__ import annotations

import pytest

from tests.inference._translation_fixtures import write_marian_dir, write_t5_dir


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    return write_marian_dir(tmp_path_factory.mktemp("marian"))


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return write_t5_dir(tmp_path_factory.mktemp("t5"))
