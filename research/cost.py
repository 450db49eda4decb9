r"""What a config's training run costs: parameters, FLOPs, memory, and time and money per chip.

  python -m research.cost --config=configs/mlm.py[:ARGS] [--config.SECTION.KEY=VALUE ...]
                          [--devices=N] [--mfu=F] [--nomemory] [--topology=v5e:2x4]
                          [--calibrate] [--json]

Flags:
  --config     a config file and its overrides, exactly as for research.main (the config is
               locked: a misspelt key is a one-line error, with a did-you-mean)
  --devices    chips the run is assumed to use, for every chip type (default: the product of
               the config's mesh sizes when none is -1, else 1); the mesh and the memory are
               those of that many simulated CPU devices (with --calibrate: this machine's)
  --mfu        model-FLOPs utilisation assumed on every chip, in (0, 1] (default: per chip, the
               MFU research.bench measured there, else a published one: research/chips.py)
  --memory     compile the train step abstractly for its per-device memory (default true;
               --nomemory skips the compile, a minute for BERT-base on a loaded CPU)
  --topology   a TPU slice (v4:AxBxC, v5e:AxB, v5p:AxBxC, v6e:AxB; research.aot): the train
               step is compiled for its chips instead (libtpu, no TPU needed): the memory is that
               chip's, fits or not, and its row adds the compiled step's roofline time, hours
               and USD; the devices are the slice's chips
  --calibrate  also time this config's train step on this machine (research.bench's timing: a
               synthetic batch, compiled, 2 warm-up then --calibrate_steps steps) and predict the
               run's step time here from the FLOP rate it achieves
  --calibrate_steps  timed steps of --calibrate (default 20)
  --json       one JSON object on the last line (figures unrounded, bytes, seconds)
  --verbose    show the traceback of a bad-input error instead of one line

Nothing is trained, no corpus is read and no tokenizer trained: the shapes come from the config
as a run would derive them (`shape_config`): an HF `init.weights` fixes the model's shape from
its config.json when the checkpoint is on this machine (a directory, a packaged checkpoint, the
HF cache; never downloaded; one that is not is said in one line and the config's model fields are
used); `model.vocab_size=-1` takes `data.tokenizer`'s size when one is given, else
`data.vocab_size` (what the tokenizer a run trains has at most), rounded up to a multiple of 128
as `resolve` does; the heads follow from the objective (pretraining) or from each task's kind
(fine-tuning, with `model.num_labels` outputs: the label count needs the data).

Printed:
  parameters       exact: `jax.eval_shape` of the model's initialisation (trainable: those
                   `optim.trainable` and PEFT leave trained)
  FLOPs per token  `research.perf.train_flops_per_step` / (batch x seq_len), the formula the
                   trainer's and the benchmark's MFU use (training = 3 x forward, matmuls only)
  total FLOPs      per step x train.steps: the training steps only. Evaluation, checkpoints,
                   tokenizer training and compilation are not counted (an eval pass over the
                   whole split, evals.batches=0, needs the data to size it)
  memory           per device, from the train step compiled abstractly on simulated CPU devices
                   (`research.memory.train_step_memory`: params, optimizer state, activations
                   kept for the backward pass, XLA:CPU's total) for pretraining configs; "not
                   available" for fine-tuning configs (their steps' batches are built from data)
  with --topology  the memory per device of the step compiled for the slice's chip (XLA's TPU
                   buffer assignment, fits or not in its HBM), and for that chip the hours and
                   USD of train.steps steps at the compiled step's roofline time (research.aot:
                   max(XLA FLOPs / peak, XLA bytes / HBM bandwidth), a lower bound on time)
  per chip         TPU v4, v5e, v5p, v6e, A100, H100: hours = total FLOPs / (devices x peak
                   bf16 FLOP/s (`perf.PEAK_FLOPS`) x MFU), USD = hours x devices x on-demand
                   price per chip-hour (`research/chips.py`, each price with its source and date)
  this machine     with --calibrate: the measured FLOP rate and the predicted seconds of the
                   training steps here (not the tokenizer, compilation or evaluation a run adds)
Bad input ends with one line `error: ...` on stderr and exit code 2.
"""
import json
import math
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from research import compile_cache
from research.command_line import parse_flags
from research.run_shape import shape_config
from research.errors import UserError, exit_with, one_line_errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mlm.py:runlocal, "
                                "and its --config.SECTION.KEY=VALUE overrides.", lock_config=True)
flags.DEFINE_integer("devices", 0, "Chips assumed (0: the config's mesh, else 1).", lower_bound=0)
flags.DEFINE_float("mfu", None, "MFU assumed on every chip, in (0, 1] (default: per chip).")
flags.DEFINE_bool("memory", True, "Compile the train step abstractly for per-device memory.")
flags.DEFINE_string("topology", None, "TPU slice to compile the train step for (research.aot), "
                    "e.g. v5e:2x4.")
flags.DEFINE_bool("calibrate", False, "Time the train step here and predict its step time.")
flags.DEFINE_integer("calibrate_steps", 20, "Timed steps of --calibrate.", lower_bound=1)
flags.DEFINE_bool("json", False, "One JSON object on the last line.")
flags.DEFINE_bool("verbose", False, "Show tracebacks for bad-input errors.")
flags.mark_flags_as_required(["config"])

CALIBRATE_WARMUP = 2


# ---------------------------------------------------------------------------------------------
# The figures.
# ---------------------------------------------------------------------------------------------
def assumed_devices(config, flag: int) -> int:
  """--devices, else the config's mesh when every size is given, else 1."""
  from research import sharding  # pylint: disable=g-import-not-at-top
  if flag:
    return flag
  sizes = [int(config.mesh[a]) for a in sharding.MESH_AXES]
  return math.prod(sizes) if min(sizes) > 0 else 1


def chip_estimates(total_flops: float, devices: int, mfu: float | None = None) -> dict:
  """{chip: devices, peak, mfu (and its source), hours, usd, price (and its source)}."""
  from research import chips, perf  # pylint: disable=g-import-not-at-top
  out = {}
  for chip in chips.CHIPS:
    peak = perf.peak_flops_of_kind(chip.device_kind)
    chip_mfu, source = (mfu, "--mfu") if mfu is not None else chip.default_mfu
    hours = total_flops / (devices * peak * chip_mfu) / 3600
    out[chip.name] = {"devices": devices, "peak_flops": peak, "mfu": chip_mfu,
                      "mfu_source": source, "hours": hours,
                      "usd": hours * devices * chip.usd_per_hour,
                      "usd_per_chip_hour": chip.usd_per_hour, "price_source": chip.price_source,
                      "price_as_of": chip.price_as_of}
  return out


def calibrate(config, steps: int, flops_per_step: float) -> dict:
  """This machine's achieved FLOP rate on this config's step, and the run's predicted step time."""
  from research import bench  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  timed = bench.time_train_step(config, steps, CALIBRATE_WARMUP)
  step_s = timed["step_ms"] / 1e3
  return {"device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
          "step_seconds": step_s, "flops_per_sec": flops_per_step / step_s,
          "compile_seconds": timed["compile_s"], "timed_steps": steps,
          "train_seconds": step_s * config.train.steps}


def estimate(config, devices: int, mfu: float, memory: bool, calibrate_steps: int,
             topology=None) -> dict:
  """Every figure of the module doc, as one dict (the --json object); `topology`
  (`research.tpu.Topology`) compiles the train step for that TPU slice."""
  from research import tpu  # pylint: disable=g-import-not-at-top
  from research import memory as memory_lib  # pylint: disable=g-import-not-at-top
  from research import models, perf, sharding  # pylint: disable=g-import-not-at-top
  from research import features  # pylint: disable=g-import-not-at-top
  from research.train import optim  # pylint: disable=g-import-not-at-top
  from research.train import state as state_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  given = config
  config, notes = shape_config(config)
  model_cfg = models.ModelConfig.of_run(config)
  if topology is not None:
    if config.get("tasks"):
      raise UserError("--topology compiles pretraining configs (research.aot): a fine-tuning "
                      "config's batches are built from its data")
    mesh = tpu.topology_mesh(config, topology, tpu.tpu_devices(topology))
  else:
    mesh = sharding.make_mesh(config.mesh)
  params = state_lib.abstract_params(models.build(model_cfg), config, mesh,
                                     sharding.rules_of(config))
  seq, batch, steps = config.data.seq_len, config.train.batch_size, config.train.steps
  flops_per_step = perf.train_flops_per_step(model_cfg, seq, batch,
                                             state_lib.max_predictions(config))
  out = {"kind": model_cfg.kind, "layers": model_cfg.num_layers, "hidden": model_cfg.hidden_size,
         "heads": model_cfg.num_heads, "mlp": model_cfg.mlp_dim, "vocab": model_cfg.vocab_size,
         "seq_len": seq, "batch": batch, "steps": steps,
         "params": state_lib.count_params(params),
         "params_trainable": state_lib.count_params(params, optim.trainable_predicate(
             config, features.of_config(config))),
         "flops_per_step": flops_per_step, "flops_per_token": flops_per_step / (batch * seq),
         "tokens": steps * batch * seq, "total_flops": flops_per_step * steps,
         "counted": "training steps only (not evaluation, tokenizer, compilation)",
         "notes": notes}
  if topology is not None:
    compiled = tpu.estimate(given, topology, ["train"])
    out["memory"] = {"devices": compiled["devices"], "platform": compiled["topology"],
                     "chip": compiled["chip"], "hbm_bytes": compiled["hbm_bytes"],
                     **compiled["steps"]["train"]}
  elif not memory:
    out["memory"] = "not computed (--nomemory)"
  elif config.get("tasks"):
    out["memory"] = ("not available for this config: the abstract train step is built for "
                     "pretraining objectives (research.memory)")
  else:
    out["memory"] = {"devices": jax.device_count(), "platform": jax.devices()[0].platform,
                     **memory_lib.train_step_memory(config, mesh)}
  out["estimates"] = chip_estimates(out["total_flops"], devices, mfu)
  if topology is not None and "step_seconds" in out["memory"]:
    e, step_s = out["estimates"][out["memory"]["chip"]], out["memory"]["step_seconds"]
    e.update(compiled_step_seconds=step_s, compiled_hours=step_s * steps / 3600,
             compiled_usd=step_s * steps / 3600 * devices * e["usd_per_chip_hour"])
  if calibrate_steps:
    if config.get("tasks"):
      raise UserError("--calibrate times the pretraining train step (research.bench): "
                      "not available for a fine-tuning config")
    out["this_machine"] = calibrate(config, calibrate_steps, flops_per_step)
  return out


# ---------------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------------
def report(out: dict) -> list:
  """The human-readable lines of `estimate`'s dict."""
  gib = lambda n: f"{n / 2**30:.2f} GiB"
  lines = [f"model: {out['kind']}, {out['layers']} layers x {out['hidden']}, {out['heads']} "
           f"heads, MLP {out['mlp']}, vocabulary {out['vocab']}"]
  lines += [f"  ({note})" for note in out["notes"]]
  lines += [f"parameters: {out['params']:,} (trainable {out['params_trainable']:,})",
            f"FLOPs per token: {out['flops_per_token']:.4g} (training: 3 x forward, matmuls; "
            "research/perf.py)",
            f"tokens: {out['steps']:,} steps x {out['batch']} rows x {out['seq_len']} = "
            f"{out['tokens']:.4g}",
            f"total FLOPs: {out['total_flops']:.4g}: {out['counted']}"]
  memory = out["memory"]
  if isinstance(memory, str):
    lines.append(f"memory per device: {memory}")
  elif "chip" in memory:  # compiled for a TPU slice
    need = (f"XLA: {memory['xla_error']}" if "xla_error" in memory else
            f"step total {gib(memory['total'])} + code {gib(memory['code'])} of "
            f"{gib(memory['hbm_bytes'])} HBM")
    lines.append(f"memory per device ({memory['devices']} {memory['chip']} chips, "
                 f"{memory['platform']}, the train step compiled for them, not run): params "
                 f"{gib(memory['params'])}, optimizer {gib(memory['optimizer'])}, {need}: "
                 f"{'fits' if memory['fits'] else 'DOES NOT FIT'}")
  else:
    lines.append(f"memory per device ({memory['devices']} {memory['platform']} device(s), "
                 f"the train step compiled, not run): params {gib(memory['params'])}, optimizer "
                 f"{gib(memory['optimizer'])}, activations kept {gib(memory['activations'])}, "
                 f"step total {gib(memory['total']) if 'total' in memory else 'n/a'} (XLA:CPU's)")
  lines += ["", "| chip | devices | peak TFLOP/s | MFU | hours | USD | USD/chip-hour |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for name, e in out["estimates"].items():
    lines.append(f"| {name} | {e['devices']} | {e['peak_flops'] / 1e12:.0f} | {e['mfu']:.3f} | "
                 f"{e['hours']:.4g} | {e['usd']:,.2f} | {e['usd_per_chip_hour']:.2f} |")
  lines.append("")
  for name, e in out["estimates"].items():
    lines.append(f"{name}: MFU {e['mfu_source']}; price {e['price_source']}, as of "
                 f"{e['price_as_of']}")
  for name, e in out["estimates"].items():
    if "compiled_hours" in e:
      lines += ["", f"{name}, from the train step compiled for {memory['platform']}: roofline "
                f"step {e['compiled_step_seconds'] * 1e3:.4g} ms ({memory['bound']} bound, MFU "
                f"{memory['mfu']:.3f}): {e['compiled_hours']:.4g} hours, "
                f"{e['compiled_usd']:,.2f} USD (a lower bound: no communication, perfect "
                "overlap)"]
  if "this_machine" in out:
    m = out["this_machine"]
    lines += ["", f"this machine ({m['device']}): {m['flops_per_sec'] / 1e9:.2f} GFLOP/s achieved "
              f"({m['step_seconds']:.4f} s per step over {m['timed_steps']} timed steps, after "
              f"{m['compile_seconds']:.1f} s compiling); predicted training steps: "
              f"{m['train_seconds']:.1f} s for {out['steps']} steps"]
  return lines


def main(argv):
  if len(argv) > 1:
    exit_with(f"unexpected arguments {argv[1:]}")
  if FLAGS.mfu is not None and not 0 < FLAGS.mfu <= 1:
    exit_with(f"--mfu must be in (0, 1] (a fraction of the chip's peak), got {FLAGS.mfu}")
  config = FLAGS.config
  topology = None
  if FLAGS.topology:
    from research import tpu  # pylint: disable=g-import-not-at-top
    with one_line_errors(FLAGS.verbose):
      topology = tpu.parse_topology(FLAGS.topology)
    if FLAGS.devices and FLAGS.devices != topology.chips:
      exit_with(f"--devices={FLAGS.devices} but --topology={topology.name} has "
                f"{topology.chips} chips: give one of them")
    if FLAGS.calibrate:
      exit_with("--calibrate times this machine's devices: not with --topology")
  devices = topology.chips if topology else assumed_devices(config, FLAGS.devices)
  if topology:  # the mesh is the slice's (compile-only TPU devices)
    import jax  # pylint: disable=g-import-not-at-top  (the config file imported it already)
    jax.config.update("jax_platforms", "cpu")
  elif devices > 1 and not FLAGS.calibrate:  # the mesh (and the step's memory) on `devices`
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={devices}")
    import jax  # pylint: disable=g-import-not-at-top  (the config file imported it already)
    jax.config.update("jax_platforms", "cpu")
  compile_cache.use(compile_cache.of_config(config))
  with one_line_errors(FLAGS.verbose):
    out = estimate(config, devices, FLAGS.mfu, FLAGS.memory,
                   FLAGS.calibrate_steps if FLAGS.calibrate else 0, topology)
  print("\n".join(report(out)), flush=True)
  if FLAGS.json:
    print(json.dumps(out, sort_keys=True))


def entry():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  sys.exit(entry())
