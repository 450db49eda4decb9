"""`python -m research.compress --method=distill`: a training run of a workdir's student.

The student's config is the teacher run's own (its task, data, optimizer, schedule) with the
`distill` section set (research/compress/distill.py, the feature) and `model.num_layers` the
student's; the run is `research.train.run`, like any other. A command apart from the feature:
the trainer never imports it.
"""
import dataclasses
import json

from research import checkpoint as ckpt_lib
from research.compress.distill import DistillConfig


def define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_integer("distill_layers", 2, "Blocks of the student (model.num_layers).",
                       lower_bound=1)
  flags.DEFINE_enum("distill_init", "every_k", ["every_k", "scratch"],
                    "The student's start: every k-th teacher block (same width), or scratch.")
  flags.DEFINE_float("distill_temperature", DistillConfig.temperature, "distill.temperature")
  flags.DEFINE_float("distill_soft_weight", DistillConfig.soft_weight, "distill.soft_weight")
  flags.DEFINE_float("distill_hard_weight", DistillConfig.hard_weight, "distill.hard_weight")
  flags.DEFINE_float("distill_hidden_weight", DistillConfig.hidden_weight,
                     "distill.hidden_weight")
  flags.DEFINE_float("distill_attention_weight", DistillConfig.attention_weight,
                     "distill.attention_weight")
  flags.DEFINE_integer("distill_steps", 0, "train.steps of the student (0: the teacher's).")
  flags.DEFINE_bool("distill_precompute", False, "distill.precompute: the teacher's logits "
                    "computed once, to disk, instead of in every step (soft targets only).")
  flags.DEFINE_string("distill_precompute_dir", "", "distill.precompute_dir (default "
                      "OUT/teacher_logits): students sharing it compute the logits once.")


def student_config(teacher: str, layers: int, settings: DistillConfig, steps: int = 0):
  """The config of a run that distils workdir `teacher` into a `layers`-block student: the
  teacher's own resolved config (its task, data, optimizer, schedule) with `distill` set, its
  initialisation and PEFT method cleared, and the teacher's tokenizer (data.tokenizer '')."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from research import config_lib  # pylint: disable=g-import-not-at-top
  saved = ckpt_lib.workdir_config(teacher)
  defaults = json.loads(config_lib.common(ml_collections.ConfigDict()).to_json())
  # JSON values: no shared objects; the compile cache is this machine's, not the teacher run's.
  saved.update(init=defaults["init"], peft=defaults["peft"], compile=defaults["compile"])
  config = ml_collections.ConfigDict(saved)
  config.distill = dataclasses.asdict(settings)
  config.model.num_layers = layers
  config.data.tokenizer = ""
  if steps:
    config.train.steps = steps
  return config


def compress_from_flags(FLAGS) -> str:  # pylint: disable=invalid-name
  """Trains the student of --workdir (a workdir of ours) into --out; returns the summary line."""
  from research import train  # pylint: disable=g-import-not-at-top
  settings = DistillConfig(
      teacher=FLAGS.workdir, temperature=FLAGS.distill_temperature,
      soft_weight=FLAGS.distill_soft_weight, hard_weight=FLAGS.distill_hard_weight,
      hidden_weight=FLAGS.distill_hidden_weight, attention_weight=FLAGS.distill_attention_weight,
      init="" if FLAGS.distill_init == "scratch" else FLAGS.distill_init,
      precompute=FLAGS.distill_precompute, precompute_dir=FLAGS.distill_precompute_dir)
  settings.validate()
  config = student_config(FLAGS.workdir, FLAGS.distill_layers, settings, FLAGS.distill_steps)
  config.compile.cache_dir = FLAGS.compile_cache_dir
  summary = train.run(config, FLAGS.out)
  tests = {k: v for k, v in summary.items() if k.startswith("test/") and k.endswith("accuracy")}
  shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(tests.items())) or \
      f"train/loss {summary.get('train/loss', float('nan')):.4f}"
  return (f"distilled {FLAGS.workdir} into a {FLAGS.distill_layers}-block student in "
          f"{FLAGS.out}: {summary['params/total']} parameters, {shown}")
