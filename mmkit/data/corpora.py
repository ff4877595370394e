"""Offline English text corpora from Debian packages, so text recipes train with no download:
`fortunes` (≈15k quotations, jokes and aphorisms of the BSD fortune program, ~2.6 MB) and
`wordnet-base` (WordNet 3.0, Miller 1995: 117k synsets with definitions, examples and their
lexicographer file, "noun.animal", "verb.motion", ...). `apt-get install fortunes wordnet-base`.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
# Files that are pictures, not prose.
FORTUNE_PICTURES = ("art", "ascii-art")
WORDNET_PARTS = ("noun", "verb", "adj", "adv")
# WordNet 3.0's `lexnames` file: lexicographer file number -> name (the package leaves it out).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
# Teletype overstrikes: underlines "_\bX" (or "___\bXYZ") and bold "X\bX"; keep the plain letters.
_OVERSTRIKE = re.compile("_+\x08+|.\x08|\x08")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # adjective position markers on words: "galore(ip)"
_EXAMPLE = re.compile(r'"([^"]*)"')

T = TypeVar("T")


def _require(directory: Path, package: str) -> Path:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} not found: install the Debian package ({package}), "
                                f"e.g. apt-get install {package}")
    return directory


def fortunes(directory: str | Path | None = None, exclude: Sequence[str] = FORTUNE_PICTURES) -> list[str]:
    """Every fortune, in file order (files sorted by name): the text between `%` lines, with
    teletype overstrikes removed and the surrounding whitespace stripped.

    Args:
        directory: the fortune files (default: Debian's /usr/share/games/fortunes).
        exclude: file names to leave out (default: the ASCII-art collections).
    """
    root = _require(Path(directory) if directory else FORTUNES_DIR, "fortunes")
    out: list[str] = []
    for path in sorted(root.iterdir()):
        # The strfile index (.dat) is binary; .u8 files are symlinks to the same text.
        if not path.is_file() or path.is_symlink() or path.suffix in (".dat", ".u8") or path.name in exclude:
            continue
        text = _OVERSTRIKE.sub("", path.read_bytes().decode("utf-8", errors="replace"))
        out.extend(t.strip() for t in re.split(r"^%\s*$", text, flags=re.MULTILINE) if t.strip())
    return out


@dataclass(frozen=True)
class Synset:
    """One WordNet synset: `offset` is its byte offset in data.<pos> (unique within a part of speech)."""

    offset: int
    pos: str  # n, v, a, s (adjective satellite), r
    lexname: str  # lexicographer file, e.g. "noun.animal"
    words: tuple[str, ...]  # lemmas with spaces for underscores, e.g. ("domestic dog", "dog")
    definition: str
    examples: tuple[str, ...]

    @property
    def key(self) -> str:
        """Unique id across parts of speech, e.g. "n02084071"."""
        return f"{self.pos}{self.offset:08d}"


def parse_synset(line: str) -> Synset:
    """One line of a WordNet data.<pos> file (see wndb(5WN)) -> Synset."""
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, lex_filenum, pos, n_words = int(fields[0]), int(fields[1]), fields[2], int(fields[3], 16)
    words = tuple(_ADJ_MARKER.sub("", w).replace("_", " ") for w in fields[4 : 4 + 2 * n_words : 2])
    gloss = gloss.strip()
    examples = tuple(e.strip() for e in _EXAMPLE.findall(gloss) if e.strip())
    definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
    return Synset(offset, pos, LEXNAMES[lex_filenum], words, definition, examples)


def wordnet_synsets(directory: str | Path | None = None, parts: Sequence[str] = WORDNET_PARTS) -> list[Synset]:
    """All synsets of the given parts of speech ("noun", "verb", "adj", "adv"), in file order.

    Args:
        directory: WordNet's database files (default: Debian's /usr/share/wordnet).
    """
    root = _require(Path(directory) if directory else WORDNET_DIR, "wordnet-base")
    out: list[Synset] = []
    for part in parts:
        if part not in WORDNET_PARTS:
            raise ValueError(f"unknown WordNet part of speech {part!r}; use {', '.join(WORDNET_PARTS)}")
        with open(root / f"data.{part}", encoding="utf-8") as f:
            # The file opens with the licence, each of its lines indented by two spaces.
            out.extend(parse_synset(line) for line in f if not line.startswith("  ") and line.strip())
    return out


def wordnet_sentences(synsets: Iterable[Synset]) -> list[str]:
    """Plain English from synsets: "dog: a member of the genus Canis ..." plus each usage example."""
    out: list[str] = []
    for s in synsets:
        if s.definition:
            out.append(f"{s.words[0]}: {s.definition}.")
        out.extend(s.examples)
    return out


def is_held_out(key: str, fraction: float) -> bool:
    """A stable split: the CRC-32 of `key` puts it in the held-out part with probability `fraction`,
    whatever the order or the number of items (adding a corpus file moves nothing else)."""
    return zlib.crc32(key.encode("utf-8")) % 10_000 < round(fraction * 10_000)


def split_held_out(items: Sequence[T], fraction: float, key: Callable[[T], str] = str) -> tuple[list[T], list[T]]:
    """(kept, held out) by `is_held_out(key(item), fraction)`, each in the input order."""
    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    kept, held = [], []
    for item in items:
        (held if is_held_out(key(item), fraction) else kept).append(item)
    return kept, held


CORPORA: dict[str, Callable[[], list[str]]] = {
    "fortunes": fortunes,
    "wordnet": lambda: wordnet_sentences(wordnet_synsets()),
}


def corpus_texts(name: str) -> list[str]:
    """The documents of an embedded corpus by name ("fortunes", "wordnet")."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; embedded corpora: {', '.join(CORPORA)}")
    return CORPORA[name]()
