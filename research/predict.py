r"""Predictions of a fine-tuned model on new inputs, as JSONL.

  python -m research.predict --workdir=DIR --input=FILE|- [--output=FILE] [--task=NAME]

Input: JSONL (one object a line) or plain text (one text a line). What a row holds, by task:
  classification / multilabel / regression   {"text": ..., "text_pair": ...}  (plain lines: text)
  token_classification                       {"text": raw text} or {"words": [...]}
  qa                                         {"question": ..., "context": ..., "id": ...}
Output, one line per input row, in order: classification {"label", "score", "scores"},
multilabel {"labels", "scores"}, regression {"score"}, NER {"tags", "entities": [{"type",
"start", "end", "text"}]} (character spans of the input text), QA {"answer", "start", "end",
"score"}. Uses the run's best checkpoint (evals.best_metric) if it kept one, else its latest.
The output file is replaced only once every prediction is written; bad input (an empty input, a
directory or binary file, --output the same file as --input) is one line `error: ...`, exit code
2, before the model loads and with nothing written (--verbose: the traceback).
"""
import itertools
import json
import os
import sys

from absl import app, flags

from research import command_line, compile_cache, files
from research.errors import UserError, exit_with, one_line_errors

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined only when it runs (importing `Predictor` defines none)."""
  flags.DEFINE_string("workdir", None, "A fine-tuning run's workdir.")
  flags.DEFINE_string("input", "-", "JSONL or text file of inputs; '-' reads stdin.")
  flags.DEFINE_string("output", "-", "Where to write the JSONL predictions; '-' is stdout.")
  flags.DEFINE_string("task", "", "Which task's head to use (multi-task runs); default: the only one.")
  flags.DEFINE_integer("batch_size", 64, "Rows per forward pass.", lower_bound=1)
  flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
  flags.DEFINE_bool("verbose", False, "Show tracebacks for bad-input errors.")
  compile_cache.define_flag()


CHUNK = 1024  # rows read, encoded and predicted at a time
# What a fine-tuning run leaves that predictions need (labels.json: `tasks.LABELS_FILE`, named
# here so that the check runs before the heavy imports).
WORKDIR_FILES = ("config.json", "tokenizer.json", "labels.json")


def check_workdir(workdir: str):
  if not workdir:
    raise UserError("--workdir is required")
  for name in WORKDIR_FILES:
    if not os.path.exists(os.path.join(workdir, name)):
      raise UserError(f"{workdir!r} has no {name}: is it the workdir of a fine-tuning run?")


def read_rows(lines):
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    stripped = line.strip()
    if stripped.startswith("{"):
      try:
        yield json.loads(stripped)
      except json.JSONDecodeError as e:
        raise UserError(f"input line {n}: not a JSON object ({e.msg})") from None
    else:
      yield {"text": line.rstrip("\n")}


class Predictor:
  """A run's model, parameters, tokenizer and task head, ready for `predict(rows)`."""

  def __init__(self, workdir: str, task: str = "", batch_size: int = 64):
    import jax  # pylint: disable=g-import-not-at-top
    import ml_collections  # pylint: disable=g-import-not-at-top
    from research import checkpoint, models  # pylint: disable=g-import-not-at-top
    from research import compile_options, tasks  # pylint: disable=g-import-not-at-top
    from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
    from research.tasks import finetuning  # pylint: disable=g-import-not-at-top
    from research.train import step as step_lib  # pylint: disable=g-import-not-at-top
    check_workdir(workdir)
    with open(os.path.join(workdir, "config.json")) as f:
      config = ml_collections.ConfigDict(json.load(f))
    labels = tasks.saved_labels(workdir)
    if task and task not in labels:
      raise UserError(f"no task {task!r} in {workdir!r}; tasks: {sorted(labels)}")
    if not task and len(labels) > 1:
      raise UserError(f"{workdir!r} holds several tasks {sorted(labels)}: pick one with --task")
    name = task or next(iter(labels))
    info = labels[name]
    task_cls = finetuning.task_class(info["kind"])
    self.task = task_cls.__new__(task_cls).setup(
        # A continual-learning stage's task reads the task of config.tasks named 'source'.
        name, config.tasks[info.get("source", name)].to_dict(), info["head"], info["names"])
    self.tokenizer = tokenizer_lib.from_file(os.path.join(workdir, "tokenizer.json"))
    self.seq_len, self.batch_size = config.data.seq_len, batch_size
    model_cfg = models.ModelConfig.of_run(config)
    model = models.build(model_cfg)
    # On the device once: host arrays (a checkpoint restored without shardings) would be copied
    # to it again at every call.
    self.params = jax.device_put(checkpoint.workdir_params(workdir, best=True))
    self.forward = jax.jit(
        lambda p, b: self.task.eval_outputs(step_lib.apply_model(model, p, b), b),
        compiler_options=compile_options.for_step(compile_options.FORWARD))

  def predict(self, rows: list[dict], progress=None) -> list[dict]:
    features, meta = self.task.predict_features(rows, self.tokenizer, self.seq_len)
    return self.task.predict_rows(self.outputs(features, progress), rows, meta) if rows else []

  def outputs(self, features: list[dict], progress=None) -> dict:
    """The task's `eval_outputs` (e.g. a classifier's logits) of encoded `features`, in
    batches of `batch_size` (the last one filled up with its last row: one shape, one compile)."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    outputs = []
    for start in range(0, len(features), self.batch_size):
      part = features[start:start + self.batch_size]
      part = part + [part[-1]] * (self.batch_size - len(part))
      batch = {k: np.stack([f[k] for f in part]) for k in part[0]}
      outputs.append({k: np.asarray(v) for k, v in self.forward(self.params, batch).items()})
      if progress is not None:
        progress.update(min(self.batch_size, len(features) - start))
    return {k: np.concatenate([o[k] for o in outputs])[:len(features)] for k in outputs[0]} \
        if outputs else {}


def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines are not predictions
  compile_cache.use(FLAGS.compile_cache_dir)
  with one_line_errors(FLAGS.verbose):
    try:
      run(FLAGS.workdir, FLAGS.input, FLAGS.output, FLAGS.task, FLAGS.batch_size, FLAGS.progress)
    except KeyError as e:
      if FLAGS.verbose:
        raise
      exit_with(f"an input row lacks the field {e}")
    except UnicodeDecodeError as e:  # past the part `files.check_input` reads
      if FLAGS.verbose:
        raise
      exit_with(f"--input {FLAGS.input!r} is not UTF-8 text ({e.reason}); expected JSON Lines "
                "or UTF-8 text")


def run(workdir: str, input_path: str, output: str, task: str = "", batch_size: int = 64,
        progress: bool = True):
  """The command: every file check and the first row read before the model loads, the
  predictions written to `output` only when all of them are done (`files.written_when_done`)."""
  check_workdir(workdir)
  files.check_input(input_path, "--input")
  files.check_output(output, "--output", input_path)
  source = sys.stdin if input_path == files.STDIO else open(input_path, encoding="utf-8")
  rows = read_rows(source)
  first = next(rows, None)
  if first is None:  # most likely the wrong file: say so rather than write nothing
    where = "stdin" if input_path == files.STDIO else f"--input {input_path!r}"
    raise UserError(f"{where} holds no rows (it is empty or blank lines only): nothing to predict")
  predictor = Predictor(workdir, task, batch_size)
  import tqdm  # pylint: disable=g-import-not-at-top
  with files.written_when_done(output) as sink:
    bar = tqdm.tqdm(unit="row", desc="predict", disable=not progress, file=sys.stderr)
    rows = itertools.chain([first], rows)
    while chunk := list(itertools.islice(rows, CHUNK)):
      _write(sink, predictor.predict(chunk, bar))
    bar.close()


def _write(sink, predictions):
  for p in predictions:
    sink.write(json.dumps(p, ensure_ascii=False) + "\n")
  sink.flush()


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=command_line.parse_flags)  # a bad flag: one line, exit code 2
