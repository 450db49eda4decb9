r"""GPT-style causal-LM pretraining on packed documents (no attention across documents).

Quick start, 2 CPU cores, about 3 minutes, embedded BBC News corpus:
  python -m research.main --config=configs/clm.py:runlocal --workdir=/tmp/clm
  Expected (2-core CPU, measured: 180 s): train/loss falls from 9.03 at step 1 to ~6.0 at step
  250; eval/clm/accuracy ~0.12 against eval/clm/unigram_accuracy 0.037; ~7k tokens/s (the
  vocabulary projection runs at every position).

GPT-2 small (size=base, 124M) or medium (size=large, 355M) at 1024 tokens:
  python -m research.main --config=configs/clm.py:size=base --workdir=$HOME/runs/gpt2 \
      --config.data.source='/data/corpus/*.txt'

A corpus larger than memory: tokenize it once, then train on the rows (README, "Corpora larger
than memory"):
  python -m research.data.prepare --config=configs/clm.py:size=base --output=/data/gpt2_rows \
      --config.data.source='/data/corpus/*.txt'
  ... --config.data.source=prepared:/data/gpt2_rows

A Llama-style 1B decoder (Llama 3.2 1B's shape: 16 layers x 2048, 32 heads over 8 key/value
heads, SwiGLU MLP 8192, RMSNorm, rotary positions, no biases, a 128256-token vocabulary) at 2048
tokens; will it fit on a TPU (README, "Will it fit on a TPU?"):
  python -m research.aot --config=configs/clm.py:size=llama_1b --topology=v5p:4x4x4 \
      --config.mesh.data=1 --config.mesh.fsdp=-1 --config.model.remat=full
  Expected (compiled, not run; 2026-11-25): fits, 17.65 GiB of a v5p chip's 95 per device.

Arguments (after ':'): size=tiny|mini|small|base|large|llama_1b (default base), runlocal.
"""
import ml_collections

from research import config_lib

# Llama 3.2 1B's shape (its HF config.json), on top of the 'large' decoder section.
LLAMA_1B = dict(num_layers=16, hidden_size=2048, num_heads=32, num_kv_heads=8, mlp_dim=8192,
                norm="rmsnorm", layer_norm_eps=1e-5, activation="silu", gated_mlp=True,
                use_bias=False, position_embedding="rotary", rope_theta=500000.0,
                dropout_rate=0.0, max_len=2048)
LLAMA_VOCAB = 128256


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, size="base", runlocal=False, peft="none")
  config = config_lib.common(ml_collections.ConfigDict())
  llama = arg.size == "llama_1b" and not arg.runlocal
  config.model = config_lib.model("decoder", "tiny" if arg.runlocal else
                                  "large" if llama else arg.size,
                                  dtype="float32" if arg.runlocal else "bfloat16")
  if llama:
    config.model.update(LLAMA_1B)
  config.objective = dict(name="clm", max_predictions=0)
  config.data = dict(source="bbc_news", text_field="text", eval_fraction=0.05, seq_len=1024,
                     tokenizer="", vocab_size=50257)
  config.optim = config_lib.optim(learning_rate=6e-4, weight_decay=0.1)
  config.optim.update(b2=0.95, eps=1e-8)
  config.schedule = dict(warmup_steps=2000, decay="cosine", end_factor=0.1)
  config.train = config_lib.train(steps=100_000, batch_size=512)
  config.evals = dict(every_steps=5000, batches=0)
  if llama:
    config.data.update(seq_len=2048, vocab_size=LLAMA_VOCAB)

  if arg.runlocal:
    config.data.update(vocab_size=8192, seq_len=128)
    config.optim.learning_rate = 2e-3
    config.schedule.warmup_steps = 40
    config.train.update(steps=250, batch_size=32)
    config.evals.update(every_steps=100, batches=8)
    config.ckpt.every_steps = 100
    config.logging.every_steps = 20
  config_lib.use_peft(config, arg.peft)
  return config
