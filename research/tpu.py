"""TPU slices described without a TPU, and a pretraining config's steps compiled for one.

`tpu_devices(parse_topology("v5e:2x4"))` gives a slice's devices for compiling only (libtpu's
`jax.experimental.topologies`); `estimate(config, topology, steps)` compiles the config's train
(and eval, and generation's decode) step for them with the config's mesh and reports per-device
memory against the chip's HBM, XLA's FLOPs and bytes, and a roofline step time: the figures
`python -m research.aot` prints (its module doc says what each means) and `python -m
research.cost --topology` uses. `abstract_decode_step` is generation's cached one-token step.

Compiled once per program and slice: JAX cannot load back an executable compiled for devices it
has no client for, so these compiles keep out of JAX's cache (`compile_cache.bypassed`) and the
figures read off a compile (`Analysis`: XLA's buffer statistics and cost analysis) are kept in
the compile cache's folder instead, under a key of the lowered program, the slice and the
compiler's version (`analyse`). A second `research.aot` of the same step and slice traces and
lowers it (seconds) and reads the figures, where XLA's TPU compiler takes minutes.
"""
import dataclasses
import math
import os

from research.errors import UserError

STEPS = ("train", "eval", "decode")


# ---------------------------------------------------------------------------------------------
# Topologies: a generation and its chips' grid.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Generation:
  dims: int  # the grid's dimensions: 2 (v5e, v6e: 2D torus) or 3
  chip_config: str  # libtpu's chip configuration: v4 and v5p chips run as one device (megacore)
  accelerator_type: str  # TPU_ACCELERATOR_TYPE of a slice of `chips` chips

  def accelerator(self, chips: int) -> str:
    return self.accelerator_type.format(chips=chips, cores=2 * chips)


GENERATIONS = {
    "v4": Generation(3, "megacore", "v4-{cores}"),
    "v5e": Generation(2, "default", "v5litepod-{chips}"),
    "v5p": Generation(3, "default", "v5p-{cores}"),
    "v6e": Generation(2, "default", "v6e-{chips}"),
}
KNOWN_FORMS = "v4:AxBxC, v5e:AxB, v5p:AxBxC, v6e:AxB (chips per side, e.g. v5e:2x4)"
HOST_BOUNDS = (2, 2, 1)  # chips per TPU VM host: a 2x2 block of every generation's pods


@dataclasses.dataclass(frozen=True)
class Topology:
  generation: str
  shape: tuple  # chips per side

  @property
  def name(self) -> str:
    return f"{self.generation}:{'x'.join(map(str, self.shape))}"

  @property
  def chips(self) -> int:
    return math.prod(self.shape)


def parse_topology(text: str) -> Topology:
  generation, _, grid = (text or "").partition(":")
  sides = grid.split("x")
  gen = GENERATIONS.get(generation)
  if gen is None or len(sides) != gen.dims or not all(s.isdigit() and int(s) > 0 for s in sides):
    raise UserError(f"--topology: unknown topology {text!r}; known forms: {KNOWN_FORMS}")
  return Topology(generation, tuple(map(int, sides)))


def tpu_devices(topology: Topology) -> list:
  """The slice's devices, for compiling only (`jax.experimental.topologies`), from libtpu.

  Sets what libtpu reads when it starts, where unset: the accelerator type and worker hostnames
  (else it prints warnings on stderr) and ALLOW_MULTIPLE_LIBTPU_LOAD (a compile-only use touches
  no TPU, so it need not take /tmp/libtpu_lockfile from another process that loaded libtpu).
  """
  try:
    import libtpu  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise UserError("--topology needs libtpu, XLA's TPU compiler (no TPU needed): "
                    "pip install -e '.[tpu-aot]' (or pip install libtpu==0.0.42.1)") from None
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  gen = GENERATIONS[topology.generation]
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", gen.accelerator(topology.chips))
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  bounds = tuple(min(b, s) for b, s in zip(HOST_BOUNDS, topology.shape + (1,)))
  try:
    return topologies.get_topology_desc(
        platform="tpu", topology_name=topology.name, chip_config_name=gen.chip_config,
        chips_per_host_bounds=bounds, num_slices=1).devices
  except jax.errors.JaxRuntimeError as e:  # e.g. a grid libtpu does not make
    raise UserError(f"--topology={topology.name}: libtpu: {str(e).splitlines()[0]}; known "
                    f"forms: {KNOWN_FORMS}") from None


def topology_mesh(config, topology: Topology, devices):
  """The config's mesh over the slice's devices; a mismatch is one line naming both."""
  from research import sharding  # pylint: disable=g-import-not-at-top
  sizes = {a: int(config.mesh[a]) for a in sharding.MESH_AXES}
  try:
    return sharding.make_mesh(config.mesh, devices)
  except UserError as e:
    raise UserError(f"--topology={topology.name} has {len(devices)} devices ({topology.chips} "
                    f"chips), but the config's mesh {sizes} does not match them: {e}; set "
                    "--config.mesh.data/fsdp/tensor (one may be -1)") from None


# ---------------------------------------------------------------------------------------------
# The figures of one compiled step.
# ---------------------------------------------------------------------------------------------
def cost_figures(compiled) -> dict:
  """XLA's per-device FLOPs and bytes accessed of a compiled step."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"xla_flops": float(cost.get("flops", 0.0)),
          "xla_bytes": float(cost.get("bytes accessed", 0.0))}


def roofline(figures: dict, chip, peak: float, tokens: int, model_flops: float,
             devices: int) -> dict:
  """The step time bound by compute or by HBM bandwidth, and tokens/s and MFU at it."""
  compute_s, memory_s = figures["xla_flops"] / peak, figures["xla_bytes"] / chip.hbm_bytes_per_s
  step_s = max(compute_s, memory_s)
  return {"compute_seconds": compute_s, "memory_seconds": memory_s, "step_seconds": step_s,
          "bound": "compute" if compute_s >= memory_s else "HBM bandwidth",
          "tokens_per_sec": tokens / step_s,
          "mfu": model_flops / (step_s * devices * peak)}


def levers(config, memory: dict, hbm: int, devices: int) -> list:
  """What would bring the step's memory down, the likeliest first."""
  out = []
  mesh = {a: int(config.mesh[a]) for a in ("data", "fsdp", "tensor")}
  state = memory["params"] + memory["optimizer"]
  if mesh["fsdp"] != -1 and mesh["fsdp"] < devices and state > hbm / 4:
    out.append(f"more fsdp (--config.mesh.fsdp=-1 --config.mesh.data=1: the parameters and "
               f"optimizer state, {state / 2**30:.2f} GiB per device now, split over the devices)")
  if config.model.remat == "none":
    out.append("--config.model.remat=full (or dots): keep fewer activations for the backward "
               "pass")
  out.append(f"a smaller batch per step (--config.train.batch_size, now "
             f"{config.train.batch_size}) or --config.train.grad_accum_steps=2 (now "
             f"{config.train.grad_accum_steps})")
  return out


@dataclasses.dataclass
class Analysis:
  """What is read off a compiled step: XLA's buffer statistics (`memory`: argument, output,
  alias, temp and generated_code sizes in bytes) and cost analysis (`cost`). It answers
  `memory_analysis()` and `cost_analysis()` as the compiled step does, so `perf.compiled_bytes`
  and `memory.compiled_memory` take either."""
  memory: dict
  cost: dict
  cached: bool = dataclasses.field(default=False, compare=False)  # read from the compile cache

  FIELDS = ("argument", "output", "alias", "temp", "generated_code")

  @classmethod
  def of(cls, compiled) -> "Analysis":
    stats = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cls({f: int(getattr(stats, f"{f}_size_in_bytes")) for f in cls.FIELDS},
               {k: float(v) for k, v in cost.items()})

  def memory_analysis(self):
    import types  # pylint: disable=g-import-not-at-top
    return types.SimpleNamespace(**{f"{f}_size_in_bytes": v for f, v in self.memory.items()})

  def cost_analysis(self) -> dict:
    return self.cost


def analyse(lowered, devices) -> Analysis:
  """`lowered` compiled for the slice of `devices` (XLA's TPU compiler, no TPU), as an
  `Analysis`: from the compile cache when this program was compiled for this slice before, else
  compiled (outside JAX's cache, which cannot load it back) and kept there."""
  import json  # pylint: disable=g-import-not-at-top
  from research import compile_cache  # pylint: disable=g-import-not-at-top
  path = compile_cache.figures_path(
      lowered.as_text(), devices[0].platform, devices[0].device_kind, len(devices),
      _coords(devices), _libtpu_version())
  if path and os.path.exists(path):
    try:
      with open(path) as f:
        return Analysis(**json.load(f), cached=True)
    except (OSError, ValueError, TypeError):
      os.remove(path)  # damaged: compiled again below
  with compile_cache.bypassed():
    analysis = Analysis.of(lowered.compile())
  if path:
    _write_json(path, {"memory": analysis.memory, "cost": analysis.cost})
  return analysis


def _coords(devices) -> str:
  return ";".join(str(d.coords) for d in devices)


def _libtpu_version() -> str:
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  try:
    return importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def _write_json(path: str, value):
  """Written whole or not at all (a temporary file, then a rename); a failure is not an error:
  the figures are computed again next time."""
  import json  # pylint: disable=g-import-not-at-top
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.{os.getpid()}.tmp", "w") as f:
      json.dump(value, f)
    os.replace(f"{path}.{os.getpid()}.tmp", path)
  except OSError:
    pass


def compile_step(step, kind: str, devices):
  """(Analysis, None) or (None, XLA's one-line out-of-memory message)."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    return analyse(step.lower_train() if kind == "train" else step.lower_eval(), devices), None
  except jax.errors.JaxRuntimeError as e:
    first = str(e).splitlines()[0]
    if "RESOURCE_EXHAUSTED" not in first:
      raise
    return None, first


@dataclasses.dataclass
class DecodeStep:
  """Generation's one-token step (`CachedModel.step`: every row feeds its last token, reads and
  writes the key/value cache) over a mesh, abstractly: params sharded as `research.generate`
  shards them (training's rules), the cache as `kv_cache.update` constrains it (batch split
  over the data-parallel axes), `rows` rows and a cache of `cache_length` slots."""
  mesh: object
  rules: tuple
  fn: object
  args: tuple  # params, cache, tokens, prompt mask, index: sharded shape structs
  in_shardings: tuple
  out_shardings: tuple

  def lower(self):
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return jax.jit(self.fn, in_shardings=self.in_shardings, out_shardings=self.out_shardings,
                     donate_argnums=1).lower(*self.args)


def abstract_decode_step(config, mesh) -> DecodeStep:
  """The decode step of a decoder `config` (derived fields filled) on `mesh`: `train.batch_size`
  rows, a cache of `data.seq_len` slots (a prompt of seq_len - 1 tokens and one new token)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from research import models, sharding  # pylint: disable=g-import-not-at-top
  from research.generate import check_model, param_shardings  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from research.generate.cached_model import CachedModel, decoding_config
  cfg = decoding_config(models.ModelConfig.of_run(config))
  try:
    check_model(cfg)
  except UserError as e:
    raise UserError(f"--step=decode: {e}") from None
  rows, length = config.train.batch_size, config.data.seq_len
  ways = sharding.data_parallel_size(mesh)
  if rows % ways:
    raise UserError(f"--step=decode: train.batch_size ({rows}, the rows decoded at once) must be "
                    f"divisible by the data-parallel size (mesh data x fsdp = {ways})")
  rules = sharding.rules_of(config)
  model = CachedModel(cfg, prompt_length=length - 1, max_new_tokens=1)
  shard = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  p_shardings = param_shardings(cfg, mesh, rules)  # outside the mesh: it makes a small array
  with nn.logical_axis_rules(rules):
    params = jax.eval_shape(lambda: nn.unbox(models.build(cfg).init(
        jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
  params = jax.tree.map(shard, params, p_shardings)
  batch = sharding.batch_sharding(mesh)
  ids = jax.ShapeDtypeStruct((rows, length - 1), jnp.int32, sharding=batch)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    cache = jax.eval_shape(model.prefill, params, ids, ids)[1]
  c_shardings = jax.tree.map(lambda x: NamedSharding(mesh, PartitionSpec(
      *([None] * (x.ndim - 4)), sharding.BATCH_AXES)), cache)  # (.., batch, slot, heads, dim)
  cache = jax.tree.map(shard, cache, c_shardings)
  replicated = NamedSharding(mesh, PartitionSpec())
  args = (params, cache, jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=batch), ids,
          jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated))
  return DecodeStep(mesh, rules, model.step, args,
                    (p_shardings, c_shardings, batch, batch, replicated), (None, c_shardings))


def decode_figures(config, mesh, model_cfg, chip, peak: float) -> dict:
  """The decode step's figures: its params and cache per device, XLA's memory and cost, and the
  roofline per generated token (`train.batch_size` tokens a step)."""
  from research import memory, perf  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  step = abstract_decode_step(config, mesh)
  devices, rows, length = mesh.devices.size, config.train.batch_size, config.data.seq_len
  # One token per row, attending to the whole cache: the sequence's forward FLOPs / its length.
  flops = rows * perf.forward_flops_per_sequence(model_cfg, length) / length
  figures = {"params": memory.shard_bytes(step.args[0]), "optimizer": 0,
             "cache": memory.shard_bytes(step.args[1]), "rows": rows, "cache_length": length,
             "model_flops": flops / devices}
  try:
    compiled = analyse(step.lower(), list(mesh.devices.flat))
  except jax.errors.JaxRuntimeError as e:
    first = str(e).splitlines()[0]
    if "RESOURCE_EXHAUSTED" not in first:
      raise
    return dict(figures, fits=False, xla_error=first, levers=[
        f"fewer rows decoded at once (--config.train.batch_size, now {rows}) or a shorter "
        f"cache (--config.data.seq_len, now {length})"])
  stats = compiled.memory_analysis()
  figures.update(argument=stats.argument_size_in_bytes, output=stats.output_size_in_bytes,
                 alias=stats.alias_size_in_bytes, temp=stats.temp_size_in_bytes,
                 total=perf.compiled_bytes(compiled), code=stats.generated_code_size_in_bytes,
                 from_cache=compiled.cached, **cost_figures(compiled))
  need = figures["total"] + figures["code"]
  figures.update(fits=need <= chip.hbm_bytes, headroom=chip.hbm_bytes - need,
                 **roofline(figures, chip, peak, rows, flops, devices))
  if not figures["fits"]:
    figures["levers"] = [f"fewer rows decoded at once (--config.train.batch_size, now {rows}) "
                         f"or a shorter cache (--config.data.seq_len, now {length})"]
  return figures


def estimate(config, topology: Topology, steps) -> dict:
  """Every figure of the module doc, as one dict (the --json object)."""
  # pylint: disable=g-import-not-at-top
  from research import chips, compile_cache, memory, models, perf
  from research.run_shape import shape_config
  from research.train import state as state_lib
  # pylint: enable=g-import-not-at-top
  compiles = compile_cache.Tally.start()
  bad = [s for s in steps if s not in STEPS]
  if bad or not steps:
    raise UserError(f"--step: unknown steps {bad}; known: {list(STEPS)}")
  if config.get("tasks"):
    raise UserError("research.aot compiles pretraining configs (configs/mlm.py, configs/clm.py): "
                    "a fine-tuning config's batches are built from its data")
  devices = tpu_devices(topology)
  config, notes = shape_config(config)
  mesh = topology_mesh(config, topology, devices)
  chip = chips.of_device_kind(devices[0].device_kind)
  peak = perf.peak_flops_of_kind(chip.device_kind)
  model_cfg = models.ModelConfig.of_run(config)
  batch, seq = config.train.batch_size, config.data.seq_len
  model_flops = perf.train_flops_per_step(model_cfg, seq, batch,
                                          state_lib.max_predictions(config))
  out = {"topology": topology.name, "devices": len(devices), "chip": chip.name,
         "device_kind": chip.device_kind, "hbm_bytes": chip.hbm_bytes,
         "hbm_bytes_per_s": chip.hbm_bytes_per_s, "peak_flops": peak,
         "mesh": dict(mesh.shape), "remat": config.model.remat, "batch": batch, "seq_len": seq,
         "grad_accum_steps": config.train.grad_accum_steps, "kind": model_cfg.kind,
         "layers": model_cfg.num_layers, "hidden": model_cfg.hidden_size, "notes": notes,
         "steps": {}}
  if config.train.grad_accum_steps > 1 or model_cfg.scan_layers:
    out["notes"].append("XLA's cost analysis counts a loop's body once (train.grad_accum_steps "
                        "> 1, model.scan_layers): its FLOPs and bytes, and so the roofline step "
                        "time, tokens/s and MFU, are too small by the loop's trip count; the "
                        "memory is right")
  if "decode" in steps:
    out["steps"]["decode"] = decode_figures(config, mesh, model_cfg, chip, peak)
  step = memory.abstract_step(config, mesh) if set(steps) - {"decode"} else None
  for kind in steps:
    if kind == "decode":
      continue
    compiled, oom = compile_step(step, kind, devices)
    # Forward only (a third of training's FLOPs) for the eval step.
    flops = model_flops if kind == "train" else model_flops / 3
    figures = {"params": memory.shard_bytes(step.state.params),
               "optimizer": memory.shard_bytes(step.state.opt_state) if kind == "train" else 0,
               "model_flops": flops / len(devices)}
    if oom:
      figures.update(fits=False, xla_error=oom,
                     levers=levers(config, figures, chip.hbm_bytes, len(devices)))
    else:
      stats = memory.compiled_memory(step, compiled)
      figures.update({k: stats[k] for k in ("argument", "output", "alias", "temp", "total")},
                     code=stats["generated_code"], from_cache=compiled.cached,
                     **cost_figures(compiled))
      need = figures["total"] + figures["code"]
      figures.update(fits=need <= chip.hbm_bytes, headroom=chip.hbm_bytes - need,
                     **roofline(figures, chip, peak, batch * seq, flops, len(devices)))
      if not figures["fits"]:
        figures["levers"] = levers(config, figures, chip.hbm_bytes, len(devices))
    out["steps"][kind] = figures
  out["compile"] = {k: v for k, v in compiles.counts().items() if k.endswith("_seconds")}
  return out


# ---------------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------------
def gib(n) -> str:
  """Bytes as GiB (2**30), or MiB below one GiB."""
  return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def report(out: dict) -> list:
  m = out["mesh"]
  lines = [f"{out['topology']}: {out['devices']} x {out['device_kind']} ({out['chip']}: "
           f"{gib(out['hbm_bytes'])} HBM, {out['hbm_bytes_per_s'] / 1e9:.0f} GB/s, "
           f"{out['peak_flops'] / 1e12:.0f} TFLOP/s bf16)",
           f"{out['kind']}, {out['layers']} layers x {out['hidden']}; batch {out['batch']} x "
           f"{out['seq_len']} tokens (grad_accum_steps {out['grad_accum_steps']}); mesh data "
           f"{m['data']}, fsdp {m['fsdp']}, tensor {m['tensor']}; remat {out['remat']}"]
  lines += [f"  ({note})" for note in out["notes"]]
  c = out["compile"]
  lines.append(f"start-up: tracing {c['trace_seconds']:.1f} s, lowering {c['lower_seconds']:.1f} "
               f"s, XLA {c['xla_seconds']:.1f} s")
  for kind, f in out["steps"].items():
    if kind == "decode":
      lines.append(f"decode step ({f['rows']} rows, one new token each, a cache of "
                   f"{f['cache_length']} slots), per device: params {gib(f['params'])}, cache "
                   f"{gib(f['cache'])}")
    else:
      lines.append(f"{kind} step, per device: params {gib(f['params'])}, optimizer "
                   f"{gib(f['optimizer'])}")
    if "xla_error" in f:
      lines.append(f"  does not fit: XLA: {f['xla_error']}")
      continue
    if f["from_cache"]:
      lines.append("  (XLA's figures read from the compile cache: this step was compiled for "
                   "this slice before)")
    lines += [f"  XLA: argument {gib(f['argument'])}, output {gib(f['output'])}, alias "
              f"{gib(f['alias'])}, temp {gib(f['temp'])}, total {gib(f['total'])} (+ code "
              f"{gib(f['code'])}) of {gib(out['hbm_bytes'])}: "
              f"{'fits' if f['fits'] else 'DOES NOT FIT'} ({gib(f['headroom'])} headroom)",
              f"  FLOPs {f['xla_flops']:.4g} (model: {f['model_flops']:.4g}, "
              f"{f['xla_flops'] / f['model_flops']:.3f}x), bytes {f['xla_bytes']:.4g}",
              f"  roofline step {f['step_seconds'] * 1e3:.1f} ms ({f['bound']} bound; compute "
              f"{f['compute_seconds'] * 1e3:.1f} ms, HBM {f['memory_seconds'] * 1e3:.1f} ms): "
              f"{f['tokens_per_sec']:,.0f} tokens/s, MFU {f['mfu']:.3f}"]
    if kind == "decode":
      lines[-1] += (f"; {f['step_seconds'] * 1e3:.2f} ms per generated token of a row "
                    "(the step)")
  return lines


def verdict(out: dict) -> str | None:
  """The one line that ends a command whose step does not fit, else None."""
  for kind, f in out["steps"].items():
    if f["fits"]:
      continue
    need = (f"XLA: {f['xla_error'].removeprefix('RESOURCE_EXHAUSTED: ').rstrip('.')}"
            if "xla_error" in f
            else f"needs {gib(f['total'] + f['code'])} of {gib(out['hbm_bytes'])}")
    return (f"does not fit: the {kind} step on {out['topology']} ({out['chip']}): {need}; params "
            f"+ optimizer {gib(f['params'] + f['optimizer'])} per device; try "
            + "; or ".join(f["levers"]))
  return None
