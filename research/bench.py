r"""Benchmark harness: our real train step against HF transformers (PyTorch) on the same shapes.

  python -m research.bench [--workloads=bert-base-mlm-s128,...] [--peer=hf] [--smoke] [--pipeline]
                          [--set=KEY=VALUE ...] [--batch=N] [--profile=DIR] [--depths=2,6,...]

Prints one JSON line per workload: workload, batch, seq, tokens_per_sec, step_ms, mfu,
peak_memory_gb, compile_s (ours), and with --peer=hf the same under 'hf_*' plus
ratio = ours / hf tokens per second. --smoke runs tiny shapes in seconds on a CPU (CI runs it);
the full workloads are meant for one GPU. --pipeline also times the real input pipeline
(embedded corpus, tokenizer, MLM masking) building batches of the workload's shape, and reports
pipeline_ratio = batches it builds per second / steps the model takes per second.

Timing: our step is compiled ahead of time (compile_s, and compile_cpu_s: the CPU seconds this
process spent on it, which a shared machine's load inflates less; the peer's first step, which
compiles); compile_s is a cold compile, outside the compile cache (research/compile_cache.py)
that the rest of the command uses (--compile_cache_dir; empty: off); then `--warmup` steps, then
`--steps` steps without a host sync between them, timed to `block_until_ready` (CUDA synchronize for the peer). peak_memory_gb is the device allocator's
peak so far in this process; step_memory_gb is what XLA's buffer assignment gives our step
(arguments + outputs + temporaries - donated), so it compares levers within one process.
FLOPs per step: `research.perf.train_flops_per_step` (formula in its docstring; the MLM head
counted on the masked positions for both sides, as that is the work the objective needs), so
MFU = FLOPs per step / step time / (peak per device x devices).
Ours: float32 parameters, bf16 compute (float32 on CPU), AdamW, the MLM head on masked positions
only, attention through jax.nn.dot_product_attention. The peer: BertForMaskedLM / GPT2LMHeadModel
with SDPA attention, bf16 autocast, torch.compile (on CUDA), fused AdamW, the same data.
Our side is built by the library from the config a user runs (configs/mlm.py or clm.py at the
workload's size; heads and the MLM prediction count derived as in a run): `optim.build`,
`state.create_sharded_state`, `objectives.pretraining`, `step.make_train_step`. It needs
ml_collections (pure Python: carry its wheel where an image lacks it), not datasets or grain,
except for --pipeline.

Levers: `--set KEY=VALUE` overrides our `ModelConfig` (e.g. attention_impl=xla to turn cuDNN
attention off, remat=full, dtype=float32), `--batch` every workload's batch (both sides), so each
lever's effect is one command. `matmul_tflops` is a measured ceiling: the FLOP/s of one large
matrix multiply in the compute dtype on this device (8192^3 bf16 on a GPU); `ceiling_fraction` =
the step's achieved model FLOP/s / that ceiling, i.e. how close the step is to pure matmul speed.
`--profile DIR` writes a `jax.profiler` trace of the timed steps (open with TensorBoard's or
Perfetto's trace viewer) to see where the step's time goes.

Depth: `--depths=2,6,12` replaces each workload's row by one row per depth and blocks layout
(`num_layers` = each depth, `scan_layers` false then true), so compile_s and step_ms show how
compile time grows with depth unrolled and scanned (`model.scan_layers`).
"""
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import sys
import time
import types

import numpy as np

from research import bench_cpu, compile_cache
from research.data import synthetic

WORKLOADS = {  # name: (kind, size, seq, batch)
    "bert-base-mlm-s128": ("encoder", "base", 128, 256),
    "bert-base-mlm-s512": ("encoder", "base", 512, 64),
    "gpt2-medium-clm-s1024": ("decoder", "large", 1024, 16),
    "bert-large-mlm-s512": ("encoder", "large", 512, 32),
}
SMOKE_SHAPE = ("tiny", 64, 8)  # size, seq, batch for --smoke
VOCAB = {"encoder": 30522, "decoder": 50257}


@dataclasses.dataclass
class Workload:
  name: str
  kind: str
  size: str
  seq: int
  batch: int


def workloads(names: str, smoke: bool, batch: int = 0) -> list:
  out = []
  for name in names.split(","):
    if name not in WORKLOADS:
      raise SystemExit(f"error: unknown workload {name!r}; known: {sorted(WORKLOADS)}")
    kind, size, seq, default_batch = WORKLOADS[name]
    if smoke:
      size, seq, default_batch = SMOKE_SHAPE
    out.append(Workload(name, kind, size, seq, batch or default_batch))
  return out


def parse_overrides(pairs) -> dict:
  """['remat=full', 'num_layers=6'] -> {'remat': 'full', 'num_layers': 6}, checked against
  `ModelConfig`'s fields (and `dropout_prng`, see config.train) and typed like their defaults."""
  from research.models.config import ModelConfig  # pylint: disable=g-import-not-at-top
  fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
  # Not a model field: the train step's dropout bits (config.train.dropout_prng).
  fields["dropout_prng"] = types.SimpleNamespace(default="threefry")
  out = {}
  for pair in pairs or ():
    key, sep, value = pair.partition("=")
    if not sep or key not in fields:
      raise SystemExit(f"error: --set wants KEY=VALUE with KEY a model field, got {pair!r}; "
                       f"fields: {sorted(fields)}")
    default = fields[key].default
    if isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes")
    elif isinstance(default, (int, float)):
      out[key] = type(default)(value)
    else:
      out[key] = None if value.lower() == "none" else value
  return out


def run_config(w: Workload, dtype: str, overrides: dict | None = None):
  """The config a user runs for this workload: configs/mlm.py (encoders) or clm.py (decoders) at
  its size, sequence length, batch, vocabulary and compute dtype, plus `--set` overrides; heads
  and the MLM prediction count derived as a run derives them."""
  from research import config_lib, objectives, run_shape  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file("mlm" if w.kind == "encoder" else "clm", f"size={w.size}")
  config.data.seq_len, config.train.batch_size = w.seq, w.batch
  config.model.update(vocab_size=VOCAB[w.kind], max_len=max(config.model.max_len, w.seq),
                      dtype=dtype)
  for key, value in (overrides or {}).items():
    if key == "dropout_prng":
      config.train.dropout_prng = value
    else:
      config.model[key] = value
  # synthetic ids: the vocabulary is the model's, whatever a tokenizer would have
  run_shape.derive(config, config.model.vocab_size, objectives.pretraining(config.objective)[1])
  return config


def model_config(w: Workload, dtype: str, overrides: dict | None = None):
  from research.models.config import ModelConfig  # pylint: disable=g-import-not-at-top
  return ModelConfig.from_dict(run_config(w, dtype, overrides).model)


def synthetic_batch(w: Workload, num_predictions: int, seed: int = 0, vocab_size: int = 0) -> dict:
  """`synthetic.batch` at the workload's shapes, ids below `vocab_size` (default: the workload
  kind's `VOCAB`); the peer gets the same batch."""
  return synthetic.batch(w.kind, w.batch, w.seq, num_predictions, vocab_size or VOCAB[w.kind],
                         seed)


def matmul_tflops(dtype: str, size: int, repeats: int = 10) -> float:
  """Measured FLOP/s (in TFLOP/s) of a (size x size) @ (size x size) matmul: the ceiling."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  f = jax.jit(lambda x: x @ a)
  jax.block_until_ready(f(a))
  start = time.perf_counter()
  x = a
  for _ in range(repeats):
    x = f(x)  # chained, so nothing is overlapped or elided
  jax.block_until_ready(x)
  return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


KERNEL_CLASSES = (  # kernel-name patterns, first match wins (XLA, cuBLAS, cuDNN names)
    ("attention", re.compile(r"sdpa|fmha|flash|attention|cudnn", re.I)),
    ("matmul", re.compile(r"gemm|matmul|xmma|cutlass|cublas|dot|convolution", re.I)),
)


def profile_summary(trace_dir: str, steps: int) -> dict:
  """Device time per step by kernel class, and the 5 costliest kernels, from a profiler trace.

  `busy_ms` is the summed kernel time: next to `step_ms` it shows how much of the step the device
  sits idle (launch gaps, host syncs). On a CPU the 'kernels' are XLA's thunks on the host.
  """
  (path,) = glob.glob(f"{trace_dir}/plugins/profile/*/*.trace.json.gz")[-1:]
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  names = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  busy = {e["pid"] for e in events if e.get("ph") == "X"}
  # Device processes with events: libtpu, when installed, adds an empty '/device:CUSTOM:...' one.
  devices = {pid for pid, name in names.items() if name.startswith("/device:") and pid in busy}
  by_kernel = collections.Counter()
  for e in events:
    if e.get("ph") != "X" or (devices and e["pid"] not in devices):
      continue
    if not devices and (e["name"].startswith("$") or "Execute" in e["name"]):
      continue  # host-side Python and executor spans, not work
    by_kernel[e["name"]] += e["dur"] / 1e3 / steps  # microseconds -> ms per step
  classes = collections.Counter()
  for name, ms in by_kernel.items():
    cls = next((c for c, pattern in KERNEL_CLASSES if pattern.search(name)), "other")
    classes[cls] += ms
  return {"busy_ms": sum(by_kernel.values()),
          **{f"{c}_ms": classes[c] for c in ("matmul", "attention", "other")},
          "top": [[name[:80], ms] for name, ms in by_kernel.most_common(5)]}


def run_ours(w: Workload, steps: int, warmup: int, overrides: dict | None = None,
             profile_dir: str = "") -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  on_cpu = jax.devices()[0].platform == "cpu"
  config = run_config(w, "float32" if on_cpu else "bfloat16", overrides)
  return time_train_step(config, steps, warmup, profile_dir, w.name)


def time_train_step(config, steps: int, warmup: int, profile_dir: str = "", name: str = "") -> dict:
  """Our train step for a pretraining `config` whose derived fields are filled (`run_config`),
  on this machine's devices and a synthetic batch of its shape: compiled, `warmup` steps, then
  `steps` timed steps (see the module doc). `research.cost --calibrate` times it too."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from research import compile_options, models, objectives, perf, sharding  # pylint: disable=g-import-not-at-top
  from research.models import layers  # pylint: disable=g-import-not-at-top
  from research.train import optim, state as state_lib  # pylint: disable=g-import-not-at-top
  from research.train.step import derive_dropout_key, make_train_step  # pylint: disable=g-import-not-at-top
  w = Workload(name, config.model.kind, "", config.data.seq_len, config.train.batch_size)
  cfg = models.ModelConfig.of_run(config)
  model = models.build(cfg)
  tx, lr = optim.build(config, ())  # pretraining: no training feature
  mesh, rules = sharding.make_mesh(config.mesh), sharding.rules_of(config)
  init_key, dropout_key = jax.random.split(jax.random.key(config.train.seed))
  state, _, state_shardings = state_lib.create_sharded_state(model, tx, config, mesh, rules,
                                                             init_key)
  batch_sharding = sharding.batch_sharding(mesh)
  num_predictions = state_lib.max_predictions(config)  # 0 for CLM: its config says so
  batch = jax.device_put(synthetic_batch(w, num_predictions, vocab_size=cfg.vocab_size),
                         batch_sharding)
  train_step = make_train_step(model, objectives.pretraining(config.objective)[0], tx, lr,
                               derive_dropout_key(dropout_key, config.train.dropout_prng),
                               config.train.grad_accum_steps)
  start, start_cpu = time.perf_counter(), time.process_time()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), compile_cache.bypassed():  # a cold compile
    step = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, None), donate_argnums=0,
                   compiler_options=compile_options.for_step(compile_options.TRAIN)
                   ).lower(state, batch).compile()
  compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
  memory = step.memory_analysis()  # this program's own buffers, unlike the process-wide peak
  step_memory = memory and (memory.argument_size_in_bytes + memory.output_size_in_bytes +
                            memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  for _ in range(warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  if profile_dir:
    jax.profiler.start_trace(f"{profile_dir}/{w.name}")
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / steps
  profile = {}
  if profile_dir:
    jax.profiler.stop_trace()
    profile = {"profile": profile_summary(f"{profile_dir}/{w.name}", steps)}
  flops = perf.train_flops_per_step(cfg, w.seq, w.batch, num_predictions)
  peak = perf.peak_flops_per_device()
  stats = jax.devices()[0].memory_stats() or {}
  return {"tokens_per_sec": w.batch * w.seq / step_s, "step_ms": 1e3 * step_s,
          "mfu": flops / step_s / (peak * jax.device_count()) if peak else None,
          "peak_memory_gb": stats.get("peak_bytes_in_use", 0) / 2**30 or None,
          "step_memory_gb": step_memory / 2**30 if step_memory else None,
          "compile_s": compile_s, "compile_cpu_s": compile_cpu_s,
          "loss": float(metrics["train/loss"]), "_flops": flops,
          **profile, "_dtype": cfg.dtype, "_devices": jax.device_count(),
          "attention_impl": layers.attention_impl(cfg), "remat": cfg.remat,
          "scan_layers": cfg.scan_layers,
          "dropout_prng": config.train.dropout_prng, "_predictions": num_predictions}


def run_hf(w: Workload, steps: int, warmup: int, flops: float, num_predictions: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from research import perf  # pylint: disable=g-import-not-at-top
  from research.models.config import SIZES  # pylint: disable=g-import-not-at-top
  cuda = torch.cuda.is_available()
  device = "cuda" if cuda else "cpu"
  layers, hidden, heads = SIZES[w.size]
  if w.kind == "encoder":
    config = transformers.BertConfig(vocab_size=VOCAB["encoder"], hidden_size=hidden,
                                     num_hidden_layers=layers, num_attention_heads=heads,
                                     intermediate_size=4 * hidden, max_position_embeddings=512)
    config._attn_implementation = "sdpa"
    model = transformers.BertForMaskedLM(config)
  else:
    config = transformers.GPT2Config(vocab_size=VOCAB["decoder"], n_embd=hidden, n_layer=layers,
                                     n_head=heads, n_positions=max(1024, w.seq))
    config._attn_implementation = "sdpa"
    model = transformers.GPT2LMHeadModel(config)
  model.to(device).train()
  data = synthetic_batch(w, num_predictions)
  ids = torch.tensor(data["input_ids"], device=device, dtype=torch.long)
  if w.kind == "encoder":
    labels = torch.full_like(ids, -100)
    positions = torch.tensor(data["masked_positions"], device=device, dtype=torch.long)
    labels.scatter_(1, positions, ids.gather(1, positions))
  else:
    labels = ids
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
  forward = torch.compile(model) if cuda else model
  dtype = torch.bfloat16 if cuda else torch.float32

  def step():
    with torch.autocast(device, dtype=dtype, enabled=cuda):
      loss = forward(input_ids=ids, labels=labels).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  sync = torch.cuda.synchronize if cuda else (lambda: None)
  start = time.perf_counter()
  step()
  sync()
  compile_s = time.perf_counter() - start
  for _ in range(warmup - 1):
    step()
  sync()
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  start = time.perf_counter()
  for _ in range(steps):
    loss = step()
  sync()
  step_s = (time.perf_counter() - start) / steps
  peak = perf.peak_flops_per_device() if cuda else None
  return {"hf_tokens_per_sec": w.batch * w.seq / step_s, "hf_step_ms": 1e3 * step_s,
          "hf_mfu": flops / step_s / peak if peak else None,
          "hf_peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
          "hf_compile_s": compile_s, "hf_loss": loss.item()}


def run_pipeline(w: Workload, seconds: float = 5.0) -> float:
  """Batches per second the real MLM/CLM input pipeline builds at this workload's shape."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from research import data  # pylint: disable=g-import-not-at-top
  config = run_config(w, "float32")
  config.data.vocab_size = 8192  # the tokenizer trained on the embedded corpus
  with tempfile.TemporaryDirectory() as tmp:
    batches = data.build(config, tmp).train
    batches.host_batch(0)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
      batches.host_batch(n + 1)
      n += 1
    return n / (time.perf_counter() - start)


def depth_overrides(depths: str, overrides: dict) -> list:
  """'2,6' -> `overrides` with num_layers 2 unrolled, 2 scanned, 6 unrolled, 6 scanned."""
  try:
    sizes = [int(d) for d in depths.split(",")]
  except ValueError:
    sizes = []
  if not sizes or min(sizes) < 1:
    raise SystemExit(f"error: --depths wants positive layer counts like 2,6,12, got {depths!r}")
  return [{**overrides, "num_layers": n, "scan_layers": scan}
          for n in sizes for scan in (False, True)]


SWEEP = ("attention_impl=xla", "remat=dots", "remat=full", "dropout_prng=rbg", "dtype=float32")


def is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def measure(w: Workload, args, steps: int, overrides: dict, ceilings: dict) -> dict:
  """One JSON row: ours, the measured ceiling, and (per the flags) the peer and the pipeline."""
  row = {"workload": w.name + ("-smoke" if args.smoke else ""), "batch": w.batch, "seq": w.seq}
  if overrides:
    row["overrides"] = overrides
  ours = run_ours(w, steps, args.warmup, overrides, args.profile)
  flops, dtype, num_predictions = ours.pop("_flops"), ours.pop("_dtype"), ours.pop("_predictions")
  row.update(ours)
  if dtype not in ceilings:
    ceilings[dtype] = matmul_tflops(dtype, 1024 if args.smoke else 8192)
  row["matmul_tflops"] = ceilings[dtype]
  row["ceiling_fraction"] = flops / (row["step_ms"] / 1e3) / (
      ceilings[dtype] * 1e12 * row.pop("_devices"))
  if args.peer == "hf":
    row.update(run_hf(w, steps, args.warmup, flops, num_predictions))
    row["ratio"] = row["tokens_per_sec"] / row["hf_tokens_per_sec"]
  if args.pipeline:
    rate = run_pipeline(w)
    row.update(pipeline_batches_per_sec=rate, pipeline_ratio=rate * row["step_ms"] / 1e3)
  return row


def largest_batch(w: Workload, steps: int, warmup: int, overrides: dict) -> dict:
  """Doubles the batch from the workload's until our step runs out of device memory."""
  best, batch = None, w.batch
  while True:
    try:
      ours = run_ours(dataclasses.replace(w, batch=batch), steps, warmup, overrides)
    except Exception as e:  # pylint: disable=broad-except
      if not is_out_of_memory(e):
        raise
      break
    best = {"max_batch": batch, "max_batch_tokens_per_sec": ours["tokens_per_sec"],
            "max_batch_peak_memory_gb": ours["peak_memory_gb"]}
    batch *= 2
  return best or {"max_batch": None}


def main(argv=None):
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workloads", default=",".join(WORKLOADS))
  parser.add_argument("--peer", choices=["", "hf"], default="")
  parser.add_argument("--smoke", action="store_true", help="tiny shapes, seconds on a CPU")
  parser.add_argument("--pipeline", action="store_true", help="also time the input pipeline")
  parser.add_argument("--set", action="append", dest="overrides", metavar="KEY=VALUE",
                      help="a lever: one of our ModelConfig fields, or dropout_prng; repeatable")
  parser.add_argument("--sweep", action="store_true",
                      help=f"after each workload's row, one row per lever of {SWEEP}")
  parser.add_argument("--max-batch", action="store_true",
                      help="also find the largest batch (doubling) our step fits in memory")
  parser.add_argument("--batch", type=int, default=0, help="every workload's batch (both sides)")
  parser.add_argument("--profile", default="", metavar="DIR",
                      help="write a jax.profiler trace of our timed steps under DIR")
  parser.add_argument("--depths", default="", metavar="N,N,...",
                      help="one row per depth, blocks unrolled then scanned (model.scan_layers)")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--warmup", type=int, default=3)
  cpu = parser.add_argument_group("--device=cpu: the CPU side-by-side (research/bench_cpu.py)")
  cpu.add_argument("--device", choices=["", "cpu"], default="",
                   help="cpu: our steps against transformers + torch on this CPU, interleaved")
  cpu.add_argument("--rows", default=",".join(bench_cpu.ROWS),
                   help="with --device=cpu: which steps (train, eval, infer)")
  cpu.add_argument("--repeats", type=int, default=7,
                   help="with --device=cpu: interleaved rounds per row (median and spread)")
  cpu.add_argument("--calls", type=int, default=1,
                   help="with --device=cpu: calls per side per round")
  cpu.add_argument("--levers", action="store_true",
                   help="with --device=cpu: each --rows row with our CPU levers off, each "
                        "alone, all on (no peer)")
  cpu.add_argument("--table", action="store_true",
                   help="with --device=cpu: also print the README's markdown table")
  parser.add_argument("--compile_cache_dir", default=compile_cache.default_dir(),
                      help="where compiled programs are kept and reused (empty: off); "
                           "compile_s is timed without it")
  args = parser.parse_args(argv)
  compile_cache.use(args.compile_cache_dir)
  if args.device == "cpu":
    os.environ["JAX_PLATFORMS"] = "cpu"  # before jax picks a backend
    args.workloads = "" if args.workloads == ",".join(WORKLOADS) else args.workloads
    return bench_cpu.main(args)
  steps = args.steps or (3 if args.smoke else 20)
  overrides = parse_overrides(args.overrides)
  ceilings = {}
  for w in workloads(args.workloads, args.smoke, args.batch):
    if args.depths:
      for overrides_at_depth in depth_overrides(args.depths, overrides):
        print(json.dumps(measure(w, args, steps, overrides_at_depth, ceilings)), flush=True)
      continue
    row = measure(w, args, steps, overrides, ceilings)
    if args.max_batch:
      row.update(largest_batch(w, max(2, steps // 4), 1, overrides))
    print(json.dumps(row), flush=True)
    if args.sweep:
      lever_args = argparse.Namespace(**{**vars(args), "peer": "", "pipeline": False})
      for lever in SWEEP:
        lever_row = measure(w, lever_args, steps, {**overrides, **parse_overrides([lever])},
                            ceilings)
        lever_row.update(lever=lever,
                         vs_baseline=lever_row["tokens_per_sec"] / row["tokens_per_sec"])
        print(json.dumps(lever_row), flush=True)


if __name__ == "__main__":
  sys.exit(main())
