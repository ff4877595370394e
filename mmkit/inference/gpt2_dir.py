"""Saving an mmkit GPT text generator as a transformers GPT-2 directory (Radford et al., 2019): config.json,
model.safetensors, generation_config.json and the tokenizer files, the layout `GPT2LMHeadModel.from_pretrained`,
`AutoTokenizer.from_pretrained` and `pipeline("text-generation")` read, with the same logits and the same default
`generate()` decoding. The inverse of `text_generation.load_text_generator`'s GPT-2 reading; the weights go through
`weights.from_hf.gpt2_from_mmkit`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmkit.inference.generation_config import transformers_generation_config
from mmkit.inference.model_dir import check_export_dir, export_folder
from mmkit.inference.quantize import check_exportable
from mmkit.weights.from_hf import gpt2_from_mmkit
from mmkit.weights.native import CONFIG_NAME, WEIGHTS_NAME, WeightsError, save_weights, write_json

if TYPE_CHECKING:
    from mmkit.inference.text_generation import TextGenerator

GENERATION_CONFIG_NAME = "generation_config.json"
TOKENIZER_CONFIG_NAME, SPECIAL_TOKENS_NAME = "tokenizer_config.json", "special_tokens_map.json"
# GPT-2 blocks as mmkit's GPT computes them, written out rather than left to GPT2Config's defaults (a later
# transformers changing a default would otherwise change the model it loads)
_GPT2_FIXED = {"architectures": ["GPT2LMHeadModel"], "scale_attn_weights": True,
               "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "add_cross_attention": False,
               "use_cache": True}


def save_gpt2_dir(generator: TextGenerator, directory: str | Path) -> Path:
    """Save `generator` as a transformers GPT-2 directory, for Hugging Face users: `GPT2LMHeadModel.from_pretrained`
    loads it with the same logits, `AutoTokenizer.from_pretrained` encodes and decodes as `generator.tokenizer`
    does, and `generate()` / `pipeline("text-generation")` without decoding arguments decode as `generator.generate`
    does without options (`generation_config.transformers_generation_config`). `load_text_generator` reads it
    back with the same eos_id, the same default decoding and the same outputs. `directory` must be new or empty; it
    is written whole or not at all (`model_dir.export_folder`).

    What transformers' one generation config cannot carry (mmkit's own export, `TextGenerator.export`, keeps it):
    - the sampling fallbacks of a model whose defaults do not sample: a sampling run asked of transformers takes
      its top_k 50, temperature 1 and top_p 1 (an imported GPT-2's fallbacks, which come back as they were), where
      an mmkit-native model samples among all tokens (give top_k=0 there); set beside do_sample false, they would
      make transformers warn at every load;
    - length_penalty and early_stopping without beams (transformers warns of them too);
    - fallbacks apart from the defaults where the defaults sample: the config's sampling values are both, so they
      come back as the defaults' (the same decoding under every option given).

    Returns:
        `directory`, expanded.

    Raises:
        WeightsError: an int8 model (export the fp32 one: int8 is applied at load), a model GPT-2 cannot
            express (no q/k/v bias, an untied head), or a folder that holds files; nothing written.
        OSError: a folder that cannot be written, or a write failing midway (a full disk: `WriteFailed`), one
            line; nothing left in the folder.
    """
    check_exportable(generator.model, WeightsError)
    directory = check_export_dir(directory)
    model, eos_id = generator.model, generator.eos_id
    config, state = gpt2_from_mmkit(model.config, model.state_dict(), eos_id)
    # generation stops at the generator's eos_id, None too (gpt2_from_mmkit would take GPT-2's 50256 for None)
    config.update(bos_token_id=eos_id, eos_token_id=eos_id, dtype=str(state["lm_head.weight"].dtype).split(".")[-1],
                  **_GPT2_FIXED)
    # the tokenizer names it its eos (and bos, unk) where it is a special token (<|endoftext|>): a plain token named
    # so would become one, matched in raw text and split out, and AutoTokenizer would encode otherwise than mmkit
    added = generator.tokenizer.hf.get_added_tokens_decoder().get(eos_id) if eos_id is not None else None
    eos = added.content if added is not None and added.special else None
    generation = transformers_generation_config(generator.default_options(), eos_id,
                                                length="max_new_tokens" in generator.defaults)
    docs = {CONFIG_NAME: config, GENERATION_CONFIG_NAME: generation,
            **gpt2_tokenizer_config(eos, model.max_len)}
    # GPT-2 ties lm_head to wte: transformers saves no lm_head (safetensors refuses the shared storage anyway)
    weights = {k: v.detach().cpu().contiguous() for k, v in state.items() if k != "lm_head.weight"}
    with export_folder(directory) as stage:
        save_weights(stage / WEIGHTS_NAME, weights, {"format": "pt"})  # transformers reads "format"
        generator.tokenizer.save(stage)
        for name, doc in docs.items():
            write_json(stage / name, doc)
    return directory


def gpt2_tokenizer_config(eos: str | None, max_len: int) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json and special_tokens_map.json of a GPT-2 directory whose tokenizer.json, vocab.json and
    merges.txt are `ByteBPETokenizer.save`'s: GPT-2's tokenizer class, no prefix space, no bos added, no clean-up of
    spaces at decoding (transformers 4's would drop the space before punctuation, which mmkit's decoding keeps), and
    `eos` (the special end-of-text token generation stops at; None: none) as GPT-2's bos, eos and unk token."""
    special = {name: eos for name in ("bos_token", "eos_token", "unk_token")}
    return {TOKENIZER_CONFIG_NAME: {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_len, **special,
                                    "add_prefix_space": False, "add_bos_token": False,
                                    "clean_up_tokenization_spaces": False, "errors": "replace"},
            SPECIAL_TOKENS_NAME: {k: v for k, v in special.items() if v is not None}}
