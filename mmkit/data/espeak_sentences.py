"""The sentences of the espeak-ng speech corpus (`espeak_corpus.py`): compositional English over a
few hundred words, from templates with word-category slots, drawn so that held-out sentences are
new combinations of words that training also contains (systematic generalisation, as in
Lake & Baroni's SCAN splits: new compositions of known parts).
"""
from __future__ import annotations

import random
from typing import Sequence

_W = {k: v.split() for k, v in dict(
    animal="cat dog bird horse mouse rabbit fox bear lion tiger wolf duck goat sheep frog snake owl whale",
    person="teacher doctor farmer baker driver painter singer pilot sailor student child girl boy king queen "
           "friend neighbor nurse",
    thing="book table chair window door garden river bridge road house car boat train letter picture song "
          "story ball box bottle cup lamp clock key phone coat hat shoe apple orange bread cake cheese flower "
          "tree stone hill forest city village market school kitchen basket bicycle candle ladder pencil",
    adjective="big small old young happy sad red blue green yellow black white brown quiet loud fast slow "
              "bright dark warm cold heavy clever lazy brave gentle angry busy tired hungry strange famous tiny "
              "huge lovely noisy careful friendly purple golden",
    past="found saw took bought painted opened closed carried moved washed cleaned watched followed helped "
         "visited built broke fixed dropped lifted pushed pulled caught chased sold brought wanted liked "
         "needed",
    base="find see take buy paint open close carry move wash clean watch follow help visit build fix drop "
         "lift push pull catch sell bring",
    intransitive="slept laughed waited danced smiled jumped ran walked sang swam arrived left stopped "
                 "rested shouted",
    adverb="quickly slowly quietly happily carefully loudly early late again together",
    preposition="near under behind beside above inside outside across through past",
    number="two three four five six seven eight nine ten eleven twelve twenty",
    name="anna ben carlos diana emma frank grace henry ivan julia kevin laura maria nora oscar peter rosa "
         "sam tom victor",
    day="monday tuesday wednesday thursday friday saturday sunday",
    time="morning evening night afternoon",
    modal="will can should must might",
    pronoun="we they you i",
    plural="cats dogs birds horses rabbits foxes bears ducks goats frogs owls teachers doctors farmers "
           "bakers drivers painters singers students girls boys friends books tables chairs windows boxes "
           "bottles cups lamps clocks keys coats hats apples flowers trees stones baskets candles pencils",
).items()}
_NOUN = _W["animal"] + _W["person"] + _W["thing"]
_SLOTS = {**_W, "noun": _NOUN}

# Templates: "{category}" slots drawn uniformly; 4 to 9 words, so that an utterance stays within a
# few seconds at the slowest speed.
_TEMPLATES = (
    "the {adjective} {noun} {past} the {noun}",
    "{name} {past} a {adjective} {noun}",
    "the {noun} {intransitive} {preposition} the {thing}",
    "{name} and {name} {past} the {noun} on {day}",
    "{number} {adjective} {plural} {intransitive} {adverb}",
    "did you see the {adjective} {noun} {preposition} the {thing}",
    "please {base} the {adjective} {thing} {adverb}",
    "my {person} {intransitive} in the {time}",
    "where is the {adjective} {noun}",
    "{pronoun} {modal} {base} the {noun} on {day}",
    "the {person} {past} {number} {plural}",
    "{name} {intransitive} {adverb} {preposition} the {thing}",
)


def make_sentence(rng: random.Random, pools: dict[str, list[str]] | None = None) -> str:
    """One random sentence from the templates (lowercase words, no punctuation); `pools` restricts
    the words of each slot (templates with an empty slot are not used)."""
    pools = pools or _SLOTS
    template = rng.choice([t for t in _TEMPLATES if all(pools.get(slot) for slot in _slots(t))])
    return " ".join(rng.choice(pools[w[1:-1]]) if w.startswith("{") else w for w in template.split())


def _slots(template: str) -> list[str]:
    return [w[1:-1] for w in template.split() if w.startswith("{")]


def vocabulary() -> set[str]:
    """Every word a sentence can contain."""
    words = {w for t in _TEMPLATES for w in t.split() if not w.startswith("{")}
    return words | {w for ws in _SLOTS.values() for w in ws}


def split_sentences(n_train: int, n_held_out: Sequence[int], seed: int = 0) -> list[list[str]]:
    """Unique sentences for train and each held-out split; no held-out sentence occurs in any other
    split, and every held-out word also occurs in training (a word never heard cannot be learned)."""
    rng = random.Random(seed)
    seen: set[str] = set()

    def draw(n: int, pools: dict[str, list[str]] | None) -> list[str]:
        out = []
        for _ in range(200 * n + 1000):
            if len(out) == n:
                return out
            s = make_sentence(rng, pools)
            if s not in seen:
                seen.add(s)
                out.append(s)
        raise RuntimeError(f"could not draw {n} new sentences; the templates allow too few combinations")

    train = draw(n_train, None)
    trained = {w for s in train for w in s.split()}
    pools = {slot: [w for w in words if w in trained] for slot, words in _SLOTS.items()}
    return [train] + [draw(n, pools) for n in n_held_out]
