r"""Post-training int8 quantization of a workdir: a new workdir whose projections are int8.

  python -m research.compress --workdir=DIR --method=quantize [--quantize_activations] \
      [--calibration_batches=N] --out=DIR2

Every projection (`layers.Einsum`: attention query/key/value/out, MLP up/gate/down, the pooler)
gets an int8 `kernel` with a float32 per-output-channel `kernel_scale` = max|w| / 127 over the
contracted axes (research/models/quantization.py). Embeddings (the vocabulary projection is tied
to them), LayerNorms, biases and the task heads' dense layers stay float32: the heads are a few
thousand parameters and the logits' last layer, the embeddings a lookup, not a matmul.

With --quantize_activations each projection's input also gets a static per-tensor `input_scale`
= max|x| / 127, the maximum over the first N batches of the run's eval split run through the
float model (calibration by max; --calibration_percentile=P < 100 takes each batch's P-th
percentile of |x| instead, clipping outliers); the model then multiplies int8 x int8 into int32. DIR2 is a workdir like any other (config.json with model.quantization =
'int8_weights' or 'int8' and the unrolled layer layout, tokenizer.json, labels.json,
checkpoints/): `python -m research.predict --workdir=DIR2` runs the int8 model, and
`python -m research.convert --from=DIR2 --to_hf=OUT` writes dequantized float32 weights
(q * scale: the int8 values, not the original floats).
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import params as params_lib
from research.compress import output
from research.errors import UserError
from research.models import layers, layout, quantization
from research.models.config import ModelConfig

SAMPLE_NAME = "input_absmax"  # what calibration sows per projection


def define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_bool("quantize_activations", False,
                    "Also int8 activations (static per-tensor scales, calibrated): int8 x int8 "
                    "matmuls. Default: int8 weights only.")
  flags.DEFINE_integer("calibration_batches", 4,
                       "Batches of the run's eval split run through the float model to find the "
                       "projections (and, with --quantize_activations, their input scales).")
  flags.DEFINE_float("calibration_percentile", 100.0,
                     "With --quantize_activations: an input's range is this percentile of |x| "
                     "(the largest over the batches); 100 = its maximum.")


def projection_inputs(model_cfg: ModelConfig, params, batches, percentile: float = 100.0
                      ) -> dict:
  """{module path: (equation, |input| range)} of every `layers.Einsum` of the float model
  `model_cfg` (unrolled layout) with `params`: the range is the largest, over `batches`, of each
  batch's `percentile`-th percentile of |input| (100: its maximum)."""
  from research import models  # pylint: disable=g-import-not-at-top
  from research.train import step as step_lib  # pylint: disable=g-import-not-at-top
  model = models.build(model_cfg)
  equations = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, layers.Einsum) and context.method_name == "__call__":
      equations["/".join(module.path)] = module.equation
      magnitude = jnp.abs(args[0]).astype(jnp.float32)
      module.sow("intermediates", SAMPLE_NAME, jnp.max(magnitude) if percentile >= 100 else
                 jnp.percentile(magnitude, percentile))
    return next_fun(*args, **kwargs)

  @jax.jit
  def absmax(p, batch):
    with nn.intercept_methods(record):
      _, state = model.apply({"params": p}, batch["input_ids"], **step_lib.model_inputs(batch),
                             deterministic=True, mutable=["intermediates"])
    # sown values are tuples: flattened, each path ends with '/<name>/0'
    return {path.rsplit("/", 2)[0]: value for path, value in
            params_lib.flatten(state["intermediates"]).items()}

  seen = {}
  for batch in batches:
    for path, value in absmax(params, batch).items():
      seen[path] = max(seen.get(path, 0.0), float(value))
  return {path: (equation, seen[path]) for path, equation in equations.items()}


def quantize(params, model_cfg: ModelConfig, batches, activations: bool = False,
             percentile: float = 100.0) -> tuple:
  """(int8 params, their ModelConfig) of float `params` of `model_cfg`; `batches` (at least
  one) find the projections and, with `activations`, calibrate their input scales (range /
  127, the range as `projection_inputs` measures it with `percentile`)."""
  check_float(model_cfg.quantization, "the model")
  float_cfg = dataclasses.replace(model_cfg, quantization="none", scan_layers=False)
  flat = params_lib.flatten(layout.unstack_layers(params))
  inputs = projection_inputs(float_cfg, params_lib.unflatten(flat), batches, percentile)
  for path, (equation, input_max) in inputs.items():
    kernel = np.asarray(flat[path + "/kernel"], np.float32)
    scale = quantization.channel_scale(kernel, quantization.scale_shape(equation, kernel.shape))
    flat[path + "/kernel"] = np.asarray(quantization.quantize(kernel, scale))
    flat[path + "/kernel_scale"] = scale
    if activations:
      flat[path + "/input_scale"] = np.float32(input_max / quantization.QMAX if input_max else 1.0)
  mode = "int8" if activations else "int8_weights"
  return params_lib.unflatten(flat), dataclasses.replace(float_cfg, quantization=mode)


def _model_section(model_cfg: ModelConfig) -> dict:
  """The run config's `model` section of `model_cfg` (its `peft` is a section of its own)."""
  fields = dataclasses.asdict(model_cfg)
  del fields["peft"]
  return fields


def dequantize(params) -> dict:
  """Float32 params of int8 ones: kernel = q * kernel_scale; the scales dropped."""
  flat = params_lib.flatten(params)
  out = {}
  for path, value in flat.items():
    if path.endswith(("/kernel_scale", "/input_scale")):
      continue
    scale = flat.get(path + "_scale") if path.endswith("/kernel") else None
    out[path] = value if scale is None else np.asarray(quantization.dequantize(value, scale))
  return params_lib.unflatten(out)


def calibration_batches(config: dict, workdir: str, count: int) -> list:
  """The first `count` batches of the run's eval split (its first split if it has no 'eval')."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from research import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.build(ml_collections.ConfigDict(config), workdir).tasks[0]
  split = task.splits.get("eval") or next(iter(task.splits.values()))
  if count > split.steps:
    raise UserError(f"--calibration_batches={count}: the eval split of {workdir!r} has only "
                    f"{split.steps} batches")
  return [split.batches.host_batch(step) for step in range(count)]


def check_flags(FLAGS, config: dict):  # pylint: disable=invalid-name
  """One-line refusals, before anything is read or written."""
  if FLAGS.calibration_batches < 1:
    raise UserError(f"--calibration_batches must be at least 1, got {FLAGS.calibration_batches}")
  if not 0 < FLAGS.calibration_percentile <= 100:
    raise UserError("--calibration_percentile must be in (0, 100], got "
                    f"{FLAGS.calibration_percentile}")
  output.check(FLAGS.out, "quantized")
  check_float(config.get("model", {}).get("quantization", "none"), f"--workdir {FLAGS.workdir!r}")


def check_float(mode: str, what: str):
  """Quantizing int8 kernels again would only lose precision: refused."""
  if mode in quantization.INT8_MODES:
    raise UserError(f"{what} is already quantized (model.quantization={mode!r}): quantize its "
                    "float workdir instead")


def compress_from_flags(FLAGS) -> str:  # pylint: disable=invalid-name
  """Writes the quantized workdir --out from --workdir; returns the one-line summary."""
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  source, out = FLAGS.workdir, FLAGS.out
  config = checkpoint.workdir_config(source)
  check_flags(FLAGS, config)
  model_cfg = ModelConfig.of_run(config)
  params = checkpoint.workdir_params(source, best=True)
  batches = calibration_batches(config, source, FLAGS.calibration_batches)
  qparams, qcfg = quantize(params, model_cfg, batches, FLAGS.quantize_activations,
                           FLAGS.calibration_percentile)
  config["model"] = _model_section(qcfg)
  output.write(out, source, qparams, config)
  flat = params_lib.flatten(qparams)
  int8 = sum(v.size for v in flat.values() if v.dtype == np.int8)
  total = sum(v.size for v in flat.values())
  statistic = ("max" if FLAGS.calibration_percentile >= 100 else
               f"percentile {FLAGS.calibration_percentile:g}")
  calibrated = (f", input scales from {len(batches)} eval batch(es) ({statistic})"
                if FLAGS.quantize_activations else "")
  return (f"{source} -> {out}: model.quantization={qcfg.quantization}, {int8:,} of "
          f"{total:,} parameter values int8 (scales included){calibrated}")
