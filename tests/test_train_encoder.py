"""Mean-pooling encoder embedders: a tiny BERT with a WordPiece tokenizer built in the test."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = "bees honey paris france water boils light fast who what is the of".split()
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    out = tmp_path_factory.mktemp("bert") / "tiny-bert"
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                            cls_token="[CLS]", sep_token="[SEP]").save_pretrained(out)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(out)
    return out


def test_mean_pooling_ignores_left_padding(tiny_bert):
    from embedrank.train.encoder import MeanPoolEmbedder

    model = MeanPoolEmbedder.from_pretrained(tiny_bert)
    texts = ["bees honey", "what is the light of paris france"]
    assert model.tokenize_documents(["bees"]) == [[2, 4, 3]]  # [CLS] bees [SEP], no extra EOT
    batched = model.embed_documents(texts)
    single = torch.cat([model.embed_documents([t]) for t in texts])
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.allclose(batched.norm(dim=-1), torch.ones(2))


def test_train_mean_pooling_embedder(tiny_bert, tmp_path):
    from embedrank.train.trainer import TrainConfig, train

    data = tmp_path / "d.jsonl"
    rows = [("bees", "honey"), ("paris", "france"), ("water", "boils"), ("light", "fast")]
    data.write_text("".join(json.dumps({"query": q, "pos": [p]}) + "\n" for q, p in rows))
    result = train("embedder", TrainConfig(
        model=str(tiny_bert), data=str(data), out=str(tmp_path / "o"), max_steps=3,
        batch_size=4, negatives=1, lr=1e-3, temperature=0.05, pooling="mean", lora=False,
        eval=str(data), progress=False))
    assert result.steps == 3 and len(result.evals) == 2
    assert json.loads((tmp_path / "o" / "config.json").read_text())["model_type"] == "bert"
