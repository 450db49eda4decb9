r"""The CPU side-by-side benchmark: our steps against transformers + torch, interleaved.

  python -m research.bench --device=cpu [--peer=hf] [--workloads=minilm-classify,...]
                           [--rows=train,eval,infer] [--repeats=7] [--table]

What a user of this codebase on a laptop, a Colab CPU runtime or CI sees. Each workload is a
config a user runs, built by the library (`research.run_shape.shape_config`: the model a run of that
config builds, heads and vocabulary derived as a run derives them; float32 on CPU), with random
weights (the time does not depend on them):
  runlocal-encoder   configs/mlm.py:runlocal (BERT 2 x 128, vocabulary 8192), MLM, 32 x 128
  runlocal-decoder   configs/clm.py:runlocal (GPT-2 2 x 128, vocabulary 8192), CLM, 32 x 128
  minilm-classify    experiments/minilm_bbc_offline/configs/minilm_bbc.py (all-MiniLM-L6-v2's
                     shape, BERT 6 x 384), 5-class classification, 32 x 128; infer at 64 rows
  bert-base-mlm-b8   configs/mlm.py (BERT-base 12 x 768), MLM, 8 x 128
Rows per workload:
  train   one train step: forward, backward, AdamW (ours: `step.make_train_step`, jitted as the
          trainer jits it; dropout on, as in training)
  eval    the forward-only eval step: loss and the objective's sums (`make_eval_step` over the
          objectives' `eval_sums`), no dropout
  infer   predict's path (classification only): the head's logits for `infer_batch` rows
          (research.predict jits the task's eval outputs, which are those logits)
The peer (`--peer=hf`) is the matching transformers model (BertForMaskedLM, GPT2LMHeadModel,
BertForSequenceClassification) loaded from our own initial weights, exported by
`research.convert.hf.save_pretrained`: the same function, which the row checks (`loss_match`: our
eval loss and the peer's on the same batch, dropout off, agree to 1e-4 relative). Torch runs eager
with SDPA attention, float32, torch.optim.AdamW (foreach), as many threads as XLA uses (every core),
on the same batch (token ids, MLM positions, labels). Our model applies no dropout to attention
probabilities (research/models/layers.py), so the peer's `attention_probs_dropout_prob` is 0 too:
the same computation (it also keeps torch on its fast SDPA path).

Timing: both sides are compiled or warmed up first (ours: compiled ahead of time, then
`--warmup` calls; theirs: `--warmup` calls), then `--repeats` rounds of (ours x `--calls`, peer x
`--calls`), each timed to completion (block_until_ready; torch is synchronous on CPU). A row
reports the median seconds per call of each side, `spread` (the interquartile range of the rounds
over the median, per side) and `ratio` = peer seconds / ours (> 1: ours faster), with tokens/s.
Interleaving puts both sides under the same machine state (thermal, other load), so the ratio is
steadier than either time alone.
"""
import contextlib
import dataclasses
import json
import os
import tempfile
import time

import numpy as np

from research import compile_cache
from research.data import synthetic


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  config: str  # a config file and its argument, as --config takes it
  batch: int
  seq: int
  infer_batch: int = 0  # predict's rows per batch; 0: no infer row (not a fine-tuning task)
  overrides: tuple = ()  # (section.key, value) set on the config

  @property
  def config_file(self) -> str:
    return self.config.partition(":")[0]

  @property
  def config_arg(self) -> str | None:
    return self.config.partition(":")[2] or None


WORKLOADS = {w.name: w for w in (
    Workload("runlocal-encoder", "configs/mlm.py:runlocal", 32, 128),
    Workload("runlocal-decoder", "configs/clm.py:runlocal", 32, 128),
    Workload("minilm-classify", "experiments/minilm_bbc_offline/configs/minilm_bbc.py:steps=150",
             32, 128, infer_batch=64, overrides=(("model.num_labels", 5),)),
    Workload("bert-base-mlm-b8", "configs/mlm.py:size=base", 8, 128),
)}
ROWS = ("train", "eval", "infer")


# ---------------------------------------------------------------------------------------------
# Our side, built by the library.
# ---------------------------------------------------------------------------------------------
def run_config(w: Workload):
  """The workload's config with its shapes derived as a run derives them, float32."""
  from research import config_lib, run_shape  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(w.config_file, w.config_arg)
  config.train.batch_size, config.data.seq_len = w.batch, w.seq
  config.model.dtype = "float32"
  for key, value in w.overrides:
    section, field = key.split(".")
    config[section][field] = value
  config, _ = run_shape.shape_config(config)
  return config


def task_objectives(config) -> tuple:
  """(objectives, head of the logits `infer` reads or None): the pretraining objective's, or the
  single classification task's (the only fine-tuning kind these workloads have)."""
  from research import objectives  # pylint: disable=g-import-not-at-top
  from research.tasks import classification  # pylint: disable=g-import-not-at-top
  if not config.get("tasks"):
    return objectives.pretraining(config.objective)[0], None
  (name,) = config.tasks.keys()
  head = config.model.heads[0].partition("=")[0]
  return (classification.OBJECTIVES[config.tasks[name].kind](name, head),), head


def batch_of(config, rows: int, seed: int = 0) -> dict:
  """Token ids (no padding) and the objective's targets: MLM positions, class labels, or none
  (next tokens come from the ids)."""
  from research.train import state as state_lib  # pylint: disable=g-import-not-at-top
  batch = synthetic.batch(config.model.kind, rows, config.data.seq_len,
                          state_lib.max_predictions(config), config.model.vocab_size, seed)
  if config.get("tasks"):
    batch = {k: batch[k] for k in ("input_ids",)}
    batch["token_type_ids"] = np.zeros_like(batch["input_ids"])
    batch["label"] = np.random.default_rng(seed).integers(
        0, config.model.num_labels, rows).astype(np.int32)
  return batch


@dataclasses.dataclass
class Ours:
  config: object
  model_cfg: object
  state: object
  train: object  # compiled (state, batch) -> (state, metrics)
  eval: object  # compiled (params, batch) -> sums
  infer: object  # compiled (params, batch) -> logits, or None
  batch: dict
  infer_batch: dict | None
  compile_s: float
  metrics: dict | None = None  # of the latest train call


def build_ours(w: Workload) -> Ours:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from research import compile_options, models, objectives as objectives_lib, sharding  # pylint: disable=g-import-not-at-top
  from research.train import optim, state as state_lib  # pylint: disable=g-import-not-at-top
  from research.train.step import (apply_model, derive_dropout_key, make_eval_step,  # pylint: disable=g-import-not-at-top
                                   make_train_step)
  config = run_config(w)
  model_cfg = models.ModelConfig.of_run(config)
  model = models.build(model_cfg)
  tx, lr = optim.build(config, ())  # the runlocal workloads: no training feature
  mesh, rules = sharding.make_mesh(config.mesh), sharding.rules_of(config)
  init_key, dropout_key = jax.random.split(jax.random.key(config.train.seed))
  state, _, shardings = state_lib.create_sharded_state(model, tx, config, mesh, rules, init_key)
  objectives, head = task_objectives(config)
  batch_sharding = sharding.batch_sharding(mesh)
  put = lambda b: jax.device_put(b, batch_sharding)
  batch = put(batch_of(config, w.batch))
  infer_batch = put(batch_of(config, w.infer_batch, seed=1)) if head and w.infer_batch else None
  train_step = make_train_step(model, objectives, tx, lr,
                               derive_dropout_key(dropout_key, config.train.dropout_prng),
                               config.train.grad_accum_steps)
  eval_step = make_eval_step(model, lambda outputs, batch: objectives_lib.eval_sums(
      objectives, outputs, batch))
  start = time.perf_counter()
  # compile_s is a cold compile: outside the compile cache (research/compile_cache.py).
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), compile_cache.bypassed():
    train = jax.jit(train_step, in_shardings=(shardings, batch_sharding),
                    out_shardings=(shardings, None), donate_argnums=0,
                    compiler_options=compile_options.for_step(compile_options.TRAIN)
                    ).lower(state, batch).compile()
    forward_options = compile_options.for_step(compile_options.FORWARD)
    evaluate = jax.jit(eval_step, compiler_options=forward_options
                       ).lower(state.params, batch).compile()
    infer = None
    if infer_batch is not None:
      infer = jax.jit(lambda p, b: apply_model(model, p, b)[f"{head}_logits"],
                      compiler_options=forward_options).lower(state.params, infer_batch).compile()
  return Ours(config, model_cfg, state, train, evaluate, infer, batch, infer_batch,
              time.perf_counter() - start)


def eval_loss(ours: Ours) -> float:
  """Our eval step's loss on the batch (the task's one objective)."""
  sums = ours.eval(ours.state.params, ours.batch)
  (total, count), = [v for k, v in sums.items() if k.rsplit("/", 1)[-1] == "loss"]
  return float(total / count)


# ---------------------------------------------------------------------------------------------
# The peer: the same model in transformers, from our weights.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Peer:
  model: object
  optimizer: object
  inputs: dict  # the train/eval batch as the HF model takes it (labels included)
  infer_inputs: dict | None


def torch_inputs(config, batch: dict) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  ids = torch.tensor(np.asarray(batch["input_ids"]), dtype=torch.long)
  out = {"input_ids": ids}
  if config.get("tasks"):
    out["token_type_ids"] = torch.zeros_like(ids)
    out["labels"] = torch.tensor(np.asarray(batch["label"]), dtype=torch.long)
  elif config.model.kind == "encoder":
    labels = torch.full_like(ids, -100)
    positions = torch.tensor(np.asarray(batch["masked_positions"]), dtype=torch.long)
    labels.scatter_(1, positions, ids.gather(1, positions))
    out.update(token_type_ids=torch.zeros_like(ids), labels=labels)
  else:
    out["labels"] = ids
  return out


def build_peer(ours: Ours, workdir: str) -> Peer:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  hf.save_pretrained(ours.model_cfg, jax_to_numpy(ours.state.params), workdir)
  transformers.logging.set_verbosity_error()  # the load report of our extra pooler
  transformers.utils.logging.disable_progress_bar()
  torch.manual_seed(0)
  with open(os.path.join(workdir, "config.json")) as f:
    architecture = json.load(f)["architectures"][0]
  no_attention_dropout = ({"attn_pdrop": 0.0} if architecture.startswith("GPT2") else
                          {"attention_probs_dropout_prob": 0.0})
  model = getattr(transformers, architecture).from_pretrained(
      workdir, attn_implementation="sdpa", **no_attention_dropout)
  optimizer = torch.optim.AdamW(model.parameters(), lr=ours.config.optim.learning_rate,
                                weight_decay=ours.config.optim.weight_decay)
  infer = None
  if ours.infer_batch is not None:
    infer = {k: v for k, v in torch_inputs(ours.config, ours.infer_batch).items() if k != "labels"}
  return Peer(model, optimizer, torch_inputs(ours.config, ours.batch), infer)


def jax_to_numpy(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.asarray, tree)


def peer_calls(peer: Peer) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  def train():
    peer.model.train()
    loss = peer.model(**peer.inputs).loss
    loss.backward()
    peer.optimizer.step()
    peer.optimizer.zero_grad(set_to_none=True)

  def evaluate():
    peer.model.eval()
    with torch.no_grad():
      return peer.model(**peer.inputs).loss

  def infer():
    peer.model.eval()
    with torch.inference_mode():
      return peer.model(**peer.infer_inputs).logits
  return {"train": train, "eval": evaluate, "infer": infer}


def our_calls(ours: Ours) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  def train():
    ours.state, ours.metrics = ours.train(ours.state, ours.batch)
    jax.block_until_ready(ours.metrics)
  return {"train": train,
          "eval": lambda: jax.block_until_ready(ours.eval(ours.state.params, ours.batch)),
          "infer": lambda: jax.block_until_ready(ours.infer(ours.state.params, ours.infer_batch))}


# ---------------------------------------------------------------------------------------------
# Levers: each of this codebase's CPU speed-ups can be swapped back for what it replaced, so its
# effect is measured on its own (`--levers`). Swapping acts when a step is traced and jitted
# (`xla_cpu_options` is read when the jit is made): every variant is built with its own set,
# then all are timed interleaved.
# ---------------------------------------------------------------------------------------------
def _jax_dropout_mask(key, keep_prob, shape):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.random.bernoulli(key, keep_prob, shape)


def _jax_attention(q, k, v, mask=None, is_causal=False):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                      implementation="xla")


def _jax_gelu(x):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.nn.gelu(x, approximate=False)


def _xla_default_options(kind, platform=None):  # pylint: disable=unused-argument
  return {}


# name: (module, attribute or ACTIVATIONS key, what it replaced)
LEVERS = {
    "fused_dropout_bits": ("research.models.dropout", "keep_mask", _jax_dropout_mask),
    "heads_major_attention": ("research.models.attention", "xla_attention", _jax_attention),
    "erf_gelu": ("research.models.layers", "ACTIVATIONS['gelu']", _jax_gelu),
    "xla_cpu_options": ("research.compile_options", "for_step", _xla_default_options),
}


@contextlib.contextmanager
def levers_off(names):
  """Inside: the levers `names` replaced by what they replaced (see LEVERS)."""
  import importlib  # pylint: disable=g-import-not-at-top
  saved = []
  for name in names:
    module_name, attribute, old = LEVERS[name]
    module = importlib.import_module(module_name)
    if attribute.startswith("ACTIVATIONS"):
      key = attribute.split("'")[1]
      saved.append((module.ACTIVATIONS, key, module.ACTIVATIONS[key]))
      module.ACTIVATIONS[key] = old
    else:
      saved.append((module.__dict__, attribute, getattr(module, attribute)))
      setattr(module, attribute, old)
  try:
    yield
  finally:
    for table, key, value in reversed(saved):
      table[key] = value


def measure_levers(w: Workload, rows, repeats: int, calls: int, warmup: int) -> list:
  """For each of `rows`: every lever off (the code before them), each lever alone, all on,
  timed interleaved. Train rows carry the loss after the same steps on the same batch, eval rows
  the eval loss, infer rows the largest logit difference from 'none': the levers leave each equal
  to round-off (dropout's bits are identical)."""
  names = list(LEVERS)
  variants = {"none": names, **{f"only {n}": [m for m in names if m != n] for n in names},
              "all": []}
  built = {}
  for variant, off in variants.items():
    with levers_off(off):
      built[variant] = build_ours(w)
  out = []
  for row in rows:
    if row == "infer" and built["none"].infer is None:
      continue
    calls_of = {v: our_calls(o)[row] for v, o in built.items()}
    for _ in range(warmup):
      for fn in calls_of.values():
        fn()
    samples = {v: [] for v in variants}
    for _ in range(repeats):
      for variant, fn in calls_of.items():
        start = time.perf_counter()
        for _ in range(calls):
          fn()
        samples[variant].append((time.perf_counter() - start) / calls)
    base = summary(samples["none"])[0]
    rows_per_call = w.infer_batch if row == "infer" else w.batch
    for variant in variants:
      seconds, spread = summary(samples[variant])
      out.append({"workload": w.name, "row": row, "levers": variant, "ms": 1e3 * seconds,
                  "spread": spread, "tokens_per_sec": rows_per_call * w.seq / seconds,
                  "speedup": base / seconds, "repeats": repeats,
                  **lever_result(row, built[variant], built["none"])})
  return out


def lever_result(row: str, ours: Ours, none: Ours) -> dict:
  """What a lever must leave unchanged beyond round-off, for one row of `measure_levers`."""
  if row == "train":  # every variant took the same steps on the same batch
    return {"loss": float(ours.metrics["train/loss"])}
  if row == "eval":
    return {"loss": eval_loss(ours)}
  logits = lambda o: np.asarray(o.infer(o.state.params, o.infer_batch))
  return {"max_logit_diff": float(np.abs(logits(ours) - logits(none)).max())}


# ---------------------------------------------------------------------------------------------
# Interleaved timing.
# ---------------------------------------------------------------------------------------------
def interleaved(ours, theirs, repeats: int, calls: int, warmup: int) -> tuple:
  """Seconds per call of each side, one sample per round, rounds alternating ours, theirs."""
  for _ in range(warmup):
    ours()
    if theirs:
      theirs()
  samples = ([], [])
  for _ in range(repeats):
    for side, fn in enumerate((ours, theirs)):
      if fn is None:
        continue
      start = time.perf_counter()
      for _ in range(calls):
        fn()
      samples[side].append((time.perf_counter() - start) / calls)
  return samples


def summary(samples: list) -> tuple:
  """(median, spread = interquartile range / median)."""
  if not samples:
    return None, None
  q1, median, q3 = np.percentile(samples, [25, 50, 75])
  return float(median), float((q3 - q1) / median)


def measure(w: Workload, rows, peer: str, repeats: int, calls: int, warmup: int) -> list:
  ours = build_ours(w)
  theirs, loss_check = None, {}
  with tempfile.TemporaryDirectory() as tmp:
    if peer == "hf":
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(os.cpu_count())
      theirs = peer_calls(build_peer(ours, tmp))
      ours_loss, peer_loss = eval_loss(ours), float(theirs["eval"]())
      loss_check = {"eval_loss": ours_loss, "hf_eval_loss": peer_loss,
                    "loss_match": abs(ours_loss - peer_loss) <= 1e-4 * abs(peer_loss)}
  mine = our_calls(ours)
  out = []
  for row in rows:
    if row == "infer" and ours.infer is None:
      continue
    rows_per_call = w.infer_batch if row == "infer" else w.batch
    a, b = interleaved(mine[row], theirs and theirs[row], repeats, calls, warmup)
    (ours_s, ours_spread), (peer_s, peer_spread) = summary(a), summary(b)
    record = {"workload": w.name, "row": row, "batch": rows_per_call, "seq": w.seq,
              "tokens_per_sec": rows_per_call * w.seq / ours_s, "ms": 1e3 * ours_s,
              "spread": ours_spread, "compile_s": ours.compile_s, "repeats": repeats,
              "calls": calls, **loss_check}
    if peer_s is not None:
      record.update(hf_tokens_per_sec=rows_per_call * w.seq / peer_s, hf_ms=1e3 * peer_s,
                    hf_spread=peer_spread, ratio=peer_s / ours_s)
    out.append(record)
  return out


def markdown(records: list) -> str:
  """The README table: one line per (workload, row)."""
  lines = ["| workload | row | batch x seq | ours tokens/s | torch tokens/s | ratio | spread "
           "(ours / torch) |", "|---|---|---|---|---|---|---|"]
  for r in records:
    peer = r.get("hf_tokens_per_sec")
    theirs = f"{peer:,.0f}" if peer else "-"
    ratio = f"{r['ratio']:.2f}" if peer else "-"
    spread = f"{100 * r['spread']:.1f}% / " + (f"{100 * r['hf_spread']:.1f}%" if peer else "-")
    lines.append(f"| {r['workload']} | {r['row']} | {r['batch']} x {r['seq']} | "
                 f"{r['tokens_per_sec']:,.0f} | {theirs} | {ratio} | {spread} |")
  return "\n".join(lines)


def main(args):
  """`python -m research.bench --device=cpu ...` (research/bench.py parses the flags)."""
  names = args.workloads.split(",") if args.workloads else list(WORKLOADS)
  unknown = [n for n in names if n not in WORKLOADS]
  rows = args.rows.split(",")
  if unknown or set(rows) - set(ROWS):
    raise SystemExit(f"error: --device=cpu knows workloads {sorted(WORKLOADS)} and rows "
                     f"{list(ROWS)}; got {names}, {rows}")
  records = []
  for name in names:
    if args.levers:
      for record in measure_levers(WORKLOADS[name], rows, args.repeats, args.calls,
                                   args.warmup):
        print(json.dumps(record), flush=True)
      continue
    for record in measure(WORKLOADS[name], rows, args.peer, args.repeats, args.calls,
                          args.warmup):
      print(json.dumps(record), flush=True)
      records.append(record)
  if args.table:
    print(markdown(records))
