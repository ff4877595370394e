"""`save_bert_dir`: an mmkit BERT encoder (a native MLM or classifier export, an imported transformers BERT or
RoBERTa) saved as a transformers directory loads in `AutoModel`, the *ForMaskedLM / *ForSequenceClassification
class config.json names and `AutoTokenizer` with the same hidden states, logits, labels and token ids, reads back
through `load_encoder` as it was, and what transformers cannot hold is refused in one line before anything is
written."""
from __future__ import annotations

import json

import pytest
import torch
from _bert import MAX_POSITIONS, tiny_wordpiece, write_tiny_bert, write_tiny_roberta_classifier
from _gpt import tiny_corpus

from mmkit.inference.bert_dir import VERBATIM_TOKENIZER, save_bert_dir
from mmkit.inference.encoder import LoadedEncoder, load_encoder, save_encoder
from mmkit.models import BERT
from mmkit.weights.native import WeightsError
from tests.inference._export_checks import EXISTING, check_held_folder_refused, check_nothing_left, disk_full, one_line

TEXTS = ["The cat sees the moon.", "Hello, WORLD! (a test?) 'quotes' \"too\"",
         "café naïve façade Ærø Crème BRÛLÉE", "CJK 漢字かな한글 mixed in",
         "a [MASK] and [SEP] inside, [mask] lower", "unknownwordxyz qqqzzz ŋ",
         "  two  spaces\t\ttabs\nnew lines  ", "", "emoji 😀👍🏽 ok", "don't stop—it's 3.14 and a <mask> too",
         "a\u200bzero width\u00a0nbsp and control\x07char",
         "the ﬁsh sees ＴＨＥ ＣＡＴ ①"]  # NFKC's: a ligature, full-width letters, a circled digit
SIZES = dict(max_len=MAX_POSITIONS, dim=32, depth=2, num_heads=4, mlp_ratio=2.0)


def _native(tok, seed: int = 0, **config) -> BERT:
    """A random-init mmkit BERT with weights wide enough that its outputs vary from token to token."""
    torch.manual_seed(seed)
    model = BERT(vocab_size=len(tok), pad_id=tok.pad_id, **{**SIZES, **config})
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model.eval()


def _batch(tok, types: bool) -> dict[str, torch.Tensor]:
    """Varied texts as a padded batch (padding in the batch, so the masks and RoBERTa's positions count)."""
    rows = tok.encode_batch(TEXTS[:6], max_len=MAX_POSITIONS - 2)
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    batch = dict(input_ids=ids, attention_mask=mask)
    if types:  # a second segment from the third token on
        batch["token_type_ids"] = (torch.arange(width) >= 3).long().expand_as(ids) * mask
    return batch


def _load(name: str, directory, **kwargs):
    """transformers' class `name` from the saved directory, with what it loaded."""
    import transformers

    model, info = getattr(transformers, name).from_pretrained(directory, output_loading_info=True, **kwargs)
    return model.eval(), info


def _diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Largest difference, on the real tokens where `mask` (B, T) is given."""
    d = (a - b).abs()
    return float((d * mask[..., None] if mask is not None else d).max())


def _check_parity(encoder: LoadedEncoder, directory) -> None:
    """The class config.json names loads every weight it has and gives the mmkit model's logits; AutoModel gives its
    hidden states (and pooled [CLS] where it has a pooler), all within 1e-4 in fp32, on outputs that vary."""
    config = json.loads((directory / "config.json").read_text())
    model, tok = encoder.model, encoder.tokenizer
    batch = _batch(tok, types=model.type_embed.num_embeddings > 1)
    mask = batch["attention_mask"]
    arch = config["architectures"][0]
    hf, info = _load(arch, directory)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        hidden = model.encode(**batch)
        assert hidden[mask.bool()].std() > 0.5  # varied states, so the comparison can fail
        base = _load("AutoModel", directory)[0]
        out = base(**batch)
        assert _diff(out.last_hidden_state, hidden, mask) <= 1e-4
        if model.pooler is not None:
            assert _diff(out.pooler_output, model.pool(hidden)) <= 1e-4
        if arch.endswith("ForMaskedLM"):
            logits = model.mlm_logits(hidden)
            assert logits.std() > 0.5 and _diff(hf(**batch).logits, logits, mask) <= 1e-4
        elif arch.endswith("ForSequenceClassification"):
            logits = model.classify(**batch)
            assert logits.std() > 0.1 and _diff(hf(**batch).logits, logits) <= 1e-4
            assert hf.config.id2label == dict(enumerate(encoder.class_names))
            assert hf.config.problem_type == encoder.problem_type
        else:
            assert arch.endswith("Model") and model.mlm_head is None and model.classifier is None
    if model.mlm_head is not None and model.classifier is None:  # its class leaves nothing unused but a pooler
        assert all(".pooler." in k for k in info["unexpected_keys"]), info


def _check_round_trip(encoder: LoadedEncoder, directory) -> LoadedEncoder:
    """`load_encoder` on the saved directory: the same outputs, heads, class names, problem type and token ids."""
    again = load_encoder(directory)
    model = encoder.model
    assert {k: v for k, v in again.model.config.items() if "dropout" not in k} == {
        k: v for k, v in model.config.items() if "dropout" not in k}
    assert (again.class_names, again.problem_type) == (encoder.class_names, encoder.problem_type)
    assert again.tokenizer.encode_batch(TEXTS) == encoder.tokenizer.encode_batch(TEXTS)
    batch = _batch(encoder.tokenizer, types=model.type_embed.num_embeddings > 1)
    with torch.no_grad():
        assert torch.equal(again.model.encode(**batch), model.encode(**batch))
        if model.mlm_head is not None:
            hidden = model.encode(**batch)
            assert torch.equal(again.model.mlm_logits(hidden), model.mlm_logits(hidden))
        if model.classifier is not None:
            assert torch.equal(again.model.classify(**batch), model.classify(**batch))
    return again


@pytest.fixture(scope="module")
def tok():
    return tiny_wordpiece()


@pytest.fixture(scope="module")
def native_mlm(tmp_path_factory, tok):
    """A native MLM export as the masked-LM recipe makes it (no pooler, dropout after the activation) and its
    transformers directory."""
    root = tmp_path_factory.mktemp("mlm")
    save_encoder(_native(tok, pooler=False, mlm_head=True), tok, root / "export")
    encoder = load_encoder(root / "export")
    return encoder, save_bert_dir(encoder, root / "hf")


@pytest.fixture(scope="module")
def native_classifier(tmp_path_factory, tok):
    """A native classifier export (BERT's pooled head) with class names and a problem type."""
    root = tmp_path_factory.mktemp("classifier")
    model = _native(tok, seed=1, mlm_head=False, num_classes=3)
    save_encoder(model, tok, root / "export", ["neg", "neutral", "pos"], "multi_label_classification")
    encoder = load_encoder(root / "export")
    return encoder, save_bert_dir(encoder, root / "hf")


def test_a_native_mlm_export_loads_in_bert_for_masked_lm(native_mlm):
    """A masked-LM recipe's export: BertForMaskedLM gives its MLM logits, AutoModel its hidden states; load_encoder
    reads the directory back as it was."""
    encoder, directory = native_mlm
    config = json.loads((directory / "config.json").read_text())
    assert (config["architectures"], config["model_type"]) == (["BertForMaskedLM"], "bert")
    assert "id2label" not in config and "problem_type" not in config
    _check_parity(encoder, directory)
    _check_round_trip(encoder, directory)


def test_a_native_classifier_loads_in_bert_for_sequence_classification(native_classifier):
    """Class names become id2label / label2id / num_labels, the problem type is kept, the logits are the same."""
    encoder, directory = native_classifier
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert (config["id2label"], config["label2id"], config["num_labels"], config["problem_type"]) == (
        {"0": "neg", "1": "neutral", "2": "pos"}, {"neg": 0, "neutral": 1, "pos": 2}, 3,
        "multi_label_classification")
    _check_parity(encoder, directory)
    again = _check_round_trip(encoder, directory)
    assert again.class_names == ["neg", "neutral", "pos"]


@pytest.mark.parametrize("kind", ["mlm", "base", "classify"])
def test_an_imported_bert_goes_back_to_transformers_as_it_came(tmp_path, kind):
    """A transformers BERT directory read by `load_encoder` and saved again: the same class, and outputs equal to
    the original transformers model's; `load_encoder` reads the new directory as the first."""
    hf, _ = write_tiny_bert(tmp_path / "hub", kind)
    imported = load_encoder(tmp_path / "hub")
    directory = save_bert_dir(imported, tmp_path / "again")
    assert json.loads((directory / "config.json").read_text())["architectures"] == [type(hf).__name__]
    _check_parity(imported, directory)
    _check_round_trip(imported, directory)
    saved = _load(type(hf).__name__, directory)[0]
    batch = _batch(imported.tokenizer, types=True)
    with torch.no_grad():
        out, ref = saved(**batch), hf(**batch)
        for name in ("logits", "last_hidden_state", "pooler_output"):
            if name in ref:
                assert _diff(out[name], ref[name]) <= 1e-5, name


def test_an_imported_roberta_classifier_goes_back_as_roberta(tmp_path):
    """A transformers RobertaForSequenceClassification (RoBERTa positions, its dense + tanh head, a byte-level BPE
    read from vocab.json + merges.txt) saved again: RobertaForSequenceClassification with the same logits, <s> and
    </s> as bos / eos, and a RobertaTokenizer of the same ids."""
    hf, _ = write_tiny_roberta_classifier(tmp_path / "hub")
    imported = load_encoder(tmp_path / "hub")
    directory = save_bert_dir(imported, tmp_path / "again")
    config = json.loads((directory / "config.json").read_text())
    assert (config["architectures"], config["model_type"], config["pad_token_id"]) == (
        ["RobertaForSequenceClassification"], "roberta", 1)
    assert (config["bos_token_id"], config["eos_token_id"]) == (0, 2)
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {p.name for p in directory.iterdir()}
    _check_parity(imported, directory)
    _check_round_trip(imported, directory)
    saved = _load("RobertaForSequenceClassification", directory)[0]
    batch = _batch(imported.tokenizer, types=False)
    with torch.no_grad():
        assert _diff(saved(**batch).logits, hf(**batch).logits) <= 1e-5


def test_a_roberta_mlm_loads_in_roberta_for_masked_lm(tmp_path):
    """A native MLM on RoBERTa's positions (pad id 1, offset table) with a WordPiece tokenizer: RobertaForMaskedLM,
    its lm_head tied, and a BertTokenizer (the tokenizer's kind, not the layout's)."""
    from mmkit.data.bert_tokenizer import EncoderTokenizer

    tok = EncoderTokenizer.train(tiny_corpus(), 200)
    model = _native(tok, seed=2, positions="roberta", max_len=MAX_POSITIONS + tok.pad_id + 1, type_vocab_size=1,
                    norm_eps=1e-5, pooler=False)
    encoder = LoadedEncoder(model, tok)
    directory = save_bert_dir(encoder, tmp_path / "hf")
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["RobertaForMaskedLM"] and config["pad_token_id"] == tok.pad_id
    assert json.loads((directory / "tokenizer_config.json").read_text())["tokenizer_class"] == "BertTokenizer"
    _check_parity(encoder, directory)
    _check_round_trip(encoder, directory)


@pytest.mark.parametrize("heads", ["mlm-and-pooler", "classifier-and-mlm"])
def test_heads_beside_the_named_ones_are_saved_for_the_classes_that_use_them(tmp_path, tok, heads):
    """An MLM with a pooler (BERT's defaults, bert-base-uncased's layout) is a BertForMaskedLM that leaves only the
    pooler unused, AutoModel's pooled [CLS] the mmkit pooler's; a classifier that kept its MLM head is a
    BertForSequenceClassification from whose folder BertForMaskedLM loads that head, its logits the same."""
    config = dict(num_classes=2) if heads == "classifier-and-mlm" else {}
    encoder = LoadedEncoder(_native(tok, seed=3, **config), tok)
    directory = save_bert_dir(encoder, tmp_path / "hf")
    named = "BertForSequenceClassification" if config else "BertForMaskedLM"
    assert json.loads((directory / "config.json").read_text())["architectures"] == [named]
    _check_parity(encoder, directory)
    _check_round_trip(encoder, directory)
    mlm, info = _load("BertForMaskedLM", directory)
    assert not info["missing_keys"]
    assert all(k.startswith(("bert.pooler.", "classifier.")) for k in info["unexpected_keys"]), info
    batch = _batch(tok, types=True)
    with torch.no_grad():
        logits = encoder.model.mlm_logits(encoder.model.encode(**batch))
        assert _diff(mlm(**batch).logits, logits, batch["attention_mask"]) <= 1e-4


def _slow_tokenizer(directory, tokenizer_class: str):
    """transformers' pure-Python tokenizer of the directory where it still has one (transformers 5:
    BertTokenizerLegacy alone; 4: AutoTokenizer's use_fast=False), else None."""
    import transformers

    if transformers.__version__.split(".")[0] == "4":
        return transformers.AutoTokenizer.from_pretrained(directory, use_fast=False)
    legacy = getattr(transformers, tokenizer_class + "Legacy", None)
    return legacy.from_pretrained(directory) if legacy is not None else None


def _tokenizer_cases(tmp_path, tok, native_dir):
    """(name, encoder, saved directory) of each kind of tokenizer an export has."""
    from tokenizers import normalizers

    from mmkit.data.bert_tokenizer import EncoderTokenizer

    cases = [("native-uncased", tok, native_dir)]
    cased = EncoderTokenizer.train(tiny_corpus() + ["Café CAFÉ Crème BRÛLÉE naïve"], 220, lowercase=False)
    imported = write_tiny_bert(tmp_path / "bert-hub", "base")[1]  # what a vocab.txt-only hub folder reads as
    custom = EncoderTokenizer.train(tiny_corpus(), 200)  # a normalizer BertTokenizer has no setting for
    custom.hf.normalizer = normalizers.Sequence([normalizers.NFKC(), custom.hf.normalizer])
    write_tiny_roberta_classifier(tmp_path / "roberta-hub")
    roberta = load_encoder(tmp_path / "roberta-hub").tokenizer
    for name, t in [("cased", cased), ("imported-vocab-txt", load_encoder(tmp_path / "bert-hub").tokenizer),
                    ("custom-normalizer", custom), ("roberta-bpe", roberta)]:
        assert name != "imported-vocab-txt" or t.encode_batch(TEXTS) == [imported.encode(x) for x in TEXTS]
        cases.append((name, t, save_bert_dir(LoadedEncoder(_native(t, pooler=False), t), tmp_path / name)))
    return cases


def test_autotokenizer_gives_the_encoders_ids(tmp_path, tok, native_mlm):
    """AutoTokenizer (and the pure-Python tokenizer where transformers has one) on each saved directory gives the
    encoder tokenizer's ids for casing, accents, punctuation, CJK, emoji, unknown words, control characters and the
    special tokens written in the text; its special tokens and context are the model's."""
    from transformers import AutoTokenizer

    classes = {}
    for name, t, directory in _tokenizer_cases(tmp_path, tok, native_mlm[1]):
        settings = json.loads((directory / "tokenizer_config.json").read_text())
        classes[name] = settings["tokenizer_class"]
        expected = t.encode_batch(TEXTS)
        assert any(t.unk_id in ids for ids in expected) or name == "roberta-bpe"  # unknown words met
        fast = AutoTokenizer.from_pretrained(directory)
        assert (fast.cls_token_id, fast.sep_token_id, fast.pad_token_id, fast.mask_token_id) == (
            t.cls_id, t.sep_id, t.pad_id, t.mask_id), name
        assert fast.model_max_length == MAX_POSITIONS and len(fast) == t.vocab_size, name
        for text, ids in zip(TEXTS, expected):
            assert fast(text)["input_ids"] == ids, (name, text)
        slow = _slow_tokenizer(directory, settings["tokenizer_class"])
        if slow is not None:
            assert [slow(text)["input_ids"] for text in TEXTS] == expected, name
    assert classes == {"native-uncased": "BertTokenizer", "cased": "BertTokenizer",
                       "imported-vocab-txt": "BertTokenizer", "custom-normalizer": VERBATIM_TOKENIZER,
                       "roberta-bpe": "RobertaTokenizer"}
    cased = json.loads((tmp_path / "cased" / "tokenizer_config.json").read_text())
    assert (cased["do_lower_case"], cased["strip_accents"]) == (False, None)


def test_what_transformers_cannot_hold_is_refused_before_anything_is_written(tmp_path, tok, native_mlm):
    """An int8 model, the classifier recipe's mean-pooling head, a head of the other layout, repeated class names
    and a folder holding files are each one line, with nothing written (the held folder's files untouched)."""
    int8 = load_encoder(native_mlm[1], quantize="int8")
    with pytest.raises(WeightsError) as err:
        save_bert_dir(int8, tmp_path / "int8")
    assert "an int8 model is not exported" in one_line(err.value) and not (tmp_path / "int8").exists()
    layouts = [(dict(pooler=False, classifier_head="mean"), "classifier_head='mean'"),
               (dict(pooler=False, classifier_head="dense_tanh"), "classifier_head='dense_tanh' with positions")]
    for n, (config, words) in enumerate(layouts):
        encoder = LoadedEncoder(_native(tok, mlm_head=False, num_classes=2, **config), tok)
        with pytest.raises(WeightsError) as err:
            save_bert_dir(encoder, tmp_path / f"layout{n}")
        assert words in one_line(err.value) and not (tmp_path / f"layout{n}").exists()
    repeated = LoadedEncoder(_native(tok, mlm_head=False, num_classes=2), tok, {"class_names": ["same", "same"]})
    with pytest.raises(WeightsError) as err:
        save_bert_dir(repeated, tmp_path / "repeated")
    assert "class names repeat ('same')" in one_line(err.value) and not (tmp_path / "repeated").exists()
    check_held_folder_refused(lambda out: save_bert_dir(native_mlm[0], out), tmp_path)


@EXISTING
def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch, tok, existing):
    """A full disk met midway (the weights written, the tokenizer not) is one line naming the folder and takes
    back what was written: a new folder is gone, an empty one is empty again."""
    encoder = LoadedEncoder(_native(tok), tok)

    def full_disk(directory):
        assert (directory / "model.safetensors").is_file()
        disk_full()

    monkeypatch.setattr(tok, "save", full_disk)
    check_nothing_left(lambda out: save_bert_dir(encoder, out), tmp_path / "hf", existing)
