"""BERT demo: fill-mask (the ranked candidates for [MASK] with their probabilities) and the attention
view (one layer and head, or the mean of a layer's heads, as a token x token heat map; Vig, 2019),
thin over `mmkit.inference.fill_mask` (`fill_mask`, `attention_view`), the paths the command line
(`mmkit fill-mask`) and the tests use.

`mmkit demo bert --model runs/bert_wordnet_mlm/export` serves it on http://127.0.0.1:7860.
"""
from __future__ import annotations

import gradio as gr

from demos import inputs
from demos.translate import heat_map, weights_table
from mmkit.inference.encoder import LoadedEncoder
from mmkit.inference.fill_mask import attention_view, fill_mask, with_mask_token


def fill(encoder: LoadedEncoder, text: str, top_k: int) -> tuple[dict[str, float], str]:
    """The first mask's candidates ({token text: probability}) and the text with every mask filled by its best
    candidate."""
    if encoder.model.mlm_head is None:
        raise inputs.refused("this model has no masked-LM head: load a masked-LM checkpoint for fill-mask")
    text = inputs.text(text, "the text")
    try:
        predictions = fill_mask(encoder, text, top_k)
    except ValueError as e:  # empty text, no [MASK], too long: shown, not a traceback
        raise inputs.refused(str(e)) from None
    filled = list(encoder.tokenizer.encode(with_mask_token(encoder.tokenizer, text)))  # the ids fill_mask read
    for p in predictions:  # each prediction's own `filled` keeps the other masks
        filled[p.position] = p.ids[0]
    first = predictions[0]
    texts = [t for t, _ in first.candidates]
    # the label's keys must differ: byte-level BPE decodes each partial UTF-8 byte alone to the same "\ufffd"
    names = [t if texts.count(t) == 1 else f"{t} (id {i})" for t, i in zip(texts, first.ids)]
    return dict(zip(names, (prob for _, prob in first.candidates))), encoder.tokenizer.decode(filled)


def attention(encoder: LoadedEncoder, text: str, layer: float, head: float):
    """Heat map and weights table of layer `layer` (1-based), head `head` (1-based; 0 = mean of heads)."""
    text = inputs.text(text, "the text")
    layer = inputs.whole(layer, "layer", 1, encoder.model.config["depth"])
    head = inputs.whole(head, "head", 0, encoder.model.config["num_heads"])
    try:
        tokens, maps = attention_view(encoder, text)
    except ValueError as e:
        raise inputs.refused(str(e)) from None
    layer_maps = maps[layer - 1]  # (num_heads, T, T)
    weights = layer_maps.mean(0) if head == 0 else layer_maps[head - 1]
    labels = [f"{i}:{t}" for i, t in enumerate(tokens)]
    return heat_map(tokens, tokens, weights), weights_table(tokens, labels, weights, "query \\ key")


def bert_tab(encoder: LoadedEncoder, top_k: int = 5) -> None:
    """Render the BERT tab (fill-mask and attention view) into the enclosing `gr.Blocks`."""
    depth, heads = encoder.model.config["depth"], encoder.model.config["num_heads"]
    mask = encoder.tokenizer.mask_token
    with gr.Tab("BERT", elem_id="bert-tab"):
        # in a code span: Markdown is rendered as HTML, where RoBERTa's "<mask>" was read as a tag and vanished
        gr.Markdown(f"**Fill-mask**: write `{mask}` where a word is missing and press Fill.")
        with gr.Row():
            with gr.Column():
                text = gr.Textbox(label="Text", value=f"a young {mask} that barks", elem_id="mask-text")
                button = gr.Button("Fill", variant="primary", elem_id="fill")
            with gr.Column():
                candidates = gr.Label(label=f"Candidates for the first {mask}", num_top_classes=top_k,
                                      elem_id="mask-candidates")
                filled = gr.Textbox(label="Filled in", interactive=False, elem_id="filled")
        # named functions, not lambdas: the API docs (view_api) name each parameter after the function's own
        def fill_mask_api(text: str) -> tuple[dict[str, float], str]:
            return fill(encoder, text, top_k)

        button.click(fill_mask_api, text, [candidates, filled], api_name="fill_mask")
        gr.Markdown("**Attention view**: where each token (row) attends (columns) in one layer and head; "
                    "head 0 shows the mean of the layer's heads.")
        with gr.Row():
            with gr.Column():
                source = gr.Textbox(label="Text", elem_id="attention-text")
                layer = inputs.slider(1, depth, value=1, step=1, label="Layer", elem_id="layer")
                head = inputs.slider(0, heads, value=0, step=1, label="Head (0: mean)", elem_id="head")
                show = gr.Button("Show attention", elem_id="show-attention")
            with gr.Column():
                picture = gr.Image(label="Self-attention (query x key)", type="pil", elem_id="self-attention")
        weights = gr.Dataframe(label="Attention weights", interactive=False, elem_id="attention-weights")
        def attention_api(text: str, layer: float, head: float):
            return attention(encoder, text, layer, head)

        show.click(attention_api, [source, layer, head], [picture, weights], api_name="attention")


def build_app(encoder: LoadedEncoder, title: str = "mmkit BERT") -> gr.Blocks:
    """A Blocks app with the BERT tab (see `bert_tab`)."""
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}")
        bert_tab(encoder)
    return app
