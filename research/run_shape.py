"""The fields a run derives from its data and objective, derived in one place: `derive`.

A run (research/train/resolve.py) derives `objective.max_predictions` from the masking rate and
sequence length, `model.vocab_size` from its tokenizer (rounded up to a multiple of 128) and
`model.heads` from its tasks, and so do the commands that size or compile a run without reading
its data: `shape_config` for research.cost and research.aot (the vocabulary from data.tokenizer,
or the size of the tokenizer a run would train; the heads from the tasks' kinds), the
benchmarks (`research.bench.run_config`) and research.memory. They all call `derive`, so a new
derived field is taught here once.
"""
import math

from research.errors import UserError


def derive(config, tokens: int, heads: tuple):
  """Fills, in place, what a run derives: objective.max_predictions (MLM), model.vocab_size
  (when -1) from `tokens` (the tokenizer's vocabulary size), model.heads (the head specs the
  tasks or the objective need; a config may only repeat them)."""
  derive_max_predictions(config)
  if config.model.vocab_size == -1:
    config.model.vocab_size = padded_vocab_size(tokens)
  elif config.model.vocab_size < tokens:
    raise UserError(f"model.vocab_size ({config.model.vocab_size}) is smaller than the "
                    f"tokenizer's vocabulary ({tokens})")
  given = tuple(config.model.heads)
  if given and given != tuple(heads):
    raise UserError(f"model.heads {list(given)} differ from the heads the objective/tasks "
                    f"need {list(heads)}; leave model.heads empty: it is derived")
  config.model.heads = tuple(heads)


def derive_max_predictions(config):
  """objective.max_predictions of an MLM run (-1: ceil(mask_rate x seq_len)); the data pipeline
  masks that many positions, so a run derives it before it reads the data."""
  from research import objectives  # pylint: disable=g-import-not-at-top
  if config.get("objective") and config.objective.name == "mlm":
    config.objective.max_predictions = objectives.max_predictions(config.objective,
                                                                 config.data.seq_len)


def padded_vocab_size(tokens: int) -> int:
  """The model's vocabulary for a tokenizer of `tokens` entries: rounded up to a multiple of 128."""
  return int(math.ceil(tokens / 128) * 128)


def shape_config(config) -> tuple:
  """(config with model.vocab_size, model.heads and objective.max_predictions derived as a run
  derives them, notes on what was assumed); reads no corpus, trains no tokenizer."""
  from research import objectives  # pylint: disable=g-import-not-at-top
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from research.tasks import finetuning  # pylint: disable=g-import-not-at-top
  from research.train import initialization  # pylint: disable=g-import-not-at-top
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
  if config.data.tokenizer:
    tokens, where = tokenizer_lib.load(config.data.tokenizer).get_vocab_size(), "data.tokenizer"
  else:
    tokens, where = config.data.vocab_size, "data.vocab_size (the tokenizer a run trains)"
  vocab_derived = config.model.vocab_size == -1
  heads = (finetuning.heads_of_config(config) if config.get("tasks")
           else objectives.pretraining(config.objective)[1])
  config.model.heads = ()  # derived from the tasks' kinds, as a run derives it
  derive(config, tokens if vocab_derived else 0, heads)
  if vocab_derived:
    notes.append(f"vocabulary {config.model.vocab_size}: {where} {tokens} rounded up to 128")
  if config.get("tasks"):
    notes.append(f"heads {list(heads)}, from the tasks' kinds; a classifier has "
                 f"model.num_labels={config.model.num_labels} outputs (its labels need the data)")
  return config, notes
