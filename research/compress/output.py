"""The workdir a post-training method (quantize, prune) writes: `check` before anything is read,
`write` at the end. It holds the new parameters as a step-0 checkpoint under the new config
(which describes the new model, so every reader builds it from the config alone), with the
source's tokenizer and labels."""
import json
import os
import shutil

from research import files
from research.errors import UserError

COPIED = ("tokenizer.json", "labels.json")  # beside config.json and checkpoints/


def check(out: str, what: str):
  """Refuses a missing or non-empty --out (nothing of an existing directory is touched)."""
  if not out:
    raise UserError(f"--out is required: the directory of the {what} workdir")
  files.check_output_dir(out, "--out")
  if os.path.exists(out) and os.listdir(out):
    raise UserError(f"--out {out!r} exists and is not empty: give a new directory")


def write(out: str, source: str, params, config: dict):
  """`out` as a workdir holding `params` at step 0 under `config`, with `source`'s tokenizer and
  labels."""
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  os.makedirs(out, exist_ok=True)
  ckpt = checkpoint.Checkpointer(os.path.join(out, "checkpoints"), use_async=False)
  ckpt.save(0, {"params": params}, {"next_step": 0}, config)
  ckpt.wait()
  ckpt.close()
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  for name in COPIED:
    if os.path.exists(os.path.join(source, name)):
      shutil.copy(os.path.join(source, name), os.path.join(out, name))
