"""The shapes a run of a config would have, without its data: `shape_config`.

Used by `research.cost` and `research.aot`, which size and compile a run's model and step before
any corpus is read or tokenizer trained.
"""


def shape_config(config) -> tuple:
  """(config with model.vocab_size, model.heads and objective.max_predictions derived as a run
  derives them, notes on what was assumed); reads no corpus, trains no tokenizer."""
  from research import objectives  # pylint: disable=g-import-not-at-top
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from research.tasks import finetuning  # pylint: disable=g-import-not-at-top
  from research.train import initialization, resolve  # pylint: disable=g-import-not-at-top
  from research import validation  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  validation.check_config(config)  # the value checks a run makes (train.steps >= 1, ...)
  notes = []
  weights = config.init.weights
  if weights.startswith("hf:") and hf.local_dir(weights[3:]) is None:
    notes.append(f"init.weights {weights!r} is not on this machine (not downloaded): the shape "
                 "is the config's model fields")
    config.init.weights = ""
  initialization.configure(config)  # an HF checkpoint's shape; a workdir's tokenizer
  resolve.resolve_max_predictions(config)
  if config.model.vocab_size == -1:
    if config.data.tokenizer:
      tokens, where = tokenizer_lib.load(config.data.tokenizer).get_vocab_size(), "data.tokenizer"
    else:
      tokens, where = config.data.vocab_size, "data.vocab_size (the tokenizer a run trains)"
    config.model.vocab_size = resolve.padded_vocab_size(tokens)
    notes.append(f"vocabulary {config.model.vocab_size}: {where} {tokens} rounded up to 128")
  if config.get("tasks"):
    config.model.heads = finetuning.heads_of_config(config)
    notes.append(f"heads {list(config.model.heads)}, from the tasks' kinds; a classifier has "
                 f"model.num_labels={config.model.num_labels} outputs (its labels need the data)")
  else:
    config.model.heads = objectives.pretraining(config.objective)[1]
  return config, notes
