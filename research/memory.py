r"""What one device holds for a config's train step, by mesh and remat, without allocating it.

  python -m research.memory [--kinds=encoder,decoder] [--size=base] [--batch=N] [--seq_len=N]
                            [--meshes=8x1x1,1x8x1,1x1x8,2x2x2] [--remat=none,dots,full]
                            [--set=KEY=VALUE ...] [--devices=8] [--json]

`abstract_step(config, mesh)` builds the train step the trainer runs for a pretraining config
(the state of `state.create_sharded_state`, the step of `step.make_train_step`, jitted with the
trainer's in/out shardings and the donated state), but only abstractly: the state comes from
`jax.eval_shape`, the batch is a `jax.ShapeDtypeStruct` of the benchmark's synthetic batch, and
the step is lowered and compiled, never run. So nothing is allocated and `mesh` may hold any
devices, e.g. 8 simulated CPU devices, or a TPU slice's compile-only devices (`research.aot`).
`train_step_memory(config, mesh)` compiles it and returns per-device bytes:

  params, optimizer   the shard shapes of the abstract state's leaves (exact: what each device
                      stores; `optimizer` is the optax state: AdamW's two moments and its count);
                      state = both + the step counter; batch_shard = this device's batch rows
  activations         what the backward pass keeps from the forward, the figure `model.remat`
                      changes (see `saved_activation_bytes`)
  argument, output,   XLA's buffer assignment of the compiled step (`memory_analysis()`): its
  alias, temp,        inputs (state + batch shard), outputs, the outputs that reuse donated
  generated_code      inputs, temporaries (activations and workspace) and the compiled code
  total               argument + output - alias + temp: what the step needs at once on a device

`temp` and `total` are the compiling backend's: on CPU (the simulated devices) XLA keeps
float32 copies of bf16 tensors and merges remat's recomputation back into the forward pass, so
they are not an accelerator's figures and do not move with remat; `activations` does.

The config is the benchmark's (`research.bench.run_config`: configs/mlm.py for encoders,
configs/clm.py for decoders, at `--size`; heads and the MLM prediction count derived as a run
derives them), with the vocabulary rounded up to a multiple of 128 as `resolve` does with the
tokenizer's, so no corpus is read and no tokenizer trained. `--devices=N` (default 8) simulates N
CPU devices (it sets `XLA_FLAGS=--xla_force_host_platform_device_count=N` and JAX_PLATFORMS=cpu
before jax looks for devices); `--devices=0` uses this machine's own devices.
"""
import argparse
import dataclasses
import functools
import json
import math
import os
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec

from research import bench, compile_cache, compile_options, config_lib, features, models, perf
from research import sharding
from research import objectives as objectives_lib
from research.data import synthetic
from research.errors import UserError
from research.train import optim
from research.train import state as state_lib
from research.run_shape import padded_vocab_size
from research.train.resolve import check_batch
from research.train.step import (derive_dropout_key, make_eval_step, make_loss_fn,
                                 make_train_step)

FIELDS = ("params", "optimizer", "activations", "temp", "argument", "output", "alias", "total")


def shard_bytes(abstract_tree) -> int:
  """Bytes one device stores of a tree of sharded `jax.ShapeDtypeStruct`s (the largest shard)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(abstract_tree))


def abstract_state(model, tx, config, mesh, rules):
  """(abstract state, shardings) of `state.create_sharded_state`, the function the trainer
  calls, traced under `jax.eval_shape`: the same state and shardings, nothing allocated."""
  made = {}

  def create(rng):
    state, made["abstract"], made["shardings"] = state_lib.create_sharded_state(
        model, tx, config, mesh, rules, rng)
    return state

  jax.eval_shape(create, jax.random.key(config.train.seed))
  return made["abstract"], made["shardings"]


def abstract_batch(config, mesh, rows):
  """The benchmark's synthetic batch of `rows` rows at this config's shapes, as sharded shape
  structs."""
  batch_sharding = sharding.batch_sharding(mesh)
  batch = synthetic.batch(config.model.kind, rows, config.data.seq_len,
                          state_lib.max_predictions(config), config.model.vocab_size)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding),
                      batch), batch_sharding


def saved_activation_bytes(loss_fn, objectives, dropout_key, state, batch, bigger_batch,
                           shardings) -> int:
  """Per-device bytes the backward pass keeps from the forward (what `model.remat` trades for
  recomputation): the residuals of `jax.vjp` of the step's loss, other than the parameters
  themselves, measured as the outputs of a program that computes them from the step's sharded
  inputs. Each residual's batch dimension (the one that grows from `batch` to `bigger_batch`)
  is split over the batch axes, as the step's activations are (`act_batch`), and XLA places
  the rest. These are JAX's residuals, so they hold on any backend, where XLA:CPU's buffer
  assignment of the whole step (`temp`) does not show remat: XLA:CPU drops the barriers that
  keep a recomputation from being merged back into the forward pass."""
  def residuals(state, batch):  # the loss as `make_train_step` differentiates it
    rng = jax.random.fold_in(dropout_key, state.step)
    counts = objectives_lib.counts(objectives, batch)
    _, vjp_fn, _ = jax.vjp(lambda p: loss_fn(p, batch, rng, counts), state.params, has_aux=True)
    kept = {id(x): x for x in jax.tree.leaves(vjp_fn)}  # each residual once
    for x in jax.tree.leaves(state.params):
      kept.pop(id(x), None)
    return list(kept.values())

  small, big = jax.eval_shape(residuals, state, batch), jax.eval_shape(residuals, state,
                                                                        bigger_batch)
  batch_dims = [next((d for d, (a, b) in enumerate(zip(x.shape, y.shape)) if a != b), None)
                for x, y in zip(small, big)]
  mesh = shardings[1].mesh

  def split_batch(x, dim):
    if dim is None:  # of the parameters alone (e.g. a bf16 copy of a weight)
      return x
    spec = [PartitionSpec.UNCONSTRAINED] * x.ndim
    spec[dim] = sharding.BATCH_AXES
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))

  def split_residuals(state, batch):
    return [split_batch(x, d) for x, d in zip(residuals(state, batch), batch_dims)]

  compiled = jax.jit(split_residuals, in_shardings=shardings).lower(state, batch).compile()
  return compiled.memory_analysis().output_size_in_bytes


@dataclasses.dataclass
class AbstractStep:
  """The train step of a pretraining config on a mesh, and its sharded abstract arguments: what
  `research.memory` and `research.aot` compile (nothing allocated, any devices)."""
  config: Any
  mesh: Any
  model: Any
  objectives: tuple
  rules: tuple
  state: Any  # the abstract `TrainState`, each leaf with its sharding
  shardings: Any
  batch: dict  # the synthetic batch as sharded shape structs
  batch_sharding: Any
  dropout_key: Any
  train_step: Any  # `step.make_train_step`'s function, not yet jitted

  def jit_train(self):
    """The step jitted as `trainer.compile_steps` jits it: the state donated."""
    return jax.jit(self.train_step, in_shardings=(self.shardings, self.batch_sharding),
                   out_shardings=(self.shardings, None), donate_argnums=0,
                   compiler_options=compile_options.for_step(
                       compile_options.TRAIN, self.mesh.devices.flat[0].platform))

  def lower_train(self):
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self.jit_train().lower(self.state, self.batch)

  def lower_eval(self):
    """The pretraining task's eval step (`make_eval_step` over `objectives.eval_sums`) on the
    same batch shape, jitted as the trainer jits it, lowered."""
    eval_step = make_eval_step(self.model, functools.partial(objectives_lib.eval_sums,
                                                             self.objectives))
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return jax.jit(eval_step, in_shardings=(self.shardings.params, self.batch_sharding),
                     compiler_options=compile_options.for_step(
                         compile_options.FORWARD, self.mesh.devices.flat[0].platform)
                     ).lower(self.state.params, self.batch)

  def compile_train(self):
    with compile_cache.compiling_for(self.mesh.devices.flat):
      return self.lower_train().compile()

  def compile_eval(self):
    with compile_cache.compiling_for(self.mesh.devices.flat):
      return self.lower_eval().compile()


def abstract_step(config, mesh) -> AbstractStep:
  """The trainer's train step of a pretraining `config` on `mesh`, abstractly (module doc).

  `config` has its derived fields filled (model.vocab_size, model.heads,
  objective.max_predictions), as `research.bench.run_config` or `research.run_shape.shape_config`
  leave them.
  """
  check_batch(config, mesh)
  model = models.build(models.ModelConfig.of_run(config))
  run_features = features.of_config(config)  # PEFT freezes, AdaLoRA and pruning wrap the optimizer
  tx, lr_schedule = optim.build(config, run_features)
  rules = sharding.rules_of(config)
  state, shardings = abstract_state(model, tx, config, mesh, rules)
  batch, batch_sharding = abstract_batch(config, mesh, config.train.batch_size)
  _, dropout_key = jax.random.split(jax.random.key(config.train.seed))
  dropout_key = derive_dropout_key(dropout_key, config.train.dropout_prng)
  step_objectives = objectives_lib.pretraining(config.objective)[0]
  train_step = make_train_step(model, step_objectives, tx, lr_schedule, dropout_key,
                               config.train.grad_accum_steps,
                               trainable=optim.trainable_predicate(config, run_features))
  return AbstractStep(config, mesh, model, step_objectives, rules, state, shardings, batch,
                      batch_sharding, dropout_key, train_step)


def compiled_memory(step: AbstractStep, compiled) -> dict:
  """Per-device bytes of a compiled train step: the state's shards and XLA's buffer statistics
  (module doc), without `activations`."""
  out = {"params": shard_bytes(step.state.params),
         "optimizer": shard_bytes(step.state.opt_state), "state": shard_bytes(step.state),
         "batch_shard": shard_bytes(step.batch)}
  stats = compiled.memory_analysis()
  if stats is None:  # a backend without XLA's buffer statistics
    return out
  out.update(argument=stats.argument_size_in_bytes, output=stats.output_size_in_bytes,
             alias=stats.alias_size_in_bytes, temp=stats.temp_size_in_bytes,
             generated_code=stats.generated_code_size_in_bytes)
  out["total"] = perf.compiled_bytes(compiled)
  return out


def train_step_memory(config, mesh) -> dict:
  """Per-device bytes of the train step of a pretraining `config` on `mesh` (see the module doc),
  `activations` included (a second, smaller compile)."""
  step = abstract_step(config, mesh)
  compiled = step.compile_train()
  config = step.config
  rows = config.train.batch_size // config.train.grad_accum_steps  # one microbatch's backward
  with jax.set_mesh(mesh), nn.logical_axis_rules(step.rules):
    saved = saved_activation_bytes(
        make_loss_fn(step.model, step.objectives), step.objectives, step.dropout_key, step.state,
        abstract_batch(config, mesh, rows)[0], abstract_batch(config, mesh, 2 * rows)[0],
        (step.shardings, step.batch_sharding))
  out = compiled_memory(step, compiled)
  out["activations"] = saved
  return out



# ---------------------------------------------------------------------------------------------
# The command: one row per (kind, mesh, remat).
# ---------------------------------------------------------------------------------------------
def parse_mesh(text: str) -> dict:
  """'2x2x2' -> {'data': 2, 'fsdp': 2, 'tensor': 2}."""
  parts = text.split("x")
  if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
    raise SystemExit(f"error: --meshes wants DATAxFSDPxTENSOR sizes like 2x2x2, got {text!r}")
  return dict(zip(sharding.MESH_AXES, map(int, parts)))


def memory_config(kind: str, size: str, batch: int, seq_len: int, dtype: str, overrides: dict):
  """The benchmark's config for this shape (`bench.run_config`), with the vocabulary a run of
  that config would have: its tokenizer's size rounded up to a multiple of 128 (`resolve`)."""
  vocab = padded_vocab_size(bench.VOCAB[kind])
  w = bench.Workload("", kind, size, seq_len, batch)
  return bench.run_config(w, dtype, {"vocab_size": vocab, **overrides})


def default_shape(kind: str, size: str) -> tuple:
  """(batch, seq_len) of configs/mlm.py or clm.py at `size`."""
  config = config_lib.load_config_file("mlm" if kind == "encoder" else "clm", f"size={size}")
  return config.train.batch_size, config.data.seq_len


def gib(n: int) -> str:
  return f"{n / 2**30:.3f}"


def table_rows(rows: list) -> list:
  """Markdown table lines, GiB per device."""
  head = ["kind", "mesh (data,fsdp,tensor)", "remat", "batch x seq", *FIELDS]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for r in rows:
    m = r["mesh"]
    lines.append("| " + " | ".join([
        r["kind"], f"({m['data']},{m['fsdp']},{m['tensor']})", r["remat"],
        f"{r['batch']} x {r['seq_len']}",
        *([f"error: {r['error']}"] + [""] * (len(FIELDS) - 1) if "error" in r else
          [gib(r[k]) if k in r else "n/a" for k in FIELDS])]) + " |")
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Figures are GiB per device (2**30 bytes); --json prints bytes.")
  parser.add_argument("--kinds", default="encoder,decoder",
                      help="encoder (configs/mlm.py), decoder (configs/clm.py), or both")
  parser.add_argument("--size", default="base", help="the configs' size argument")
  parser.add_argument("--batch", type=int, default=0,
                      help="global batch (default: the config's train.batch_size)")
  parser.add_argument("--seq_len", type=int, default=0,
                      help="tokens per row (default: the config's data.seq_len)")
  parser.add_argument("--meshes", default="8x1x1,1x8x1,1x1x8,2x2x2",
                      help="comma-separated DATAxFSDPxTENSOR mesh sizes")
  parser.add_argument("--remat", default="none,dots,full",
                      help="comma-separated model.remat policies: none, dots, full")
  parser.add_argument("--dtype", default="bfloat16", help="compute dtype (the configs' default)")
  parser.add_argument("--set", action="append", dest="overrides", metavar="KEY=VALUE",
                      help="one of our ModelConfig fields, as in research.bench; repeatable")
  parser.add_argument("--devices", type=int, default=8,
                      help="simulate N CPU devices (0: this machine's devices)")
  parser.add_argument("--json", action="store_true", help="one JSON line per row, in bytes")
  parser.add_argument("--compile_cache_dir", default=compile_cache.default_dir(),
                      help="where compiled programs are kept and reused (empty: off)")
  args = parser.parse_args(argv)
  if args.devices and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
    os.environ["JAX_PLATFORMS"] = "cpu"
  if args.devices and jax.device_count() != args.devices:
    raise SystemExit(f"error: --devices={args.devices}, but jax started with "
                     f"{jax.device_count()} devices (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r})")
  compile_cache.use(args.compile_cache_dir)
  overrides = bench.parse_overrides(args.overrides)
  meshes = [parse_mesh(m) for m in args.meshes.split(",")]
  if not args.json:
    print(f"{jax.device_count()} {jax.devices()[0].platform} devices; GiB per device\n")
    print("\n".join(table_rows([])), flush=True)
  try:
    for kind in args.kinds.split(","):
      if kind not in bench.VOCAB:
        raise SystemExit(f"error: --kinds: unknown kind {kind!r}; known: {sorted(bench.VOCAB)}")
      batch, seq_len = default_shape(kind, args.size)
      batch, seq_len = args.batch or batch, args.seq_len or seq_len
      for mesh_sizes in meshes:
        mesh = sharding.make_mesh(mesh_sizes)
        for remat in args.remat.split(","):
          config = memory_config(kind, args.size, batch, seq_len, args.dtype,
                                 {**overrides, "remat": remat})
          row = {"kind": kind, "size": args.size, "mesh": mesh_sizes, "remat": remat,
                 "batch": batch, "seq_len": seq_len}
          try:
            row.update(train_step_memory(config, mesh))
          except UserError as e:  # this mesh cannot hold this model (e.g. heads over tensor)
            row["error"] = str(e)
          print(json.dumps(row) if args.json else table_rows([row])[-1], flush=True)
  except UserError as e:
    raise SystemExit(f"error: {e}") from None

if __name__ == "__main__":
  main()
