"""`python -m research.compress --method=prune`: prune a trained workdir into a new one.

  --prune_heads=H --prune_neurons=N   structured (research/compress/structured.py): remove H heads
      and N feed-forward neurons from every block (fractions in [0, 1) of a block's heads /
      neurons, or whole counts): the matrices shrink.
  --prune_sparsity=S [--prune_scope=global|per_layer]   unstructured, one-shot (research/compress/
      magnitude.py): the smallest-magnitude fraction S of the backbone's projection kernels set
      to 0 (the model keeps its shape; follow with a fine-tune whose `prune` section holds the
      same sparsity to recover accuracy, the masks kept through it).
Both may be given (structured first). The source's best parameters are read (else its latest);
--out is a workdir like any other (config.json with the new model section and a `compress`
record, tokenizer.json, labels.json, checkpoints/0) that predict, convert and init.weights read.
"""
import dataclasses
import os

from absl import flags

from research.compress import output
from research.errors import UserError



def define_flags():
  flags.DEFINE_float("prune_heads", 0.0, "Heads removed from every block: a fraction in [0, 1) "
                     "or a count.")
  flags.DEFINE_float("prune_neurons", 0.0, "Feed-forward neurons removed from every block: a "
                     "fraction in [0, 1) or a count.")
  flags.DEFINE_float("prune_sparsity", 0.0, "One-shot unstructured sparsity of the backbone's "
                     "projection kernels, in [0, 1).")
  flags.DEFINE_enum("prune_scope", "global", ["global", "per_layer"], "Magnitude threshold over "
                    "all pruned kernels, or per kernel.")


def compress_from_flags(FLAGS) -> str:  # pylint: disable=invalid-name
  return prune_workdir(FLAGS.workdir, FLAGS.out, heads=FLAGS.prune_heads,
                       neurons=FLAGS.prune_neurons, sparsity=FLAGS.prune_sparsity,
                       scope=FLAGS.prune_scope)


def prune_workdir(workdir: str, out: str, *, heads: float = 0.0, neurons: float = 0.0,
                  sparsity: float = 0.0, scope: str = "global") -> str:
  """Writes the pruned copy of `workdir` to `out`; returns the one-line summary. Every check runs
  before `out` is written."""
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  from research.compress import magnitude, structured  # pylint: disable=g-import-not-at-top
  from research.models.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from research.train import state as state_lib  # pylint: disable=g-import-not-at-top
  output.check(out, "pruned")
  config = checkpoint.workdir_config(workdir)
  cfg = ModelConfig.of_run(config)
  unstructured = magnitude.PruneConfig(sparsity=sparsity, scope=scope)
  unstructured.validate(key="--prune_sparsity")
  remove_heads = structured.removed_count(heads, cfg.num_heads, "heads", "prune_heads")
  remove_neurons = structured.removed_count(neurons, cfg.mlp_dim, "feed-forward neurons",
                                            "prune_neurons")
  if not (remove_heads or remove_neurons or unstructured.active):
    raise UserError("nothing to prune: pass --prune_heads, --prune_neurons and/or "
                    "--prune_sparsity")
  if remove_heads or remove_neurons:
    structured.check_model(cfg)
  params = checkpoint.workdir_params(workdir, best=True)
  before = state_lib.count_params(params)
  done = []
  if remove_heads or remove_neurons:
    params, cfg = structured.prune(params, cfg, remove_heads, remove_neurons)
    done.append(f"{remove_heads} heads and {remove_neurons} neurons removed per block "
                f"(num_heads {cfg.num_heads}, mlp_dim {cfg.mlp_dim})")
  if unstructured.active:
    params = magnitude.prune_once(params, unstructured)
    done.append(f"sparsity {magnitude.sparsity(params, unstructured):.4f} ({scope}) of the "
                "projection kernels")
  model = dataclasses.asdict(cfg)
  del model["peft"]  # its own section, unchanged
  config = {**config, "model": model, "compress": {
      "method": "prune", "source": os.path.abspath(workdir), "heads_removed": remove_heads,
      "neurons_removed": remove_neurons, "sparsity": sparsity, "scope": scope,
      "importance": "heads |W_V[:, h]| |W_O[h]|, neurons |W_up[:, j]| |W_down[j]| (Frobenius)"}}
  output.write(out, workdir, params, config)
  return (f"{workdir} -> {out}: {'; '.join(done)}; parameters {before:,} -> "
          f"{state_lib.count_params(params):,}")


