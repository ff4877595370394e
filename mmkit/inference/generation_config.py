"""A transformers generation config (`generation_config.json`) read as a model's own decoding settings, the rules
`Translator` and `TextGenerator` share: transformers' names mapped to the options' (num_beams -> beam_size, do_sample
-> temperature / top_k / top_p with transformers' defaults), the settings mmkit does not apply named in one warning
at load, and how options given override the model's (`defaults_for`), as `generate(...)` arguments override a
generation config."""
from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger(__name__)
SAMPLING = ("temperature", "top_k", "top_p")
TRANSFORMERS_TOP_K = 50  # transformers' GenerationConfig default: a do_sample config without top_k samples among 50
# Generation-config settings that change transformers' decoding and that mmkit does not apply, with the values that
# leave them off (None: unset), those of sampling apart: a config that sets one is said at load, not decoded
# otherwise in silence.
UNAPPLIED = {"num_beam_groups": (1, None), "penalty_alpha": (None,), "exponential_decay_length_penalty": (None,),
             "sequence_bias": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
             "forced_bos_token_id": (None,), "num_return_sequences": (1, None)}  # n a source: --num-return-...
UNAPPLIED_SAMPLING = {"typical_p": (1.0, None), "epsilon_cutoff": (0.0, None), "eta_cutoff": (0.0, None),
                      "min_p": (None,)}
# transformers' values that leave a setting off: a setting of that value is not made (save_pretrained writes some)
UNSET = {"beam_size": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0,
         "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0}


def say_unapplied(decoding: dict[str, Any], bad_words: Any, where: str, also: dict[str, tuple] | None = None) -> None:
    """One warning naming the settings of a transformers generation config that the tool does not apply
    (`UNAPPLIED` and `also`; those of sampling where it samples; bad words of several tokens: only single tokens are
    banned)."""
    rules = {**UNAPPLIED, **(also or {}), **(UNAPPLIED_SAMPLING if decoding.get("do_sample") is True else {})}
    unapplied = [f"{k} {decoding[k]!r}" for k, off in rules.items() if k in decoding and decoding[k] not in off]
    if isinstance(bad_words, list) and any(isinstance(w, list) and len(w) > 1 for w in bad_words):
        unapplied.append("bad_words_ids of several tokens")
    if unapplied:
        log.warning("%s: not applied by mmkit (transformers' generate would): %s", where, ", ".join(unapplied))


def sampling_fallbacks(decoding: dict[str, Any]) -> dict[str, Any]:
    """What transformers samples with where sampling is asked for and a setting is not given: a generation config's
    temperature, top_k and top_p, else (unset or null) GenerationConfig's defaults (1.0, 50, 1.0), whether the config
    samples or not: `generate(do_sample=True, temperature=0.7)` keeps the config's top_k, 50 by default. The
    settings that leave a rule off (temperature 1.0, top_k 0, top_p 1.0) are left out."""
    temperature, top_k, top_p = (decoding.get(k) for k in SAMPLING)
    top_k = TRANSFORMERS_TOP_K if top_k is None else top_k  # unset or null: transformers 5 takes its default
    return {k: v for k, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p))
            if v is not None and v != {"temperature": 1.0, "top_k": 0, "top_p": 1.0}[k]}


def sampling_settings(decoding: dict[str, Any], where: str) -> dict[str, Any]:
    """The sampling settings of a transformers generation config: none unless it sets do_sample, else its
    temperature, top_k and top_p with transformers' defaults for those not set (`sampling_fallbacks`). A do_sample
    with beams (transformers' beam sampling) is not run: beam search, said once."""
    if decoding.get("do_sample") is not True:
        return {}
    if isinstance(decoding.get("num_beams"), int) and decoding["num_beams"] > 1:
        log.warning("%s: do_sample with num_beams %d (beam sampling) is not run: decoding with beam search "
                    "(--temperature T to sample)", where, decoding["num_beams"])
        return {}
    return {"temperature": 1.0, "top_k": None, "top_p": None, **sampling_fallbacks(decoding)}


def shared_settings(decoding: dict[str, Any], where: str) -> dict[str, Any]:
    """The settings every decoder's options take from a transformers generation config, under the options' names
    (None: not set): the beams and their ranking, the repetition rules, and sampling (`sampling_settings`)."""
    return {"beam_size": decoding.get("num_beams"), "length_penalty": decoding.get("length_penalty"),
            "early_stopping": decoding.get("early_stopping"), "repetition_penalty": decoding.get("repetition_penalty"),
            "no_repeat_ngram_size": decoding.get("no_repeat_ngram_size"), **sampling_settings(decoding, where)}


def settings_made(settings: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The options' `fields` among `settings` that are set: not None, not transformers' value for off (`UNSET`; a
    bool is never taken for 1 or 0), not a renormalize_logits of False."""
    given = {k: v for k, v in settings.items() if k in fields and v is not None}
    for name, unset in UNSET.items():
        if name in given and given[name] == unset and not isinstance(given[name], bool):
            given.pop(name)
    if given.get("renormalize_logits") is False:
        given.pop("renormalize_logits")
    return given


def checked_settings(settings: Any, fields: tuple[str, ...], options: Callable[..., Any], where: str,
                     error: type[Exception]) -> dict[str, Any]:
    """A model's own decoding settings (an export's metadata, a task's `generation`, a generation config's mapped
    ones) as the `options` class's `fields` that are set (`settings_made`), checked as `options` checks them: not
    an object, a name that is not one of `fields` (a typo, transformers' num_beams: refused, not ignored), or a
    value the options refuse is an `error` of one line naming `where`, not a failure at the first input."""
    if not isinstance(settings, dict):
        raise error(f"{where}: expected an object of decoding settings, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise error(f"{where}: {', '.join(map(repr, unknown))} not among the model's own decoding settings "
                    f"({', '.join(fields)})")
    given = settings_made(settings, fields)
    try:
        options(**given)
    except (TypeError, ValueError) as e:
        raise error(f"{where}: a decoding setting mmkit cannot use ({e})") from None
    return given


def defaults_for(defaults: dict[str, Any], given: dict[str, Any], beam_only: tuple[str, ...],
                 fallbacks: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's own settings `defaults` that options `given` leave in force: all of them, less those of the other
    way of decoding where `given` chooses one, as a `generate(...)` argument overrides a generation config: a
    sampling setting given (temperature > 0, top_k, top_p) drops the model's beams and their settings (`beam_only`),
    a beam count given drops the model's sampling, and a temperature of 0 given alone (greedy) drops its top_k /
    top_p. Where the result samples, the model's `fallbacks` (`sampling_fallbacks`) fill the sampling settings
    neither gives."""
    given = {k: v for k, v in given.items() if v is not None}
    drop: set[str] = set()
    if "beam_size" not in given and ((given.get("temperature") or 0) > 0 or "top_k" in given or "top_p" in given):
        drop |= {"beam_size", *beam_only}
    if given.get("beam_size", 1) > 1 or (given.get("temperature") == 0 and not {"top_k", "top_p"} & set(given)):
        drop |= set(SAMPLING)
    in_force = {k: v for k, v in defaults.items() if k not in drop}
    merged = {**in_force, **given}
    samples = (merged.get("temperature") or 0) > 0 or merged.get("top_k") is not None or merged.get("top_p") is not None
    if fallbacks and samples and merged.get("beam_size", 1) <= 1:
        in_force.update({k: v for k, v in fallbacks.items() if k not in merged})
    return in_force


def with_top_k_off(fields: dict[str, Any]) -> dict[str, Any]:
    """Options' fields with a top_k of 0 (transformers' "off", which a model's top_k fallback would otherwise fill)
    as no top-k: sampling among all tokens, at temperature 1 unless one is given."""
    if fields.get("top_k") != 0:
        return fields
    return {**fields, "top_k": None, "temperature": fields.get("temperature") or 1.0}


def transformers_generation_config(options: Any, eos_id: int | None, length: bool = False) -> dict[str, Any]:
    """A transformers generation config (generation_config.json) that makes `generate()` without decoding arguments
    decode as `options` (a `GenerationOptions` or `TranslationOptions` of a model's `default_options()`: its
    defaults with its sampling fallbacks filled where they sample) do, under transformers' names and only the
    settings that are on, so that `GenerationConfig.validate` has nothing to warn of: num_beams (with
    length_penalty and early_stopping), repetition_penalty, no_repeat_ngram_size, min_new_tokens, and do_sample
    (false too) with temperature, top_k (0: among all tokens, transformers' "off", where its default is 50) and
    top_p, which `load_text_generator` maps back (`generation_config.shared_settings`). The options'
    max_new_tokens is written where `length` says it is the model's own; else no length is, and transformers' own
    apply (`generate()`: 20 tokens in all, the pipeline: 256 new ones) where the caller gives none."""
    gen: dict[str, Any] = {"bos_token_id": eos_id, "eos_token_id": eos_id}
    if options.beam_size > 1:
        gen["num_beams"] = options.beam_size
        if options.length_penalty != 1.0:
            gen["length_penalty"] = options.length_penalty
        if options.early_stopping in (True, "never"):
            gen["early_stopping"] = options.early_stopping
    if options.repetition_penalty != 1.0:
        gen["repetition_penalty"] = options.repetition_penalty
    if options.no_repeat_ngram_size:
        gen["no_repeat_ngram_size"] = options.no_repeat_ngram_size
    if options.min_new_tokens:
        gen["min_new_tokens"] = options.min_new_tokens
    if length:
        gen["max_new_tokens"] = options.max_new_tokens
    # do_sample false said, not left out: pipeline("text-generation") samples at temperature 0.7 unless the model's
    # generation config sets do_sample
    gen["do_sample"] = options.sampling
    if options.sampling:  # top_k / top_p alone sample at temperature 1 in mmkit, as transformers' default is
        gen.update(temperature=options.temperature or 1.0, top_k=options.top_k or 0, top_p=options.top_p or 1.0)
    return gen
