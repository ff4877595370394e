"""Text-to-image with a DALL·E-style generator: sampling image codes through the shared decoding
loop (KV cache, temperature/top-k/top-p, seed), classifier-free guidance, streaming previews of the
partial grid, and CLIP reranking of several candidates per prompt (Ramesh et al. 2021 §2.5 rerank
DALL·E samples with CLIP the same way). `TextToImage` is the one entry point of the CLI, the API
and the demo; `--model DIR` means an mmkit export (`dalle/`, `vqgan/`, `tokenizer.json`) or a
min-dalle download (`dalle_bart_{mini,mega}/`, `vqgan/detoker.pt`: dalle-mini/Mega's `DalleBart`,
its BART tokenizer and VQGAN, sampled with dalle-mini's super-conditioning).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image
from torch import Tensor

from mmkit.core import GenerationOptions, generate
from mmkit.data.bart_tokenizer import BartTokenizer
from mmkit.data.dalle_text import WordTokenizer, words
from mmkit.errors import quoted
from mmkit.inference.inputs import as_items, check_count
from mmkit.inference.seeds import indexed_seed
from mmkit.limits import FLOAT32_MAX, MAX_SEED, finite32
from mmkit.models.dalle import DALLE, ClassifierFreeGuidance
from mmkit.models.dalle_bart import DalleBart
from mmkit.models.vqgan import VQGAN
from mmkit.weights.native import CONFIG_NAME, WeightsError

log = logging.getLogger(__name__)

TOKENIZER_NAME = "tokenizer.json"
ARCHITECTURE = "TextToImage"
Preview = Callable[[Tensor], None]  # (B, 3, H, W) images in [0, 1], rows not yet sampled grey
MIN_DALLE_FILES = ("encoder.pt", "decoder.pt", "vocab.json", "merges.txt")
# min-dalle's own sampling defaults (MinDalle.generate_raw_image_stream): dalle-mini needs both.
MIN_DALLE_DEFAULTS = {"guidance": 16.0, "top_k": 256}
DEFAULT_BATCH_SIZE = 8  # images sampled at once by `mmkit generate`: memory grows with it, not with --num-images
INT8_GUIDANCE_WARN = 4.0  # int8 sampling with a larger guidance scale logs a warning (`stream`)
MAX_NAMED_WORDS = 20  # unknown words a prompt's note names; more are counted


@dataclass
class RowSeeded(GenerationOptions):
    """Sampling options whose sampler draws each row from its own seed (`RowSampling`, one
    generator per row); `row_seeds` has one seed per row of the batch."""

    row_seeds: tuple[int, ...] = ()

    def strategy(self, device: str | torch.device = "cpu", row_seeds: Sequence[int] | None = None,
                 n_best: int = 1) -> Any:
        return super().strategy(device, self.row_seeds if row_seeds is None else row_seeds, n_best)


def check_options(model: DALLE | DalleBart, options: GenerationOptions, guidance: float) -> None:
    """One clear error per setting a text-to-image sampler cannot honour."""
    if options.beam_size > 1:
        raise ValueError("beam search is not supported for images: sample (temperature/top_k/top_p) or decode greedily")
    check_sampling(model.codebook_size, guidance, options.top_k)


def check_sampling(codebook_size: int, guidance: float, top_k: int | None, temperature: float | None = None,
                   prefix: str = "") -> None:
    """The rule every text-to-image sampling setting meets, one ValueError naming it (`prefix` + its name: a
    recipe's `DalleTask` checks its "test_" ones here before training, not at the export after it): guidance
    finite and >= 0, temperature (where given: sampling) finite and > 0, top_k in [0, the codebook's size]
    (0 is off, as in `mmkit generate`), all within float32."""
    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and finite32(value)

    if not (number(guidance) and guidance >= 0):
        raise ValueError(f"{prefix}guidance must be finite and >= 0, got {guidance}{_beyond_float32(guidance)}")
    if temperature is not None and not (number(temperature) and temperature > 0):
        raise ValueError(f"{prefix}temperature must be finite and > 0, got {temperature}"
                         f"{_beyond_float32(temperature)}")
    if not (top_k is None or (isinstance(top_k, int) and not isinstance(top_k, bool) and 0 <= top_k <= codebook_size)):
        raise ValueError(f"{prefix}top_k must be in [0, {codebook_size}] (the codebook's size; 0 or none: no top-k), "
                         f"got {top_k}")


def _beyond_float32(value: float) -> str:
    """What to add to a refusal of `value` that Python holds as finite but float32 cannot (1e39)."""
    return " (above float32's largest, 3.4e38)" if math.isfinite(value) and abs(value) > FLOAT32_MAX else ""


@torch.no_grad()
def sample_codes(model: DALLE, text: Tensor, options: GenerationOptions, guidance: float = 1.0,
                 use_cache: bool = True, on_rows: Callable[[Tensor], None] | None = None,
                 every_rows: int = 1) -> Tensor:
    """Sample image codes for tokenized captions.

    Args:
        model: the generator (put in eval mode by the caller).
        text: (B, text_len) caption ids.
        options: sampling settings; options.max_new_tokens is ignored (a grid is image_grid² codes).
        guidance: classifier-free guidance scale; 1 = the conditional model alone, 0 = unconditional.
        use_cache: KV-cached decoding (same codes as recomputing every step).
        on_rows: called with the (B, rows, image_grid) codes so far every `every_rows` finished rows.

    Returns:
        (B, image_grid, image_grid) int64 codes.
    """
    check_options(model, options, guidance)
    runner = model if guidance == 1.0 else ClassifierFreeGuidance(model, guidance)
    grid, start = model.image_grid, text.shape[1]

    def on_step(tokens: Tensor) -> None:
        n = tokens.shape[1] - start
        if on_rows is not None and n % (grid * every_rows) == 0 and n < grid * grid:
            on_rows((tokens[:, start:] - model.text_vocab_size).view(len(tokens), -1, grid))

    out = generate(runner, text, model.image_len, options.strategy(text.device), logit_filters=options.filters(),
                   use_cache=use_cache, on_step=on_step)
    return (out.tokens[:, start:] - model.text_vocab_size).view(len(text), grid, grid)


def sample_bart_codes(model: DalleBart, text: Tensor, null_text: Tensor, options: GenerationOptions,
                      guidance: float = 1.0, on_rows: Callable[[Tensor], None] | None = None,
                      every_rows: int = 1) -> Tensor:
    """`sample_codes` for dalle-mini's encoder-decoder: text and null_text (B, text_len) BART ids
    (`BartTokenizer`); returns (B, grid, grid) codes of the square image grid."""
    check_options(model, options, guidance)
    grid = math.isqrt(model.image_len)

    def on_step(tokens: Tensor) -> None:
        n = tokens.shape[1] - 1  # after the start token
        if on_rows is not None and n % (grid * every_rows) == 0 and n < grid * grid:
            on_rows(tokens[:, 1:].view(len(tokens), -1, grid))

    codes = model.generate_codes(text, options, guidance, null_text=null_text, on_step=on_step)
    return codes.view(len(text), grid, grid)


@dataclass
class Generated:
    """The images of one prompt, best first when reranked (`scores`: CLIP cosine similarities)."""

    prompt: str
    images: list[Image.Image]
    scores: list[float] | None = None
    codes: Tensor | None = field(default=None, repr=False)


def to_pil(images: Tensor, value_range: str = "signed") -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] → RGB PIL images. `value_range`: the decoding VQGAN's (`VQGAN.value_range`). For
    "unit" (dalle-mini's, read from min-dalle) the levels are truncated as min-dalle makes them
    (`(z.clip(0, 1) * 255).to(torch.uint8)`): rounded, a quarter to a half of the pixels came out one level
    above min-dalle's for the same codes. "signed" (taming's, the recipe's) rounds to the nearest level."""
    levels = images.clamp(0, 1) * 255
    if value_range != "unit":
        levels = levels.round()
    arr = levels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arr]


def grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Images side by side, `columns` per row (default: all in one row up to 8)."""
    columns = columns or min(len(images), 8)
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    out = Image.new("RGB", (columns * w, rows * h))
    for i, im in enumerate(images):
        out.paste(im, ((i % columns) * w, (i // columns) * h))
    return out


class ClipReranker:
    """Scores candidate images against their prompt with any mmkit CLIP (cosine similarity)."""

    def __init__(self, clip, tokenizer, transform) -> None:
        self.clip, self.tokenizer, self.transform = clip.eval(), tokenizer, transform

    @classmethod
    def load(cls, model: str, pretrained: str | None = None) -> "ClipReranker":
        """A CLIP export directory, or an open_clip architecture with `pretrained` weights."""
        from mmkit.inference.clip_loader import clip_eval_transform, load_clip

        clip, tokenizer = load_clip(model, pretrained)
        return cls(clip, tokenizer, clip_eval_transform(model, pretrained, exact_decode=True))

    @torch.no_grad()
    def scores(self, prompt: str, images: Sequence[Image.Image]) -> list[float]:
        pixels = torch.stack([self.transform(im) for im in images])
        image = self.clip.encode_image(pixels, normalize=True)
        text = self.clip.encode_text(self.tokenizer([prompt]), normalize=True)
        scores = image @ text[0]
        if not bool(scores.isfinite().all()):  # NaN sorts anywhere and is no JSON: never a ranking
            raise ValueError("the CLIP reranker gave non-finite scores (NaN or infinity)")
        return scores.tolist()


class TextToImage:
    """Prompts → images with a DALL·E-style generator and its VQGAN: a `DALLE` with its word
    tokenizer (mmkit's recipe), or dalle-mini's `DalleBart` with its `BartTokenizer` (min-dalle)."""

    def __init__(self, model: DALLE | DalleBart, vqgan: VQGAN, tokenizer: WordTokenizer | BartTokenizer,
                 defaults: dict[str, Any] | None = None) -> None:
        """`defaults`: the sampling settings ({"guidance": float, "top_k": int | None}) a caller who names
        none gets (`mmkit generate`, the demo); saved with the export. None: min-dalle's for dalle-mini,
        else guidance 1 (off) and no top-k."""
        self.model, self.vqgan, self.tokenizer = model.eval(), vqgan.eval(), tokenizer
        self.precision, self.quantize = "fp32", "none"
        self._warned_int8_guidance = False
        self._autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        bart = isinstance(model, DalleBart)
        text_len, text_vocab = (model.config["text_len"], model.config["text_vocab_size"]) if bart else \
            (model.text_len, model.text_vocab_size)
        # BART's vocab.json may list a special token past dalle-mini's embedding (<mask>, which BPE never
        # yields), so for it the ids a prompt actually uses are checked (check_prompt) instead.
        if bart != isinstance(tokenizer, BartTokenizer) or tokenizer.text_len != text_len or \
                (not bart and len(tokenizer) > text_vocab):
            raise WeightsError("tokenizer does not fit the generator (kind, text length or vocabulary size)")
        self.text_vocab_size = text_vocab
        if bart and math.isqrt(model.image_len) ** 2 != model.image_len:
            raise WeightsError(f"DalleBart's {model.image_len} image positions do not make a square grid")
        if vqgan.codebook_size != model.codebook_size:
            raise WeightsError(f"VQGAN codebook ({vqgan.codebook_size}) differs from the generator's "
                               f"({model.codebook_size})")
        # Settings a caller who names none should get: dalle-mini needs super-conditioning and top-k.
        self.defaults = dict(MIN_DALLE_DEFAULTS) if bart else {"guidance": 1.0, "top_k": None}
        if defaults is not None:
            unknown = set(defaults) - set(self.defaults)
            guidance, top_k = defaults.get("guidance", 1.0), defaults.get("top_k")
            if unknown or not (isinstance(guidance, (int, float)) and math.isfinite(guidance) and guidance >= 0) or \
                    not (top_k is None or (isinstance(top_k, int) and 1 <= top_k <= model.codebook_size)):
                raise WeightsError(f"sampling defaults {defaults}: expected guidance >= 0 and top_k in "
                                   f"[1, {model.codebook_size}] or null")
            self.defaults.update(defaults)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "TextToImage":
        """An mmkit text-to-image export, or a min-dalle download (see `from_min_dalle`)."""
        directory = Path(directory).expanduser()
        if not directory.is_dir():
            what = "a file, not a model directory" if directory.exists() else "no such directory"
            raise WeightsError(f"--model {directory}: {what}")
        if min_dalle_layout(directory):
            return cls.from_min_dalle(directory)
        try:
            doc = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
            arch = doc.get("architecture")
        except (OSError, ValueError, AttributeError):
            doc, arch = {}, None
        if arch != ARCHITECTURE and (directory / CONFIG_NAME).is_file():
            held = f"an mmkit {arch} checkpoint" if arch else "a checkpoint that is not mmkit's (e.g. transformers')"
            raise WeightsError(f"{directory}: holds {held}, not a text-to-image export")
        if not (directory / "dalle").is_dir() or not (directory / TOKENIZER_NAME).is_file():
            raise WeightsError(f"{directory}: not a text-to-image export (expected dalle/, vqgan/ and "
                               f"{TOKENIZER_NAME}, or a min-dalle download: dalle_bart_mini/ or dalle_bart_mega/ and "
                               "vqgan/)")
        model, vqgan = DALLE.from_pretrained(directory / "dalle"), VQGAN.from_pretrained(directory / "vqgan")
        return cls(model, vqgan, WordTokenizer.load(directory / TOKENIZER_NAME), doc.get("sampling"))

    @classmethod
    def from_min_dalle(cls, root: str | Path, mega: bool | None = None) -> "TextToImage":
        """min-dalle's download layout: `root/dalle_bart_{mini,mega}/{encoder.pt, decoder.pt, vocab.json,
        merges.txt}` and `root/vqgan/detoker.pt` (read with `torch.load(weights_only=True)`). `root` may
        also be the `dalle_bart_*` folder itself. `mega` None: the one present (Mega when both are,
        as min-dalle's default)."""
        root = Path(root).expanduser()
        if root.name in ("dalle_bart_mini", "dalle_bart_mega"):
            root, mega = root.parent, root.name == "dalle_bart_mega"
        if mega is None:
            mega = (root / "dalle_bart_mega").is_dir()
        folder = root / f"dalle_bart_{'mega' if mega else 'mini'}"
        needed = [folder / f for f in MIN_DALLE_FILES] + [root / "vqgan" / "detoker.pt"]
        missing = [str(f.relative_to(root)) for f in needed if not f.is_file()]
        if missing:
            raise WeightsError(f"{root}: incomplete min-dalle download, missing {', '.join(missing)}")
        model, vqgan = DalleBart.from_min_dalle(root, mega=mega), VQGAN.from_min_dalle(root / "vqgan" / "detoker.pt")
        tokenizer = BartTokenizer.from_files(folder / "vocab.json", folder / "merges.txt", model.config["text_len"])
        return cls(model, vqgan, tokenizer)

    def set_arithmetic(self, precision: str = "fp32", quantize: str = "none") -> str:
        """How the generator samples, as the other tools' `--precision` and `--quantize`: "bf16"/"fp16"/"auto"
        (autocast around sampling; `mmkit.inference.precision.resolve_precision`) or int8 Linear weights (in
        place, CPU; `mmkit.inference.quantize`). The guidance is combined from fp32 logits and the VQGAN decodes
        in fp32 either way, so only the sampled codes can differ from fp32's. Returns the resolved precision.

        Raises:
            ValueError: a choice the device cannot run (bf16 with int8, int8 off the CPU), before anything
                changes; or int8 asked of a generator made int8 already.
        """
        from mmkit.inference.quantize import prepare_arithmetic

        if quantize != "none" and self.quantize != "none":
            raise ValueError("the generator is int8 already")
        self.precision, self._autocast = prepare_arithmetic(self.model, precision, quantize, "text-to-image generator",
                                                            pack=True)
        self.quantize = quantize
        return self.precision

    def to(self, device: str | torch.device) -> "TextToImage":
        """The generator and the VQGAN moved to `device` (prompts are tokenized onto the generator's device);
        before `set_arithmetic`, which chooses the precision and int8 weights for the device the models are on."""
        if (self.precision, self.quantize) != ("fp32", "none"):
            raise ValueError("move the text-to-image pipeline (.to) before set_arithmetic: its precision and int8 "
                             "weights are chosen for the device the models are on")
        self.model.to(device)
        self.vqgan.to(device)
        return self

    def save_pretrained(self, directory: str | Path) -> Path:
        if self.quantize != "none":
            raise ValueError("an int8 generator is not saved: export the fp32 model it was made from")
        if isinstance(self.model, DalleBart):
            raise ValueError("a min-dalle model is read from its download folder; mmkit exports hold a DALLE generator")
        directory = Path(directory).expanduser()
        self.model.save_pretrained(directory / "dalle")
        self.vqgan.save_pretrained(directory / "vqgan")
        self.tokenizer.save(directory / TOKENIZER_NAME)
        # A top-level config.json names the family, so tools tell this export from another family's.
        doc = {"format_version": 1, "architecture": ARCHITECTURE,
               "components": {"generator": "dalle", "tokenizer": "vqgan", "text_tokenizer": TOKENIZER_NAME},
               "sampling": self.defaults}
        (directory / CONFIG_NAME).write_text(json.dumps(doc, indent=2) + "\n")
        return directory

    def check_prompt(self, prompt: str) -> list[str]:
        """Raise ValueError for a prompt the model would read as nothing: empty, or no word it knows (only
        unknown words, or none at all: "!!!", "123", "\u200b" encode to padding alone). Returns what the model
        does not read of the rest: unknown words, and words past its text length; `stream` logs them, once per
        prompt (callers check every prompt before sampling any, and each check logged them again). Messages
        quote the prompt's start and name each unknown word once, only among the words the model reads, at
        most `MAX_NAMED_WORDS` of them: a prompt of megabytes made a message of megabytes."""
        if not prompt.strip():
            raise ValueError("empty prompt")
        bart = isinstance(self.tokenizer, BartTokenizer)
        n = self.tokenizer.text_len  # ids the model reads: a known word past them counts for nothing
        if bart:
            ids = self.tokenizer.encode(prompt)  # <s> ... </s>
            known = [i for i in ids[1:n] if i not in (self.tokenizer.unk, self.tokenizer.eos)]
        else:
            ids = [self.tokenizer.index.get(w, 1) for w in words(prompt)]
            known = [i for i in ids[:n] if i > 1]
        if not known:
            raise ValueError(f"prompt {quoted(prompt)}: no word the model knows ({self.vocabulary_note()})")
        if bart and max(ids) >= self.text_vocab_size:
            raise ValueError(f"prompt {quoted(prompt)}: a token id past the model's {self.text_vocab_size} text "
                             "embeddings (vocab.json does not belong to this model)")
        notes = []
        unknown = list(dict.fromkeys(self.tokenizer.unknown_words(self.prompt_head(prompt))))
        if unknown:
            more = f" and {len(unknown) - MAX_NAMED_WORDS:,} more" if len(unknown) > MAX_NAMED_WORDS else ""
            notes.append(f"words outside the vocabulary ignored: {', '.join(unknown[:MAX_NAMED_WORDS])}{more}")
        if len(ids) > n:
            unit = "tokens" if bart else "words"
            notes.append(f"the prompt has {len(ids):,} {unit}; the model reads only the first {n}")
        return notes

    def vocabulary_note(self) -> str:
        """What the model reads, as messages and the demo say it: the recipe's closed vocabulary listed, or for
        dalle-mini's BART tokenizer (50,000 subwords, not a word list) how it reads text."""
        if isinstance(self.tokenizer, BartTokenizer):
            return f"dalle-mini reads lower-cased ASCII text ({len(self.tokenizer.vocab):,} BPE subwords)"
        return f"words the model knows: {' '.join(self.tokenizer.vocab[2:])}"

    def prompt_head(self, prompt: str) -> str:
        """The start of `prompt` that the model reads: the same ids (and null text) as the whole prompt, while
        the words past it are neither tokenized nor logged (the tokenizers log the prompt they truncate). The
        whole prompt when it fits; else its first `text_len` words, or for BART the words whose subwords fill
        the ids between `<s>` and the cut (the last maybe in part). Words are split as each tokenizer splits
        them: a `words` word never spans whitespace; min-dalle splits on single spaces."""
        n, bart = self.tokenizer.text_len, isinstance(self.tokenizer, BartTokenizer)
        count = 0
        for match in re.finditer(r"[^ ]+" if bart else r"\S+", prompt):
            count += len(self.tokenizer.encode(match.group())) - 2 if bart else len(words(match.group()))
            if count >= (n - 1 if bart else n):
                head = prompt[:match.end()]
                # a chunk may hold several words ("red,circle"): keep exactly the first n
                return head if bart or count == n else " ".join(words(head)[:n])
        return prompt

    def generate(self, prompts: str | Sequence[str], num_images: int = 1, seed: int | None = None,
                 guidance: float | None = None, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, reranker: ClipReranker | None = None, on_preview: Preview | None = None,
                 preview_rows: int = 2, batch_size: int | None = None) -> list[Generated]:
        """`num_images` samples per prompt (a lone str is one prompt), `batch_size` at a time (None: all in
        one batch). `guidance` and `top_k` None: the pipeline's own, `self.defaults` (min-dalle's guidance 16
        and top-k 256 for dalle-mini, which wants both; an export's saved ones; else 1 and none), as `mmkit
        generate` and the demo use; top_k 0: no top-k. With a seed, image i of a prompt is drawn from
        `indexed_seed(seed, i)` alone: the same images whatever the batch size.

        Returns:
            One `Generated` per prompt; with a reranker, its images sorted by CLIP score.
        """
        prompts = list(as_items(prompts))
        for prompt in prompts:
            self.check_prompt(prompt)
        out = []
        for prompt in prompts:
            batches = list(self.stream(prompt, num_images, seed, guidance, temperature, top_k, top_p,
                                       batch_size or num_images, on_preview, preview_rows))
            codes, images = torch.cat([c for c, _ in batches]), [im for _, ims in batches for im in ims]
            scores = None
            if reranker is not None:
                scores = reranker.scores(prompt, images)
                order = sorted(range(len(images)), key=lambda i: -scores[i])
                images, scores, codes = [images[i] for i in order], [scores[i] for i in order], codes[order]
            out.append(Generated(prompt, images, scores, codes))
        return out

    def stream(self, prompt: str, num_images: int, seed: int | None = None, guidance: float | None = None,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, on_preview: Preview | None = None,
               preview_rows: int = 2, first: int = 0) -> Iterator[tuple[Tensor, list[Image.Image]]]:
        """The images of one prompt as they are made, `batch_size` at a time: memory is bounded by the
        batch, whatever `num_images`. Settings and the prompt are checked before this returns. `first`:
        the index of the first image (images first, ..., first + num_images - 1, each seeded by its
        index): a share of a prompt's images (one rank's, `mmkit generate` under torchrun), in the very
        batches of a whole run when `first` is a multiple of `batch_size`. `guidance` and `top_k` as in
        `generate` (None: `self.defaults`; top_k 0: none). What the model does not read of the prompt
        (`check_prompt`'s notes) is logged here, once.

        Yields:
            ((b, grid, grid) codes, b images) per batch, in image order.
        """
        guidance, top_k = self.resolve_sampling(guidance, top_k)
        options = self.check_settings(num_images, seed, guidance, temperature, top_k, top_p, batch_size)
        for note in self.check_prompt(prompt):
            log.warning("prompt %s: %s", quoted(prompt), note)
        if self.quantize == "int8" and guidance > INT8_GUIDANCE_WARN and not self._warned_int8_guidance:
            self._warned_int8_guidance = True
            log.warning("int8 with guidance %g: the guidance magnifies int8's rounding of the logits as much (on "
                        "random dalle-mini-wide weights at guidance 16, 34%% of fp32's codes stay first, 95%% at "
                        "guidance 1; `mmkit bench generate`); --precision bf16 keeps closer", guidance)
        return self._stream(prompt, num_images, seed, guidance, options, batch_size, on_preview, preview_rows, first)

    def resolve_sampling(self, guidance: float | None, top_k: int | None) -> tuple[float, int | None]:
        """(guidance, top_k) as a caller gives them made the values to sample with: None is the pipeline's own
        (`self.defaults`), top_k 0 no top-k."""
        return (self.defaults["guidance"] if guidance is None else guidance,
                self.defaults["top_k"] if top_k is None else (top_k or None))

    def check_settings(self, num_images: int, seed: int | None, guidance: float, temperature: float,
                       top_k: int | None, top_p: float | None, batch_size: int = 1) -> GenerationOptions:
        """ValueError for a setting `stream` cannot honour, else the options it samples with."""
        check_count("num_images", num_images)
        check_count("batch_size", batch_size)
        check_sampling(self.model.codebook_size, guidance, top_k, temperature)
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**64 - 1], got {seed}")
        return GenerationOptions(temperature=temperature, top_k=top_k, top_p=top_p)

    @torch.no_grad()
    def _stream(self, prompt: str, num_images: int, seed: int | None, guidance: float, options: GenerationOptions,
                batch_size: int, on_preview: Preview | None,
                preview_rows: int, first: int = 0) -> Iterator[tuple[Tensor, list[Image.Image]]]:
        on_rows = None if on_preview is None else (lambda rows: on_preview(self.preview(rows)))
        bart, device = isinstance(self.model, DalleBart), next(self.model.parameters()).device
        # Tokenized once, not per batch, and only the head the model reads (the same ids and null text): a long
        # prompt was encoded again, and its truncation logged whole, for every batch. `stream` logged the notes.
        head = self.prompt_head(prompt)
        ids = self.tokenizer([head], warn_truncation=False).to(device)  # (1, text_len)
        null_ids = self.tokenizer.null_text([head]).to(device) if bart else None
        for start in range(first, first + num_images, batch_size):
            n = min(batch_size, first + num_images - start)
            if seed is not None:
                options = RowSeeded(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                                    row_seeds=tuple(indexed_seed(seed, i) for i in range(start, start + n)))
            text = ids.expand(n, -1)
            with self._autocast():  # previews decode inside it, in fp32 (`preview`)
                if bart:
                    codes = sample_bart_codes(self.model, text, null_ids.expand(n, -1), options, guidance, on_rows,
                                              preview_rows)
                else:
                    codes = sample_codes(self.model, text, options, guidance, on_rows=on_rows,
                                         every_rows=preview_rows)
            # One image at a time: a batched convolution rounds differently, and an image's pixels must not
            # depend on the batch it was sampled in.
            pixels = torch.cat([self.vqgan.decode(c[None]) for c in codes])
            if not bool(pixels.isfinite().all()):  # clamped, NaN would turn into black pixels
                raise ValueError("the VQGAN decoded non-finite pixels (NaN or infinity)")
            yield codes, to_pil(pixels, self.vqgan.value_range)

    @torch.no_grad()
    def preview(self, rows: Tensor) -> Tensor:
        """Decode a partial grid (B, r, g): finished rows decoded, the rest grey."""
        b, r, g = rows.shape
        full = torch.cat([rows, rows[:, -1:].expand(b, g - r, g)], dim=1)
        with torch.autocast(full.device.type, enabled=False):  # fp32, inside the sampler's autocast (`_stream`)
            images = self.vqgan.decode(full)
        cut = r * images.shape[2] // g
        images[:, :, cut:] = 0.5
        return images


def min_dalle_layout(directory: Path) -> bool:
    """Whether `directory` looks like (part of) a min-dalle download rather than an mmkit export."""
    return directory.name in ("dalle_bart_mini", "dalle_bart_mega") or any(
        (directory / d).exists() for d in ("dalle_bart_mini", "dalle_bart_mega", "vqgan/detoker.pt"))
