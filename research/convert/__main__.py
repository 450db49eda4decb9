r"""Convert checkpoints between Hugging Face transformers and this library.

  python -m research.convert --from_hf=DIR --to=OUT
      A transformers checkpoint directory (config.json + model.safetensors) -> OUT, a directory
      that `--config.init.weights=OUT` (weights only) reads, with OUT/config.json (the model
      section) and OUT/tokenizer.json when DIR holds a tokenizer.
  python -m research.convert --from=WORKDIR --to_hf=OUT
      The latest checkpoint of one of our runs -> OUT/config.json + OUT/model.safetensors (and
      tokenizer.json), which transformers' AutoModel* classes load. A LoRA run's adapters are
      merged into the kernels: the model as trained, as a plain transformers model.
  python -m research.convert --from=WORKDIR --to_hf_peft=OUT
      A PEFT run's adapters (LoRA) and task heads -> OUT/adapter_config.json +
      OUT/adapter_model.safetensors, which `peft.PeftModel.from_pretrained(<base>, OUT)` loads
      onto the transformers base model (`research.convert.hf_peft`).

Bad input ends with one line on stderr and exit code 2 (--verbose shows the traceback).
"""
from absl import app, flags

from research.convert.workdir import export_hf, import_hf
from research.errors import UserError, one_line_errors

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined only when it runs: importing this module defines none, so it
  coexists with the other commands' flags (predict, main) in one process."""
  flags.DEFINE_string("from_hf", None, "A transformers checkpoint directory to import.")
  flags.DEFINE_string("to", None, "Where to write the imported checkpoint.")
  flags.DEFINE_string("from", None, "A workdir of ours to export (its latest checkpoint).")
  flags.DEFINE_string("to_hf", None, "Where to write the transformers checkpoint.")
  flags.DEFINE_string("to_hf_peft", None, "Where to write a PEFT run's adapter in the Hugging "
                      "Face PEFT format.")
  flags.DEFINE_bool("verbose", False, "Show tracebacks for bad-input errors.")


def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines are not the result
  with one_line_errors(FLAGS.verbose):
    if FLAGS.from_hf and FLAGS.to and not (FLAGS["from"].value or FLAGS.to_hf):
      print(import_hf(FLAGS.from_hf, FLAGS.to))
    elif FLAGS["from"].value and FLAGS.to_hf and not (FLAGS.from_hf or FLAGS.to or
                                                      FLAGS.to_hf_peft):
      print(export_hf(FLAGS["from"].value, FLAGS.to_hf))
    elif FLAGS["from"].value and FLAGS.to_hf_peft and not (FLAGS.from_hf or FLAGS.to):
      from research.convert import hf_peft  # pylint: disable=g-import-not-at-top
      print(hf_peft.export(FLAGS["from"].value, FLAGS.to_hf_peft))
    else:
      raise UserError("pass one of --from_hf=DIR --to=OUT, --from=WORKDIR --to_hf=OUT or "
                      "--from=WORKDIR --to_hf_peft=OUT")


if __name__ == "__main__":
  define_flags()
  app.run(main)
