"""Whisper's tokenizer and special tokens (Radford et al., 2022, §2.3 "Multitask format"), read
from the Hugging Face tokenizer files of a checkpoint directory, plus the decoding constants of
its `generation_config.json` (suppressed tokens, language/task ids). The special-token layout
and the non-speech symbol list follow openai/whisper `tokenizer.py`; `from_tiktoken` builds the
tokenizer of openai-whisper `.pt` checkpoints from the `.tiktoken` BPE ranks in its package.

tokenizer.json is read with the `tokenizers` library directly (what `transformers.WhisperTokenizer`
wraps): a quarter of a second, where importing transformers and building its tokenizer takes
seconds per `mmkit transcribe` run. Directories with only vocab.json + merges.txt go through
`transformers.WhisperTokenizer`. The `.tiktoken` reading lives in `tiktoken_files.py`, the toy
tokenizer of offline tests and benchmarks in `whisper_toy_tokenizer.py`.
"""
from __future__ import annotations

import json
import re
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from mmkit.data.tiktoken_files import (  # noqa: F401 - OPENAI_ENCODINGS re-exported
    OPENAI_ENCODINGS, OPENAI_MULTILINGUAL_VOCAB, TokenizerError, bpe_from_ranks, openai_tiktoken_file, read_tiktoken,
)

TIME_PRECISION = 0.02  # seconds per timestamp token (one step of the encoder's 1500 positions / 30 s)
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>
TASKS = ("transcribe", "translate")
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")  # what `from_dir` needs (one of)
# Written by transformers next to the vocabulary; `save` copies whichever exist.
_COMPANION_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "normalizer.json")
# Every Whisper language in token order (openai/whisper LANGUAGES; "yue" exists in large-v3 only).
LANGUAGE_CODES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la "
    "mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be "
    "tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
).split()
_TASK_TOKENS = ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                "<|notimestamps|>")
_LANGUAGE_TOKEN = re.compile(r"<\|([a-z]{2,3})\|>\Z")


# The generation_config.json fields this tokenizer reads, by type (config_check's rules); the ids among them.
GENERATION_FIELDS = {"suppress_tokens": list[Union[int, Literal[-1]]],  # -1: openai's "non-speech symbols"
                     "begin_suppress_tokens": list[int], "is_multilingual": bool,
                     "max_initial_timestamp_index": Optional[int], "lang_to_id": dict[str, int]}


def check_generation_config(config: Any, where: str, vocab_size: int | None = None) -> None:
    """Refuse decoding settings of the wrong JSON type or (given the tokenizer's `vocab_size`) with ids
    outside it, in one line naming `where` and the field, at load: each would otherwise fail every file
    at decode time. `suppress_tokens` may hold -1 (openai's "the non-speech symbols")."""
    from mmkit.weights.config_check import check_fields, check_token_ids

    try:
        check_fields(config, GENERATION_FIELDS, where)
        languages = config.get("lang_to_id") or {}
        odd = next((t for t in languages if not _LANGUAGE_TOKEN.match(t)), None)
        if odd is not None:
            raise TokenizerError(f"{where}: field 'lang_to_id' holds {odd!r}, not a language token like '<|en|>'")
        check_fields(languages, {t: int for t in languages}, f"{where}: lang_to_id")
        if vocab_size is not None:
            check_token_ids(config, ["begin_suppress_tokens"], vocab_size, where)
            check_token_ids(config, ["suppress_tokens"], vocab_size, where, lowest=-1)
            check_token_ids(languages, list(languages), vocab_size, f"{where}: lang_to_id")
    except ValueError as e:  # WeightsError: this is a tokenizer file
        raise TokenizerError(str(e)) from None


class WhisperTokenizer:
    """Text <-> ids for Whisper, with the special token ids decoding needs.

    Attributes (token ids): `eot`, `sot`, `sot_prev`, `sot_lm`, `no_speech`, `no_timestamps`,
    `transcribe`, `translate`, `timestamp_begin` (= id of <|0.00|>); `language_ids` maps language
    codes ("en") to ids in token order; `suppress_tokens` / `begin_suppress_tokens` come from
    generation_config.json (openai/whisper's defaults when it is absent).

    Args:
        backend: a `tokenizers.Tokenizer` (byte-level BPE with Whisper's added tokens).
        generation_config: the parsed generation_config.json (None: derive everything from the
            tokenizer, as openai/whisper does).
        source: directory the tokenizer files came from (`save` copies them from there).
    """

    def __init__(self, backend: Any, generation_config: dict[str, Any] | None = None,
                 source: Path | None = None) -> None:
        self.backend, self.source = backend, source
        self.generation_config = dict(generation_config or {})
        ids = self._ids
        self.eot = ids("<|endoftext|>")
        self.sot = ids("<|startoftranscript|>")
        self.translate, self.transcribe = ids("<|translate|>"), ids("<|transcribe|>")
        self.sot_lm, self.sot_prev = ids("<|startoflm|>"), ids("<|startofprev|>")
        self.no_speech = self._first_known("<|nospeech|>", "<|nocaptions|>")
        self.no_timestamps = ids("<|notimestamps|>")
        # Older tokenizer files lack the timestamp tokens; their ids still follow <|notimestamps|>.
        ts = self.backend.token_to_id("<|0.00|>")
        self.timestamp_begin = ts if ts is not None else self.no_timestamps + 1
        cfg_langs = self.generation_config.get("lang_to_id")
        if cfg_langs:
            pairs = [(_LANGUAGE_TOKEN.match(tok)[1], int(i)) for tok, i in cfg_langs.items()]
        else:
            pairs = [(code, self.backend.token_to_id(f"<|{code}|>")) for code in LANGUAGE_CODES]
            pairs = [(c, i) for c, i in pairs if i is not None and i > self.sot]
        self.language_ids: dict[str, int] = dict(sorted(pairs, key=lambda p: p[1]))

    # --- loading and saving ------------------------------------------------------------------

    @classmethod
    def from_dir(cls, directory: str | Path) -> "WhisperTokenizer":
        """Load the tokenizer files (tokenizer.json, or vocab.json + merges.txt) and the optional
        generation_config.json of a local checkpoint directory (never the network)."""
        directory = Path(directory).expanduser()
        if not any((directory / name).is_file() for name in TOKENIZER_FILES):
            raise TokenizerError(
                f"{directory}: no Whisper tokenizer files (tokenizer.json, or vocab.json + merges.txt); "
                "a transcription checkpoint needs them next to its weights (mmkit.inference.save_speech_checkpoint)")
        try:
            if (directory / "tokenizer.json").is_file():
                from tokenizers import Tokenizer

                backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
            else:
                from transformers import WhisperTokenizer as HFWhisperTokenizer

                backend = HFWhisperTokenizer.from_pretrained(str(directory), local_files_only=True).backend_tokenizer
        except Exception as e:  # noqa: BLE001 - any parse failure becomes one clear message
            raise TokenizerError(f"{directory}: unreadable tokenizer files ({type(e).__name__}: {e})") from None
        config = None
        path = directory / GENERATION_CONFIG
        if path.is_file():
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise TokenizerError(f"{path}: not UTF-8 text") from None
            except json.JSONDecodeError as e:
                raise TokenizerError(f"{path}: invalid JSON ({e})") from None
            check_generation_config(config, str(path))
        tok = cls(backend, config, source=directory)
        if config is not None:
            check_generation_config(config, str(path), tok.id_count)
        return tok

    @classmethod
    def from_tiktoken(cls, path: str | Path, vocab_size: int) -> "WhisperTokenizer":
        """openai-whisper's tokenizer (`whisper.tokenizer.get_encoding`) for a model of `vocab_size`
        ids, from a `.tiktoken` BPE ranks file (a base64 token and its rank per line): the ranks,
        then <|endoftext|>, <|startoftranscript|>, as many language tokens as `vocab_size` leaves
        room for (99, or 100 with "yue"), the task/control tokens and <|0.00|> .. <|30.00|>.
        Suppressed tokens follow openai's decoding defaults (there is no generation_config.json);
        multilingual when `vocab_size` >= 51865, as openai decides."""
        path = Path(path).expanduser()
        ranks = read_tiktoken(path)
        n_languages = vocab_size - len(ranks) - 2 - len(_TASK_TOKENS) - N_TIMESTAMPS
        if not 0 <= n_languages <= len(LANGUAGE_CODES):
            raise TokenizerError(
                f"{path}: its {len(ranks)} BPE tokens plus Whisper's special tokens cannot make a vocabulary of "
                f"{vocab_size} ids (openai-whisper: 51864 English-only, 51865 / 51866 multilingual)")
        from tokenizers import AddedToken

        languages = [f"<|{code}|>" for code in LANGUAGE_CODES[:n_languages]]
        timestamps = [f"<|{i * TIME_PRECISION:.2f}|>" for i in range(N_TIMESTAMPS)]
        backend = bpe_from_ranks(ranks)
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (
            "<|endoftext|>", "<|startoftranscript|>", *languages, *_TASK_TOKENS, *timestamps)])
        return cls(backend, {"is_multilingual": vocab_size >= OPENAI_MULTILINGUAL_VOCAB})

    @classmethod
    def from_openai(cls, vocab_size: int) -> "WhisperTokenizer":
        """The tokenizer openai-whisper pairs with a checkpoint of `vocab_size` ids (51864:
        English-only `gpt2.tiktoken`; 51865 / 51866: `multilingual.tiktoken`, 99 / 100 languages),
        read from the installed openai-whisper package."""
        return cls.from_tiktoken(openai_tiktoken_file(vocab_size), vocab_size)

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer files and generation_config.json into `directory`."""
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        if self.source is not None and self.source.resolve() != directory.resolve():
            for name in _COMPANION_FILES + TOKENIZER_FILES[1:]:
                if (self.source / name).is_file():
                    shutil.copy(self.source / name, directory / name)
        config = {**self.default_generation_config(), **self.generation_config}
        (directory / GENERATION_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    @property
    def vocab_size(self) -> int:
        """Number of ids, special and timestamp tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def default_generation_config(self) -> dict[str, Any]:
        """transformers-compatible generation_config.json values for this vocabulary."""
        return {
            "decoder_start_token_id": self.sot, "bos_token_id": self.eot, "eos_token_id": self.eot,
            "pad_token_id": self.eot, "no_timestamps_token_id": self.no_timestamps, "max_initial_timestamp_index": 50,
            "is_multilingual": bool(self.language_ids), "max_length": 448, "return_timestamps": False,
            "lang_to_id": {f"<|{c}|>": i for c, i in self.language_ids.items()},
            "task_to_id": {"transcribe": self.transcribe, "translate": self.translate},
            "suppress_tokens": self.suppress_tokens, "begin_suppress_tokens": self.begin_suppress_tokens,
        }

    # --- special tokens ----------------------------------------------------------------------

    def _ids(self, token: str) -> int:
        i = self.backend.token_to_id(token)
        if i is None:
            raise TokenizerError(f"not a Whisper tokenizer: it has no {token} token")
        return i

    def _first_known(self, *tokens: str) -> int:
        for token in tokens[:-1]:
            i = self.backend.token_to_id(token)
            if i is not None:
                return i
        return self._ids(tokens[-1])

    @property
    def is_multilingual(self) -> bool:
        """Multilingual checkpoints take <|lang|><|task|> after <|startoftranscript|>."""
        flag = self.generation_config.get("is_multilingual")
        return bool(self.language_ids) if flag is None else bool(flag)

    @property
    def id_count(self) -> int:
        """One past the largest id: the tokenizer's, or its timestamps' where its files lack them."""
        return max(self.vocab_size, self.timestamp_end)

    @property
    def timestamp_end(self) -> int:
        """One past the last timestamp token id (<|30.00|>)."""
        return self.timestamp_begin + N_TIMESTAMPS

    @property
    def max_initial_timestamp_index(self) -> int | None:
        value = self.generation_config.get("max_initial_timestamp_index", 50)  # openai: 1.0 s
        return None if value is None else int(value)

    def language_id(self, language: str) -> int:
        """Id of a language code ("de") or English name ("german")."""
        code = language.lower().strip()
        if code not in self.language_ids:  # a name ("german"): transformers has the table
            from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

            code = TO_LANGUAGE_CODE.get(code, code)
        if code not in self.language_ids:
            raise ValueError(f"unknown language {language!r}; this checkpoint knows: {', '.join(self.language_ids)}")
        return self.language_ids[code]

    def language_code(self, token_id: int) -> str:
        return {i: c for c, i in self.language_ids.items()}[token_id]

    def task_id(self, task: str) -> int:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        return self.transcribe if task == "transcribe" else self.translate

    def sot_sequence(self, language: str | None = None, task: str = "transcribe",
                     without_timestamps: bool = False) -> list[int]:
        """The decoder prompt: <|startoftranscript|> [<|lang|> <|task|>] [<|notimestamps|>].
        English-only checkpoints take neither a language nor a task token."""
        seq = [self.sot]
        if self.is_multilingual:
            if language is None:
                raise ValueError("a multilingual checkpoint needs a language (or language detection)")
            seq += [self.language_id(language), self.task_id(task)]
        if without_timestamps:
            seq.append(self.no_timestamps)
        return seq

    @cached_property
    def non_speech_tokens(self) -> list[int]:
        """Ids of symbols that are not speech ("♪", brackets, ...): openai/whisper's
        `non_speech_tokens`, the default `suppress_tokens` ("-1")."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        misc = set("♩♪♫♬♭♮♯")  # may be multi-byte tokens: suppress their first piece
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(misc):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in misc:
                    result.add(tokens[0])
        return sorted(result)

    @property
    def suppress_tokens(self) -> list[int]:
        """Never generated: the config's list (or the non-speech symbols) plus the task and
        prompt-control tokens, as openai/whisper's `SuppressTokens` with "-1"."""
        listed = self.generation_config.get("suppress_tokens")
        base = self.non_speech_tokens if listed is None else [int(t) for t in listed if int(t) >= 0]
        specials = [self.transcribe, self.translate, self.sot, self.sot_prev, self.sot_lm, self.no_speech]
        return sorted(set(base) | set(specials))

    @property
    def begin_suppress_tokens(self) -> list[int]:
        """Not generated first: a lone space and <|endoftext|> (openai/whisper's `SuppressBlank`)."""
        listed = self.generation_config.get("begin_suppress_tokens")
        return [int(t) for t in listed] if listed is not None else self.encode(" ") + [self.eot]

    # --- text --------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the text tokens in `ids` (special and timestamp tokens dropped)."""
        return self.backend.decode([int(i) for i in ids if int(i) < self.eot], skip_special_tokens=False)

    def decode_with_timestamps(self, ids: Sequence[int]) -> str:
        """Text with timestamp tokens written as "<|1.08|>" (other special tokens dropped)."""
        out: list[str] = []
        text: list[int] = []
        for i in map(int, ids):
            if i >= self.timestamp_begin:
                out += [self.decode(text), f"<|{(i - self.timestamp_begin) * TIME_PRECISION:.2f}|>"]
                text = []
            elif i < self.eot:
                text.append(i)
        return "".join(out) + self.decode(text)
