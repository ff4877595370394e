"""The offline corpora readers: fortune files and WordNet data lines parsed from small files
written here (exact values), and the installed Debian packages when present."""
from __future__ import annotations

from pathlib import Path

import pytest

from mmkit.data.corpora import (
    FORTUNES_DIR, WORDNET_DIR, corpus_texts, fortunes, is_held_out, parse_synset, split_held_out, wordnet_sentences,
    wordnet_synsets,
)

DOG = ("02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 002 @ 02083346 n 0000 ~ 01322604 n 0000 "
       '| a member of the genus Canis; occurs in many breeds; "the dog barked all night"  \n')
GALORE = '00015247 00 s 01 galore(ip) 0 001 & 00013887 a 0000 | in great numbers; "apples galore"; "rolls galore" \n'


def test_fortunes_split_on_percent_lines_and_drop_overstrikes(tmp_path: Path) -> None:
    (tmp_path / "jokes").write_text("First one.\n%\n_\bB_\bo_\bl_\bd text\n  -- Someone\n%\n\n%\nLast.\n")
    (tmp_path / "jokes.dat").write_bytes(b"\x00\x02binary index")
    (tmp_path / "jokes.u8").symlink_to(tmp_path / "jokes")
    (tmp_path / "art").write_text("  /\\_/\\ \n%\n")
    assert fortunes(tmp_path) == ["First one.", "Bold text\n  -- Someone", "Last."]


def test_wordnet_lines_parse_into_synsets(tmp_path: Path) -> None:
    dog = parse_synset(DOG)
    assert (dog.offset, dog.pos, dog.lexname, dog.key) == (2084071, "n", "noun.animal", "n02084071")
    assert dog.words == ("dog", "domestic dog", "Canis familiaris")
    assert dog.definition == "a member of the genus Canis; occurs in many breeds"
    assert dog.examples == ("the dog barked all night",)
    galore = parse_synset(GALORE)
    assert (galore.words, galore.lexname, galore.examples) == (("galore",), "adj.all", ("apples galore", "rolls galore"))
    (tmp_path / "data.noun").write_text("  1 This software and database is licensed\n" + DOG)
    assert wordnet_sentences(wordnet_synsets(tmp_path, ["noun"])) == [
        "dog: a member of the genus Canis; occurs in many breeds.", "the dog barked all night"]


def test_missing_package_and_unknown_names_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        fortunes(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown corpus"):
        corpus_texts("shakespeare")
    with pytest.raises(ValueError, match="part of speech"):
        wordnet_synsets(tmp_path, ["pronoun"])


def test_held_out_split_is_stable_and_about_the_asked_fraction() -> None:
    items = [f"document {i}" for i in range(4000)]
    kept, held = split_held_out(items, 0.1)
    assert 300 < len(held) < 500 and len(kept) + len(held) == 4000
    assert split_held_out(list(reversed(items)), 0.1)[1] == list(reversed(held))  # order does not matter
    assert all(is_held_out(h, 0.1) for h in held) and not any(is_held_out(k, 0.1) for k in kept)


@pytest.mark.skipif(not FORTUNES_DIR.is_dir() or not WORDNET_DIR.is_dir(), reason="Debian corpora not installed")
def test_installed_debian_corpora() -> None:
    texts = fortunes()
    assert len(texts) > 10_000 and not any("\x08" in t or t.strip() != t for t in texts)
    nouns = wordnet_synsets(parts=["noun"])
    assert len(nouns) == 82_115  # WordNet 3.0 noun synsets
    assert {s.lexname for s in nouns if s.words[0] == "dog"} >= {"noun.animal", "noun.person"}
