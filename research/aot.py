r"""Will it fit on a TPU? A config's train step compiled ahead of time for a TPU topology, here.

  python -m research.aot --config=configs/FILE.py[:ARGS] --topology=v5e:2x2
                         [--config.SECTION.KEY=VALUE ...] [--step=train,eval,decode] [--json]
                         [--verbose]

Flags:
  --config    a pretraining config and its overrides, exactly as for research.main (its mesh
              section, `model.remat`, `train.batch_size` are what the compile uses)
  --topology  the TPU slice: v4:AxBxC, v5e:AxB, v5p:AxBxC or v6e:AxB, in chips (v5e:2x4 is a
              v5e-8, v5e:16x16 a v5e-256, v5p:4x4x4 a v5p-128: v5p and v4 names count 2 cores per
              chip, each chip one jax device)
  --step      the steps compiled: train (default), eval (the pretraining eval step on the same
              batch), decode (a decoder's generation step: one new token for each of
              `train.batch_size` rows against a key/value cache of `data.seq_len` slots, params
              sharded as `research.generate` shards them), or several: --step=train,eval,decode
  --json      one JSON object on the last line (bytes, seconds, FLOPs)
  --verbose   show the traceback of a bad-input error instead of one line

Nothing runs on a TPU and none is needed: with libtpu installed (`pip install -e ".[tpu-aot]"`),
`jax.experimental.topologies` describes the slice's devices and XLA's TPU compiler compiles for
them on this CPU machine. The step is the one `research.main` runs, built abstractly by
`research.memory.abstract_step` (the sharded state of `state.create_sharded_state` under
`jax.eval_shape`, the benchmark's synthetic batch as shape structs, `make_train_step`, jitted with
the trainer's shardings and the donated state); the config's shapes are derived as
`research.run_shape.shape_config` derives them (no corpus read, no tokenizer trained). The mesh is the
config's mesh section over the slice's devices (one size may be -1: it takes the rest).

Printed per step, per device (GiB = 2**30 bytes):
  params, optimizer  the state's shards (exact: the shard shapes of the abstract state)
  argument, output,  XLA's buffer assignment of the compiled step (`memory_analysis()`); temp is
  alias, temp        what the step holds besides its inputs and outputs: the activations kept for
                     the backward pass (what `model.remat` changes) and the workspace
  total              argument + output - alias + temp, beside the chip's HBM (`research/chips.py`)
                     with the headroom left; the compiled code (`code`) also lives in HBM
  FLOPs, bytes       XLA's cost analysis of the compiled step, per device; the model's FLOPs by
                     `research.perf.train_flops_per_step` (what MFU counts) beside them
  step time          roofline: max(FLOPs / peak bf16 FLOP/s, bytes / HBM bandwidth): a lower
                     bound (no communication, perfect overlap); tokens/s and MFU at that time
For the decode step: params and the key/value cache per device instead of params and optimizer,
and the roofline step is the time of one generated token per row (tokens/s: rows / step); MFU
counts each new token's forward FLOPs against the whole cache (`research.perf`'s sequence FLOPs /
its length).
Printed once: `start-up`, the seconds spent tracing, lowering and in XLA's compiler (0 where the
figures were read from the compile cache; see below); --json: `compile`.
A step that does not fit ends the command with one line (exit code 1): XLA's numbers and the
lever that helps (more fsdp, `model.remat`, a smaller batch or `train.grad_accum_steps`). Bad input
(an unknown topology, a mesh that does not match the slice, libtpu missing) is one line `error:
...` and exit code 2.

XLA's TPU compiler is slow on a small CPU: BERT-base's step takes about 2 minutes on 2 cores.
A second run of the same step on the same slice reads the compile's figures from the compile
cache (`config.compile.cache_dir`, research/compile_cache.py; research/tpu.py `analyse`): it
traces and lowers the step (seconds) and does not compile it.
"""
import json
import sys

from absl import app, flags
from ml_collections import config_flags

from research import compile_cache, tpu
from research.command_line import parse_flags
from research.errors import exit_with, one_line_errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mlm.py:size=base, "
                                "and its --config.SECTION.KEY=VALUE overrides.", lock_config=True)
flags.DEFINE_string("topology", None, "TPU slice: v4:AxBxC, v5e:AxB, v5p:AxBxC or v6e:AxB.")
flags.DEFINE_list("step", ["train"], "Steps to compile: train, eval, decode.")
flags.DEFINE_bool("json", False, "One JSON object on the last line.")
flags.DEFINE_bool("verbose", False, "Show tracebacks for bad-input errors.")
flags.mark_flags_as_required(["config", "topology"])

EXIT_DOES_NOT_FIT = 1


def main(argv):
  if len(argv) > 1:
    exit_with(f"unexpected arguments {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top  (the config file imported it already)
  jax.config.update("jax_platforms", "cpu")  # the TPU devices are the topology's, compile-only
  compile_cache.use(compile_cache.of_config(FLAGS.config))  # where the figures are kept
  with one_line_errors(FLAGS.verbose):
    out = tpu.estimate(FLAGS.config, tpu.parse_topology(FLAGS.topology), FLAGS.step)
  print("\n".join(tpu.report(out)), flush=True)
  if FLAGS.json:
    print(json.dumps(out, sort_keys=True), flush=True)
  line = tpu.verdict(out)
  if line:
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.exit(EXIT_DOES_NOT_FIT)


def entry():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  sys.exit(entry())
