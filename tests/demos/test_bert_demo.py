"""The BERT tab (demos/bert.py) in headless Chromium on a tiny transformers BertForMaskedLM: Fill
shows the API's top candidate and filled text, Show attention draws the heat map with the weights
`attention_view` gives for the chosen layer and head; a prompt without [MASK] is an error message."""
from __future__ import annotations

import pytest
import torch
from _bert import write_tiny_bert
from _browser import TIMEOUT_MS, label_top_class, open_app
from playwright.sync_api import expect

from mmkit.inference.encoder import load_encoder
from mmkit.inference.fill_mask import attention_view, fill_mask

TEXT = "the cat [MASK] the moon."


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bert")
    write_tiny_bert(directory, "mlm", seed=3)
    return load_encoder(directory)


def test_fill_and_attention_functions_match_the_api(encoder):
    from demos.bert import attention, fill

    [expected] = fill_mask(encoder, TEXT)
    candidates, filled = fill(encoder, TEXT, 5)
    assert list(candidates.items()) == expected.candidates and filled == expected.filled
    tokens, maps = attention_view(encoder, "the cat sees the moon.")
    image, _ = attention(encoder, "the cat sees the moon.", 2, 0)
    assert image.size[0] > 28 * len(tokens) and maps.shape[:2] == (2, 4)


def test_fill_fills_every_mask_and_keeps_candidates_that_decode_alike_apart(encoder, monkeypatch):
    """Byte-level BPE decodes each partial UTF-8 byte alone to the same "\ufffd": the label's dict kept one of
    them. Every mask is filled with its own best candidate (each prediction's `filled` keeps the others)."""
    import demos.bert
    from mmkit.inference.fill_mask import MaskPrediction

    text = "the cat [MASK] the moon [MASK]."
    predictions = fill_mask(encoder, text, 3)
    ids = encoder.tokenizer.encode(text)
    for p in predictions:
        ids[p.position] = p.ids[0]
    assert encoder.tokenizer.mask_id not in ids
    assert demos.bert.fill(encoder, text, 3)[1] == encoder.tokenizer.decode(ids)
    alike = [MaskPrediction(3, [("\ufffd", 0.3), ("\ufffd", 0.2), ("a", 0.1)], "the cat \ufffd", [7, 9, 11])]
    monkeypatch.setattr(demos.bert, "fill_mask", lambda *a: alike)
    assert demos.bert.fill(encoder, "the cat [MASK]", 3)[0] == {"\ufffd (id 7)": 0.3, "\ufffd (id 9)": 0.2, "a": 0.1}


def test_attention_under_concurrent_fills_is_the_texts_own(encoder):
    """Gradio runs Fill and Show attention concurrently on one model: the attention view's hooks saw the
    other event's forward passes (359 of 1,455 calls failed with a stack of unequal sizes, and with equal
    lengths 279 of 884 maps were silently the other text's)."""
    import threading

    from demos.bert import attention, fill

    long_text = "the cat [MASK] the moon and the teacher draws a quiet song on the long road."
    tokens, expected = attention_view(encoder, "the cat sees.")
    same_length = "a dog sees."  # as many tokens: its maps would be stacked without an error
    assert len(attention_view(encoder, same_length)[0]) == len(tokens)
    failures: list[str] = []
    start = threading.Barrier(3)

    def fills():
        start.wait()
        try:
            for _ in range(60):
                fill(encoder, long_text, 5)
        except Exception as e:  # noqa: BLE001 - the hooks of the other threads must not break it either
            failures.append(f"fill: {e!r}"[:200])

    def views(text, reference):
        def loop():
            start.wait()
            for _ in range(60):
                try:
                    _, maps = attention_view(encoder, text)
                    attention(encoder, text, 2, 1)
                except Exception as e:  # noqa: BLE001 - counted below
                    failures.append(repr(e)[:200])
                    continue
                if not torch.equal(maps, reference):
                    failures.append(f"maps of {text!r} differ")
        return loop

    threads = [threading.Thread(target=t) for t in
               (fills, views("the cat sees.", expected), views(same_length, attention_view(encoder, same_length)[1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, (len(failures), failures[:3])


def test_a_huge_text_is_refused_before_tokenizing(encoder, monkeypatch):
    """A 10 MB text took 18 s and 2.3 GB only to be refused for its token count."""
    import gradio as gr

    from demos.bert import attention, fill

    huge = "the cat [MASK] the moon. " * 400_000
    monkeypatch.setattr(encoder.tokenizer, "encode", lambda text: pytest.fail("tokenized"))
    limit = encoder.model.max_len
    message = f"the text is {len(huge)} characters long, more than the model's {limit} tokens can hold"
    with pytest.raises(gr.Error, match=message):
        fill(encoder, huge, 5)
    with pytest.raises(gr.Error, match=message):
        attention(encoder, huge, 1, 0)


@pytest.mark.parametrize("args, message", [
    (("a\ud800b", 1, 0), "the text is not valid Unicode: an unpaired surrogate"),
    (("the cat", float("nan"), 0), r"layer must be a whole number in \[1, 2\], got nan"),
    (("the cat", 1, float("nan")), r"head must be a whole number in \[0, 4\], got nan"),
    (("the cat", 1.5, 0), r"layer must be a whole number in \[1, 2\], got 1.5"),
    (("the cat", 3, 0), r"layer must be a whole number in \[1, 2\], got 3"),
    (("the cat", 1, -1), r"head must be a whole number in \[0, 4\], got -1"),
])
def test_odd_values_from_the_http_api_are_one_line_errors(encoder, args, message):
    import gradio as gr

    from demos.bert import attention, fill

    with pytest.raises(gr.Error, match=message):
        attention(encoder, *args)
    if args[0].startswith("a\ud800"):
        with pytest.raises(gr.Error, match=message):
            fill(encoder, "a [MASK] \ud800", 5)


def test_demo_fills_the_mask_and_shows_attention(page, serve_blocks, encoder):
    from demos.bert import build_app

    [expected] = fill_mask(encoder, TEXT)
    tokens, maps = attention_view(encoder, "the cat sees the moon.")
    open_app(page, serve_blocks(build_app(encoder)))
    page.locator("#mask-text textarea").fill(TEXT)
    page.locator("#fill").click()
    expect(label_top_class(page.locator("#mask-candidates"))).to_have_text(expected.candidates[0][0],
                                                                            timeout=TIMEOUT_MS)
    expect(page.locator("#filled textarea")).to_have_value(expected.filled, timeout=TIMEOUT_MS)
    page.locator("#attention-text textarea").fill("the cat sees the moon.")
    page.locator("#show-attention").click()  # layer 1, head 0: the mean of the heads
    expect(page.locator("#self-attention img").first).to_be_visible(timeout=TIMEOUT_MS)
    weights = maps[0].mean(0)
    table = page.locator("#attention-weights")
    expect(table.get_by_role("gridcell", name=f"{float(weights.max()):.3f}".rstrip("0").rstrip(".")).first) \
        .to_be_visible(timeout=TIMEOUT_MS)
    expect(table.get_by_role("columnheader", name=f"1:{tokens[1]}").first).to_be_attached(timeout=TIMEOUT_MS)
    page.locator("#mask-text textarea").fill("the cat sees the moon.")
    page.locator("#fill").click()
    expect(page.get_by_text("no [MASK] in the text").first).to_be_visible(timeout=TIMEOUT_MS)


def test_fill_with_a_roberta_tokenizer_fills_the_mask_where_fill_mask_found_it(tmp_path):
    """"[MASK]" is read as RoBERTa's "<mask>" by fill_mask; the demo's filled text once re-encoded the raw
    text ("[", "MASK", "]" pieces), so the prediction was written at the wrong token."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    from _bert import write_tiny_roberta_classifier
    from demos.bert import fill
    from mmkit.inference.encoder import load_encoder
    from mmkit.inference.fill_mask import fill_mask

    ref, _ = write_tiny_roberta_classifier(tmp_path / "roberta")
    config = RobertaConfig(**{k: v for k, v in ref.config.to_dict().items() if k not in ("architectures",)})
    RobertaForMaskedLM(config).eval().save_pretrained(tmp_path / "roberta")
    encoder = load_encoder(tmp_path / "roberta")
    assert encoder.tokenizer.mask_token == "<mask>"
    text = "a young [MASK] that barks"
    (prediction,) = fill_mask(encoder, text, 3)
    candidates, filled = fill(encoder, text, 3)
    assert filled == prediction.filled and candidates == dict(prediction.candidates)


def test_the_api_endpoints_are_named(encoder):
    from demos.bert import build_app

    assert [f.api_name for f in build_app(encoder).fns.values()] == ["fill_mask", "attention"]


def test_roberta_mask_token_shows_in_the_instructions(page, serve_blocks, tmp_path):
    """The instruction "write <mask> where a word is missing" is Markdown, rendered as HTML: the browser read
    RoBERTa's "<mask>" as a tag and showed "write  where a word is missing"."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    from _bert import write_tiny_roberta_classifier
    from demos.bert import build_app

    ref, _ = write_tiny_roberta_classifier(tmp_path / "roberta")
    config = RobertaConfig(**{k: v for k, v in ref.config.to_dict().items() if k not in ("architectures",)})
    RobertaForMaskedLM(config).eval().save_pretrained(tmp_path / "roberta")
    open_app(page, serve_blocks(build_app(load_encoder(tmp_path / "roberta"))))
    expect(page.get_by_text("Fill-mask: write <mask> where a word is missing")).to_be_visible(timeout=TIMEOUT_MS)


def test_the_api_names_its_parameters_and_returns_the_attention_table(serve_blocks, encoder):
    """/fill_mask and /attention took parameters named t, l, h (lambdas), and /attention returned a component
    update ({"__type__": "update", ...}) instead of the table."""
    from gradio_client import Client

    from demos.bert import build_app

    client = Client(serve_blocks(build_app(encoder)), verbose=False)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert [p["parameter_name"] for p in endpoints["/fill_mask"]["parameters"]] == ["text"]
    assert [p["parameter_name"] for p in endpoints["/attention"]["parameters"]] == ["text", "layer", "head"]
    _, table = client.predict("the cat sees the moon.", 2, 1, api_name="/attention")
    tokens, maps = attention_view(encoder, "the cat sees the moon.")
    labels = [f"{i}:{t}" for i, t in enumerate(tokens)]
    assert "__type__" not in table and table["headers"] == ["query \\ key"] + labels
    assert table["data"] == [[label] + [round(float(w), 3) for w in row] for label, row in zip(labels, maps[1][0])]
