"""Saving mmkit models as CTranslate2 folders (model.bin, config.json, the vocabulary, and the tokenizer files beside
them), the layout `ctranslate2.Generator`, `ctranslate2.Translator` and faster-whisper read. The model is first
written as its transformers folder (`gpt2_dir`, `marian_dir`, `whisper_dir`), whose logits are proven equal to
mmkit's, then converted with CTranslate2's own converter (`ctranslate2.converters.TransformersConverter`, as
`ct2-transformers-converter` runs it): the same tensors under CTranslate2's names, in float32 unless a `quantization`
stores them smaller (int8: a quarter of the file, as the int8 Whisper folders faster-whisper users fetch; CTranslate2
also quantizes at load: `compute_type="int8"`). ctranslate2 is optional (`pip install ctranslate2`): asked for
without it, the export is one line.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from mmkit.inference.model_dir import check_export_dir, export_folder
from mmkit.weights.native import CONFIG_NAME, WEIGHTS_NAME, WeightsError

if TYPE_CHECKING:
    from mmkit.inference.encoder import LoadedEncoder
    from mmkit.inference.text_generation import TextGenerator
    from mmkit.inference.translator import Translator

log = logging.getLogger(__name__)
# The transformers folder's files CTranslate2 writes its own of (config.json) or holds in model.bin (the weights)
_NOT_COPIED = (CONFIG_NAME, WEIGHTS_NAME)
# CTranslate2's weight types (`--quantization` of its converters); None: as the model's (float32)
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")


def check_ctranslate2(quantization: str | None = None) -> None:
    """A WeightsError of one line where ctranslate2 is not installed or `quantization` is none of its weight types
    (before any model loads)."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise WeightsError(f"quantization {quantization!r} is none of CTranslate2's ({', '.join(QUANTIZATIONS)})")
    if importlib.util.find_spec("ctranslate2") is None:
        raise WeightsError("a CTranslate2 folder needs ctranslate2, which is not installed (pip install ctranslate2)")


def save_ct2_dir(write_transformers: Callable[[Path], object], directory: str | Path, loader: Any = None,
                 quantization: str | None = None) -> Path:
    """Write a model as a CTranslate2 folder into `directory` (new or empty), whole or not at all
    (`model_dir.export_folder`): `write_transformers(folder)` writes its transformers folder (a hidden one inside
    the stage, removed after), which CTranslate2's converter reads with its loader for the config's class
    (`loader`, a `ctranslate2.converters.transformers.ModelLoader`, instead where given); the transformers folder's
    tokenizer, preprocessor and generation files are copied beside model.bin, as `ct2-transformers-converter
    --copy_files` does, so that `AutoTokenizer` / faster-whisper read them from the one folder. `quantization`:
    the weights' type in model.bin (`QUANTIZATIONS`; None: float32).

    Raises:
        WeightsError: ctranslate2 not installed, a quantization it has not, a model CTranslate2 cannot convert (its
            converter's reason), a folder that holds files; nothing written.
        OSError: a folder that cannot be written, or a write failing midway (`WriteFailed`); nothing left.
    """
    check_ctranslate2(quantization)
    directory = check_export_dir(directory)
    with export_folder(directory) as stage:
        source = Path(tempfile.mkdtemp(dir=stage, prefix=".transformers-")) / "model"
        write_transformers(source)
        converted = stage / ".ct2"
        files = sorted(p.name for p in source.iterdir() if p.is_file() and p.name not in _NOT_COPIED)
        with _quiet():
            try:
                _convert(source, converted, files, loader, quantization)
            except (ValueError, NotImplementedError) as e:  # a model CTranslate2 has no spec for
                raise WeightsError(f"CTranslate2 cannot convert this model: {e}") from None
        for path in converted.iterdir():
            path.replace(stage / path.name)
        converted.rmdir()
        shutil.rmtree(source.parent)
    return directory


def _convert(source: Path, out: Path, files: list[str], loader: Any, quantization: str | None) -> None:
    """CTranslate2's conversion of the transformers folder `source` into `out` (made): its own
    `TransformersConverter`, or, for a `loader` of ours, the same steps with it (the converter picks its loader by
    the config's class and takes none from its caller)."""
    from ctranslate2.converters import TransformersConverter

    if loader is None:
        TransformersConverter(str(source), copy_files=files).convert(str(out), quantization=quantization)
        return
    import transformers

    model = getattr(transformers, loader.architecture_name).from_pretrained(source)
    out.mkdir()
    save_spec(loader, model, transformers.AutoTokenizer.from_pretrained(source), out,
              [source / name for name in files], quantization)


def save_spec(loader: Any, model: Any, tokenizer: Any, out: str | Path, files: list[Path] | tuple = (),
              quantization: str | None = None) -> None:
    """What CTranslate2's converter does once it has its loader, model and tokenizer: the model's spec, with `files`
    beside it, checked, its weights of `quantization`'s type, saved into the existing folder `out`. For a loader of
    our own (`start_token_loader`, `_zero_pooler_loader`) and the benches' placeholder vocabularies."""
    spec = loader(model, tokenizer)
    for path in files:
        spec.register_file(str(path))
    spec.validate()
    spec.optimize(quantization=quantization)
    spec.save(str(out))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' weight-loading progress bar and load report off while the converter loads the folder it was
    just given (a class without the folder's heads reports them unused: the converter's business, not the tool's)."""
    from transformers.utils import logging as hf_logging

    shown, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if shown:
            hf_logging.enable_progress_bar()


def save_ct2_generator(generator: TextGenerator, directory: str | Path, quantization: str | None = None) -> Path:
    """Save a GPT text generator as a CTranslate2 folder (`ctranslate2.Generator`), through its GPT-2 folder
    (`gpt2_dir.save_gpt2_dir`, whose tokenizer and generation files it holds too): `generate_batch` of a prompt's
    tokens with `sampling_topk=1` continues it as `generator.generate` does greedily. CTranslate2 reads no
    generation config: its decoding is what the caller passes (`beam_size`, `sampling_temperature`, ...)."""
    from mmkit.inference.gpt2_dir import save_gpt2_dir

    return save_ct2_dir(lambda folder: save_gpt2_dir(generator, folder), directory, quantization=quantization)


def save_ct2_translator(translator: Translator, directory: str | Path, quantization: str | None = None) -> Path:
    """Save a Seq2Seq translator as a CTranslate2 folder (`ctranslate2.Translator`), through its MarianMT folder
    (`marian_dir.save_marian_dir`, whose SentencePiece and tokenizer files it holds too): `translate_batch` of a
    source's pieces (EOS included, as MarianTokenizer gives them) decodes greedily as `translator.translate` does,
    the limit given as `max_decoding_length`.

    CTranslate2's MarianMT conversion assumes opus-mt's layout: the decoder starts from a zero vector where
    transformers reads the <pad> embedding, and <pad>, the last id, is dropped from the vocabulary. That holds for
    an opus-mt model (its <pad> row zero), converted so; a model that starts from its own start token (the
    translate_numbers recipe's <s>) keeps its start token and every id (`start_token_loader`), and a caller
    bans <pad> with `suppress_sequences=[["<pad>"]]` where the translator suppresses it. The source-relative
    length rule and the forced EOS at the limit are the caller's (CTranslate2 has neither in its config)."""
    from mmkit.inference.marian_dir import save_marian_dir

    codec, model = translator.codec, translator.model
    check_ctranslate2(quantization)
    opus_mt = (codec.start_id == codec.pad_id == model.config["vocab_size"] - 1
               and not model.tok_embed.weight[codec.pad_id].any())
    return save_ct2_dir(lambda folder: save_marian_dir(translator, folder), directory,
                        None if opus_mt else start_token_loader(), quantization)


def save_ct2_encoder(encoder: LoadedEncoder, directory: str | Path, quantization: str | None = None) -> Path:
    """Save a BERT / RoBERTa encoder as a CTranslate2 folder (`ctranslate2.Encoder`), through its transformers folder
    (`bert_dir.save_bert_dir`, whose tokenizer files it holds too): `forward_batch` of texts' ids (and token types)
    gives the encoder's hidden states as `last_hidden_state` (what `mmkit embed` pools), and `pooler_output` the
    pooled [CLS] where the model has a pooler, zeros where it has none (the masked-LM recipe's; CTranslate2's
    Encoder always has one). CTranslate2's Encoder holds no head: a masked-LM head or classifier is not carried,
    said in a warning."""
    from mmkit.inference.bert_dir import save_bert_dir
    from mmkit.weights.to_hf_bert import LAYOUTS

    check_ctranslate2(quantization)
    model = encoder.model
    heads = [name for name, head in (("masked-LM head", model.mlm_head), ("classifier", model.classifier))
             if head is not None]
    if heads:
        log.warning("CTranslate2's Encoder holds the encoder and its pooler only: the %s is not carried",
                    " and ".join(heads))
    stem = LAYOUTS[model.config.get("positions", "absolute")][1]  # Bert or Roberta
    loader = None if model.pooler is not None else _zero_pooler_loader(stem)
    return save_ct2_dir(lambda folder: save_bert_dir(encoder, folder), directory, loader, quantization)


def _zero_pooler_loader(stem: str) -> Any:
    """CTranslate2's BERT or RoBERTa loader for a model without a pooler: transformers' *Model makes one at random
    (and CTranslate2's spec needs one), so it is zeroed: pooler_output is 0, never a random vector."""
    import torch
    from ctranslate2.converters import transformers as loaders

    class ZeroPoolerLoader(getattr(loaders, f"{stem}Loader")):
        def get_model_spec(self, model: Any) -> Any:
            with torch.no_grad():
                model.pooler.dense.weight.zero_()
                model.pooler.dense.bias.zero_()
            return super().get_model_spec(model)

    return ZeroPoolerLoader()


def start_token_loader() -> Any:
    """CTranslate2's MarianMT loader for a Seq2Seq whose decoder starts from its own start token: BART's rules
    (post-norm as Marian, the decoder start token the config's, every token kept) with Marian's embeddings."""
    from ctranslate2.converters.transformers import BartLoader, MarianMTLoader

    class StartTokenMarianLoader(MarianMTLoader):
        def get_model_spec(self, model: Any) -> Any:
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return BartLoader.get_model_spec(self, model)  # no <pad> row dropped

        def set_config(self, config: Any, model: Any, tokenizer: Any) -> None:
            config.eos_token, config.unk_token = tokenizer.eos_token, tokenizer.unk_token
            config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)

        def set_decoder(self, spec: Any, decoder: Any) -> None:
            BartLoader.set_decoder(self, spec, decoder)  # from the start token's embedding, not a zero vector

        def get_vocabulary(self, model: Any, tokenizer: Any) -> list[str]:
            return BartLoader.get_vocabulary(self, model, tokenizer)

    return StartTokenMarianLoader()
