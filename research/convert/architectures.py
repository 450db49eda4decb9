"""The Hugging Face architectures we import and export: BERT, RoBERTa, GPT-2, Llama.

Each `Architecture` knows how an HF `config.json` maps to our `ModelConfig` fields (and back),
which of its tensors hold which of our parameters (`rules`), which heads a checkpoint carries
(from its tensor names), and which transformers class to name when exporting.
"""
from research.convert import rules as R
from research.errors import UserError

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def _activation(name):
  if name not in _ACTIVATIONS:
    raise UserError(f"unsupported activation {name!r}; supported: {sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


def check_head_dim(m, model_type: str):
  """transformers' BERT, RoBERTa and GPT-2 derive the head size as hidden_size / num_heads: a
  model whose heads were pruned (research/compress/structured.py) has no such config."""
  if m.num_heads * m.head_dim != m.hidden_size:
    raise UserError(f"transformers' {model_type} needs num_heads x head_dim = hidden_size; this "
                    f"model has {m.num_heads} x {m.head_dim} != {m.hidden_size} (attention heads "
                    "pruned): it runs with research.predict, not as a transformers model")


class Bert:
  """BERT and MiniLM-style small BERTs (`BertModel`, `BertFor{MaskedLM,PreTraining,...}`)."""
  model_type = "bert"
  prefix = "bert."
  ignored_suffixes = ()
  ignored = ("embeddings.position_ids", "cls.predictions.decoder.weight",
             "cls.predictions.decoder.bias")
  fan_in_fan_out = False  # projections are torch.nn.Linear: weight (out, in)

  def to_model_config(self, c: dict, keys: set, task_model: bool) -> dict:
    heads = [h for h, key in (("mlm", "cls.predictions.bias"),
                              ("sentence_pair", "cls.seq_relationship.weight"),
                              ("classification", "classifier.weight")) if key in keys]
    cfg = dict(
        kind="encoder", vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
        mlp_dim=c["intermediate_size"], max_len=c["max_position_embeddings"],
        type_vocab_size=c.get("type_vocab_size", 2), dropout_rate=c.get("hidden_dropout_prob", 0.1),
        layer_norm_eps=c.get("layer_norm_eps", 1e-12), activation=_activation(c.get("hidden_act", "gelu")),
        pooler="pooler.dense.weight" in keys, heads=tuple(heads), tie_embeddings=True,
        classifier=self.classifier)
    if "classification" in heads:
      cfg["num_labels"] = len(c.get("id2label") or {}) or c.get("num_labels", 2)
    return cfg

  classifier = "pooled"

  def to_hf_config(self, m) -> dict:
    check_head_dim(m, self.model_type)
    c = dict(
        model_type=self.model_type, vocab_size=m.vocab_size, hidden_size=m.hidden_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
        intermediate_size=m.mlp_dim, max_position_embeddings=m.max_len,
        type_vocab_size=m.type_vocab_size, hidden_dropout_prob=m.dropout_rate,
        attention_probs_dropout_prob=m.dropout_rate, layer_norm_eps=m.layer_norm_eps,
        hidden_act=_HF_ACTIVATIONS[m.activation], pad_token_id=0, tie_word_embeddings=True)
    if "classification" in m.heads:
      c["id2label"] = {str(i): f"LABEL_{i}" for i in range(m.num_labels)}
      c["label2id"] = {f"LABEL_{i}": i for i in range(m.num_labels)}
    return c

  def architecture(self, heads) -> str:
    heads = set(heads)
    if heads == {"mlm", "sentence_pair"}:
      return "BertForPreTraining"
    table = {frozenset(): "BertModel", frozenset({"mlm"}): "BertForMaskedLM",
             frozenset({"sentence_pair"}): "BertForNextSentencePrediction",
             frozenset({"classification"}): "BertForSequenceClassification"}
    if frozenset(heads) not in table:
      raise UserError(f"no BERT class holds the heads {sorted(heads)}")
    return table[frozenset(heads)]

  def rules(self, m) -> list:
    rules = [R.same("embeddings.word_embeddings.weight", "token_embed/embedding"),
             R.same("embeddings.position_embeddings.weight", "backbone/position_embed/embedding")]
    if m.type_vocab_size:
      rules.append(R.same("embeddings.token_type_embeddings.weight", "backbone/type_embed/embedding"))
    rules += R.norm("embeddings.LayerNorm", "backbone/ln_embed")
    h, hd = m.num_heads, m.head_dim
    for i in range(m.num_layers):
      hf, ours = f"encoder.layer.{i}", f"backbone/layer_{i}"
      for name in ("query", "key", "value"):
        rules += R.to_heads(f"{hf}.attention.self.{name}", f"{ours}/attention/{name}", h, hd)
      rules += R.from_heads(f"{hf}.attention.output.dense", f"{ours}/attention/out", h, hd)
      rules += R.norm(f"{hf}.attention.output.LayerNorm", f"{ours}/ln_attention")
      rules += R.linear(f"{hf}.intermediate.dense", f"{ours}/mlp/up")
      rules += R.linear(f"{hf}.output.dense", f"{ours}/mlp/down")
      rules += R.norm(f"{hf}.output.LayerNorm", f"{ours}/ln_mlp")
    if m.pooler:
      rules += R.linear("pooler.dense", "backbone/pooler")
    return rules + self.head_rules(m)

  def head_rules(self, m) -> list:
    rules = []
    if "mlm" in m.heads:
      rules += R.linear("cls.predictions.transform.dense", "heads_mlm/transform", prefixed=False)
      rules += R.norm("cls.predictions.transform.LayerNorm", "heads_mlm/ln", prefixed=False)
      rules.append(R.same("cls.predictions.bias", "heads_mlm/bias", prefixed=False))
    if "sentence_pair" in m.heads:
      rules += R.linear("cls.seq_relationship", "heads_sentence_pair/classifier", prefixed=False)
    if "classification" in m.heads:
      rules += R.linear("classifier", "heads_classification/out", prefixed=False)
    return rules


class Roberta(Bert):
  """RoBERTa: BERT's body; positions from padding_idx + 1; its own LM and classifier heads."""
  model_type = "roberta"
  prefix = "roberta."
  ignored = ("embeddings.position_ids", "lm_head.decoder.weight", "lm_head.decoder.bias")
  classifier = "first_token_mlp"

  def to_model_config(self, c: dict, keys: set, task_model: bool) -> dict:
    cfg = super().to_model_config(c, keys, task_model)
    heads = [h for h, key in (("mlm", "lm_head.bias"), ("classification", "classifier.out_proj.weight"))
             if key in keys]
    cfg.update(heads=tuple(heads), position_offset=c.get("pad_token_id", 1) + 1)
    if "classification" in heads:
      cfg["num_labels"] = len(c.get("id2label") or {}) or c.get("num_labels", 2)
    return cfg

  def to_hf_config(self, m) -> dict:
    c = super().to_hf_config(m)
    c.update(pad_token_id=m.position_offset - 1, bos_token_id=0, eos_token_id=2)
    return c

  def architecture(self, heads) -> str:
    table = {frozenset(): "RobertaModel", frozenset({"mlm"}): "RobertaForMaskedLM",
             frozenset({"classification"}): "RobertaForSequenceClassification"}
    if frozenset(heads) not in table:
      raise UserError(f"no RoBERTa class holds the heads {sorted(heads)}")
    return table[frozenset(heads)]

  def head_rules(self, m) -> list:
    rules = []
    if "mlm" in m.heads:
      rules += R.linear("lm_head.dense", "heads_mlm/transform", prefixed=False)
      rules += R.norm("lm_head.layer_norm", "heads_mlm/ln", prefixed=False)
      rules.append(R.same("lm_head.bias", "heads_mlm/bias", prefixed=False))
    if "classification" in m.heads:
      rules += R.linear("classifier.dense", "heads_classification/dense", prefixed=False)
      rules += R.linear("classifier.out_proj", "heads_classification/out", prefixed=False)
    return rules


class Gpt2:
  """GPT-2 (`GPT2Model`, `GPT2LMHeadModel`)."""
  model_type = "gpt2"
  prefix = "transformer."
  ignored_suffixes = (".attn.bias", ".attn.masked_bias")
  ignored = ("lm_head.weight",)  # read by a rule when untied; a tied copy (state_dict) otherwise
  fan_in_fan_out = True  # projections are transformers' Conv1D: weight (in, out)

  def to_model_config(self, c: dict, keys: set, task_model: bool) -> dict:
    tie = c.get("tie_word_embeddings", True)
    has_head = "lm_head.weight" in keys or (tie and task_model)
    return dict(
        kind="decoder", vocab_size=c["vocab_size"], hidden_size=c["n_embd"],
        num_layers=c["n_layer"], num_heads=c["n_head"], mlp_dim=c.get("n_inner") or 4 * c["n_embd"],
        max_len=c["n_positions"], type_vocab_size=0, dropout_rate=c.get("resid_pdrop", 0.1),
        layer_norm_eps=c.get("layer_norm_epsilon", 1e-5),
        activation=_activation(c.get("activation_function", "gelu_new")), pooler=False,
        heads=("lm",) if has_head else (), tie_embeddings=tie)

  def to_hf_config(self, m) -> dict:
    check_head_dim(m, "gpt2")
    return dict(model_type="gpt2", vocab_size=m.vocab_size, n_embd=m.hidden_size,
                n_layer=m.num_layers, n_head=m.num_heads, n_inner=m.mlp_dim, n_positions=m.max_len,
                resid_pdrop=m.dropout_rate, embd_pdrop=m.dropout_rate, attn_pdrop=m.dropout_rate,
                layer_norm_epsilon=m.layer_norm_eps, activation_function=_HF_ACTIVATIONS[m.activation],
                tie_word_embeddings=m.tie_embeddings, bos_token_id=m.vocab_size - 1,
                eos_token_id=m.vocab_size - 1)

  def architecture(self, heads) -> str:
    return "GPT2LMHeadModel" if "lm" in heads else "GPT2Model"

  def rules(self, m) -> list:
    rules = [R.same("wte.weight", "token_embed/embedding"),
             R.same("wpe.weight", "backbone/position_embed/embedding")]
    h, hd = m.num_heads, m.head_dim
    for i in range(m.num_layers):
      hf, ours = f"h.{i}", f"backbone/layer_{i}"
      rules += R.norm(f"{hf}.ln_1", f"{ours}/ln_attention")
      rules += R.fused_qkv(f"{hf}.attn.c_attn", f"{ours}/attention", h, hd)
      rules.append(R.Rule(f"{hf}.attn.c_proj.weight", (f"{ours}/attention/out/kernel",),
                          lambda w: (w.reshape(h, hd, w.shape[1]),),
                          lambda k: k.reshape(-1, k.shape[-1])))
      rules.append(R.same(f"{hf}.attn.c_proj.bias", f"{ours}/attention/out/bias"))
      rules += R.norm(f"{hf}.ln_2", f"{ours}/ln_mlp")
      rules += R.conv1d(f"{hf}.mlp.c_fc", f"{ours}/mlp/up")
      rules += R.conv1d(f"{hf}.mlp.c_proj", f"{ours}/mlp/down")
    rules += R.norm("ln_f", "backbone/ln_final")
    if "lm" in m.heads and not m.tie_embeddings:
      rules += R.linear("lm_head", "heads_lm/decoder", bias=False, prefixed=False)
    return rules


class Llama:
  """Llama-style decoders (`LlamaModel`, `LlamaForCausalLM`): RMSNorm, rotary, SwiGLU, GQA."""
  model_type = "llama"
  prefix = "model."
  ignored = ("lm_head.weight",)  # read by a rule when untied; a tied copy (state_dict) otherwise
  ignored_suffixes = (".rotary_emb.inv_freq",)
  fan_in_fan_out = False  # projections are torch.nn.Linear: weight (out, in)

  def to_model_config(self, c: dict, keys: set, task_model: bool) -> dict:
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
      raise UserError(f"unsupported rope scaling {rope_type!r}; supported: plain rotary ('default')")
    if c.get("attention_bias", False) != c.get("mlp_bias", False):
      raise UserError("attention_bias and mlp_bias differ; only checkpoints with both or neither "
                      "are supported")
    if c.get("pretraining_tp", 1) != 1:
      raise UserError("pretraining_tp != 1 is not supported")
    tie = c.get("tie_word_embeddings", False)
    has_head = "lm_head.weight" in keys or (tie and task_model)
    return dict(
        kind="decoder", vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
        num_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
        attention_head_dim=c.get("head_dim") or 0, mlp_dim=c["intermediate_size"],
        max_len=c.get("max_position_embeddings", 2048), type_vocab_size=0, dropout_rate=0.0,
        norm="rmsnorm", layer_norm_eps=c.get("rms_norm_eps", 1e-6),
        activation=_activation(c.get("hidden_act", "silu")), gated_mlp=True,
        use_bias=c.get("attention_bias", False), position_embedding="rotary",
        rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))), pooler=False,
        heads=("lm",) if has_head else (), tie_embeddings=tie)

  def to_hf_config(self, m) -> dict:
    return dict(
        model_type="llama", vocab_size=m.vocab_size, hidden_size=m.hidden_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
        num_key_value_heads=m.kv_heads, head_dim=m.head_dim, intermediate_size=m.mlp_dim,
        max_position_embeddings=m.max_len, rms_norm_eps=m.layer_norm_eps,
        hidden_act=_HF_ACTIVATIONS[m.activation], attention_bias=m.use_bias, mlp_bias=m.use_bias,
        rope_theta=m.rope_theta, rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta},
        tie_word_embeddings=m.tie_embeddings)

  def architecture(self, heads) -> str:
    return "LlamaForCausalLM" if "lm" in heads else "LlamaModel"

  def rules(self, m) -> list:
    rules = [R.same("embed_tokens.weight", "token_embed/embedding")]
    hd, b = m.head_dim, m.use_bias
    for i in range(m.num_layers):
      hf, ours = f"layers.{i}", f"backbone/layer_{i}"
      rules += R.to_heads(f"{hf}.self_attn.q_proj", f"{ours}/attention/query", m.num_heads, hd, b)
      rules += R.to_heads(f"{hf}.self_attn.k_proj", f"{ours}/attention/key", m.kv_heads, hd, b)
      rules += R.to_heads(f"{hf}.self_attn.v_proj", f"{ours}/attention/value", m.kv_heads, hd, b)
      rules += R.from_heads(f"{hf}.self_attn.o_proj", f"{ours}/attention/out", m.num_heads, hd, b)
      rules += R.norm(f"{hf}.input_layernorm", f"{ours}/ln_attention", bias=False)
      rules += R.norm(f"{hf}.post_attention_layernorm", f"{ours}/ln_mlp", bias=False)
      for name, to in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
        rules += R.linear(f"{hf}.mlp.{name}", f"{ours}/mlp/{to}", bias=b)
    rules += R.norm("norm", "backbone/ln_final", bias=False)
    if "lm" in m.heads and not m.tie_embeddings:
      rules += R.linear("lm_head", "heads_lm/decoder", bias=False, prefixed=False)
    return rules


ARCHITECTURES = {a.model_type: a for a in (Bert(), Roberta(), Gpt2(), Llama())}


def get(model_type: str):
  if model_type not in ARCHITECTURES:
    raise UserError(f"unsupported model_type {model_type!r}; supported: {sorted(ARCHITECTURES)}")
  return ARCHITECTURES[model_type]


def for_model(model_cfg) -> "Bert | Roberta | Gpt2 | Llama":
  """Which architecture our model exports as."""
  if model_cfg.kind == "encoder":
    return ARCHITECTURES["roberta" if model_cfg.position_offset else "bert"]
  if model_cfg.position_embedding == "rotary":
    return ARCHITECTURES["llama"]
  return ARCHITECTURES["gpt2"]
