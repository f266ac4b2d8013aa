"""Tiny random-weight configs of the six backbones the core must support (no downloads)."""

from transformers import BertConfig, DistilBertConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, RobertaConfig

VOCAB = 99


def tiny_config(name: str):
    common = {"vocab_size": VOCAB, "pad_token_id": 0}
    if name == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, **common)
    if name == "roberta":
        return RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                             max_position_embeddings=40, bos_token_id=1, eos_token_id=2, **common)
    if name == "distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=37, **common)
    if name == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=40, bos_token_id=1, eos_token_id=2, **common)
    if name == "gpt_neox":
        return GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                             max_position_embeddings=40, bos_token_id=1, eos_token_id=2, **common)
    if name == "llama":
        return LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=37, max_position_embeddings=40, bos_token_id=1, eos_token_id=2, **common)
    raise KeyError(name)


BACKBONES = ("bert", "roberta", "distilbert", "gpt2", "gpt_neox", "llama")
DECODERS = ("gpt2", "gpt_neox", "llama")
# What target_modules="auto" must pick in each layer: every attention projection.
AUTO_TARGETS = {
    "bert": ["attention.output.dense", "attention.self.key", "attention.self.query", "attention.self.value"],
    "roberta": ["attention.output.dense", "attention.self.key", "attention.self.query", "attention.self.value"],
    "distilbert": ["attention.k_lin", "attention.out_lin", "attention.q_lin", "attention.v_lin"],
    "gpt2": ["attn.c_attn", "attn.c_proj"],
    "gpt_neox": ["attention.dense", "attention.query_key_value"],
    "llama": ["self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"],
}
