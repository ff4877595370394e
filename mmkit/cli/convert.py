"""`mmkit convert MODEL OUT --to FORMAT`: save an mmkit export in the layout of the library its family matches, for
the people who use that library: a ViT as a timm checkpoint folder (`timm.create_model("local-dir:OUT",
pretrained=True)`: the same logits, its pretrained_cfg holding the preprocessing and the class names), a CLIP as an
open_clip folder (`open_clip.create_model_and_transforms("local-dir:OUT")`, `get_tokenizer`: the same embeddings,
its eval transform the preprocessing), a GPT as a transformers GPT-2 folder (`GPT2LMHeadModel.from_pretrained(OUT)`,
`AutoTokenizer`, `pipeline("text-generation")`: the same logits and tokens, the export's decoding settings as its
generation_config.json), a BERT as a BERT/RoBERTa folder (its masked-LM or classifier class, AutoTokenizer), a
translation Seq2Seq as a MarianMT folder (MarianMTModel, MarianTokenizer, generate() as `mmkit translate`), a
Whisper (a fine-tuned checkpoint, a recipe's model) as a transformers Whisper folder (WhisperForConditionalGeneration,
AutoProcessor: the same logits, features and ids, generate() as mmkit's greedy decoding), and a GPT, BERT, Seq2Seq
or Whisper as a CTranslate2 folder (`ctranslate2.Generator` / `Encoder` / `Translator`, faster-whisper's
`WhisperModel`: greedy decoding gives mmkit's tokens, the encoder its hidden states; `--quantization int8` stores
int8 weights; needs `pip install ctranslate2`). OUT is
a new or empty folder, written whole or not at all (a folder that holds files is refused: they would be
overwritten). The imports go the other way: `ViT.from_timm`, `CLIP.from_open_clip`, and the tools' `--model` read
transformers GPT-2, BERT/RoBERTa, MarianMT and Whisper folders and CTranslate2 Whisper folders.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable, Sequence

from mmkit.cli.options import Parser
from mmkit.cli.ranked import on_ranks
from mmkit.errors import WriteFailed, print_error

log = logging.getLogger("mmkit")
PROG = "mmkit convert"
# --to FORMAT: the mmkit architectures it converts, each with how a user loads the result
TARGETS = {"timm": {"ViT": 'timm.create_model("local-dir:{out}", pretrained=True)'},
           "open_clip": {"CLIP": 'open_clip.create_model_and_transforms("local-dir:{out}")'},
           "transformers": {"GPT": 'transformers.AutoModelForCausalLM.from_pretrained("{out}")',
                            "BERT": 'the transformers class its config.json names ("architectures"), or AutoModel',
                            "Seq2Seq": 'transformers.MarianMTModel.from_pretrained("{out}") and MarianTokenizer',
                            "Whisper": 'transformers.WhisperForConditionalGeneration.from_pretrained("{out}") and '
                                       'AutoProcessor'},
           "ctranslate2": {"GPT": 'ctranslate2.Generator("{out}") and transformers.AutoTokenizer',
                           "BERT": 'ctranslate2.Encoder("{out}") and transformers.AutoTokenizer',
                           "Seq2Seq": 'ctranslate2.Translator("{out}") and transformers.AutoTokenizer',
                           "Whisper": 'faster_whisper.WhisperModel("{out}") or ctranslate2.models.Whisper'}}


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="an mmkit export (mmkit fit's runs/<recipe>/export)")
    p.add_argument("out", metavar="OUT", help="the folder to write, new or empty")
    p.add_argument("--to", required=True, choices=tuple(TARGETS),
                   help="timm (a ViT export), open_clip (a CLIP export), transformers (a GPT, BERT, Seq2Seq or "
                        "Whisper export: a GPT-2, BERT/RoBERTa, MarianMT or Whisper folder) or ctranslate2 (a GPT, "
                        "BERT, Seq2Seq or Whisper export: a CTranslate2 Generator, Encoder, Translator or "
                        "faster-whisper folder, needs ctranslate2)")
    p.add_argument("--quantization", metavar="TYPE", default=None,
                   help="--to ctranslate2: the weights' type in model.bin (int8: a quarter of the size; int8_float16, "
                        "float16, bfloat16, ...: CTranslate2's); default float32, which CTranslate2 can still "
                        "quantize at load (compute_type)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Returns 0 written, 2 a usage or input error (one line on stderr: nothing written), 1 a write that failed
    midway (a full disk: one line, nothing left in OUT), 130 interrupted."""
    return on_ranks(PROG, _parser, argv, lambda args, ranks: _run(args) if ranks.first else 0)


def _run(args: argparse.Namespace) -> int:
    from mmkit.inference.model_dir import check_export_dir, read_model_dir

    try:
        check_export_dir(args.out)  # before the model loads
        if args.to == "ctranslate2":
            from mmkit.inference.ct2_dir import check_ctranslate2

            check_ctranslate2(args.quantization)
        elif args.quantization is not None:
            raise ValueError(f"--quantization is for --to ctranslate2 (a {args.to} folder holds the model's own "
                             "weights)")
        directory, doc = read_model_dir(args.model)
        held = doc.get("architecture") or doc.get("model_type") or "unknown"
        if held not in TARGETS[args.to]:
            fits = [f"--to {name} converts {_either(archs)} exports" for name, archs in TARGETS.items()]
            raise ValueError(f"{directory}: holds a {held!r} model, not an mmkit {_either(TARGETS[args.to])} "
                             f"export ({'; '.join(fits)})")
        # the model loaded, checked against the format: nothing written
        write = _writer(held, directory, doc, args.to, args.quantization)
        write(args.out)  # whole or not at all (`model_dir.export_folder`)
    except WriteFailed as e:  # a full disk midway: nothing left in OUT
        print_error(PROG, e)
        return 1
    except (ValueError, OSError) as e:  # WeightsError is a ValueError
        print_error(PROG, e)
        return 2
    log.info("wrote %s; load it with %s", args.out, TARGETS[args.to][held].format(out=Path(args.out).expanduser()))
    return 0


def _either(names: Sequence[str]) -> str:
    """"A", "A or B", "A, B or C"."""
    names = list(names)
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


def _writer(architecture: str, directory: Path, doc: dict, target: str,
            quantization: str | None = None) -> Callable[[str], object]:
    """What writes `directory`'s model (of mmkit's `architecture`) in the `target` library's layout into OUT, once
    the model is loaded and checked against the layout (a setting it cannot express is refused here, before any
    folder is made)."""
    if architecture == "Whisper":
        from mmkit.inference.speech_checkpoints import load_speech_model
        from mmkit.inference.whisper_dir import save_ct2_whisper_dir, save_whisper_dir

        model, tokenizer = load_speech_model(directory)
        if target == "ctranslate2":
            return lambda out: save_ct2_whisper_dir(model, tokenizer, out, quantization)
        return lambda out: save_whisper_dir(model, tokenizer, out)
    if target == "ctranslate2":
        from mmkit.inference import ct2_dir

        if architecture == "Seq2Seq":
            from mmkit.inference.translator import load_translator

            translator = load_translator(directory)
            return lambda out: ct2_dir.save_ct2_translator(translator, out, quantization)
        if architecture == "BERT":
            from mmkit.inference.encoder import load_encoder

            encoder = load_encoder(directory)
            return lambda out: ct2_dir.save_ct2_encoder(encoder, out, quantization)
        from mmkit.inference.text_generation import load_text_generator

        generator = load_text_generator(directory)
        return lambda out: ct2_dir.save_ct2_generator(generator, out, quantization)
    if architecture == "BERT":
        from mmkit.inference.bert_dir import save_bert_dir
        from mmkit.inference.encoder import load_encoder

        encoder = load_encoder(directory)
        return lambda out: save_bert_dir(encoder, out)
    if architecture == "Seq2Seq":
        from mmkit.inference.marian_dir import save_marian_dir
        from mmkit.inference.translator import load_translator

        translator = load_translator(directory)
        return lambda out: save_marian_dir(translator, out)
    if architecture in ("ViT", "CLIP"):
        from mmkit.inference.model_dir import export_folder
        from mmkit.models import CLIP, ViT
        from mmkit.weights.to_open_clip import open_clip_export
        from mmkit.weights.to_timm import timm_vit_export

        if architecture == "ViT":
            model = ViT.from_pretrained(directory)
            names = doc.get("metadata", {}).get("class_names")
            timm_vit_export(model.config, model.state_dict(), model.preprocess, names)
            save: Callable[[Path], object] = lambda stage: model.save_timm(stage, names)
        else:
            model = CLIP.from_pretrained(directory)
            open_clip_export(model.config, model.state_dict(), model.preprocess)
            save = model.save_open_clip

        def write(out: str) -> None:
            with export_folder(out) as stage:
                save(stage)

        return write
    from mmkit.inference.gpt2_dir import save_gpt2_dir
    from mmkit.inference.text_generation import load_text_generator

    generator = load_text_generator(directory)
    return lambda out: save_gpt2_dir(generator, out)
