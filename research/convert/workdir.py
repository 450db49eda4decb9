"""A workdir of ours <-> a Hugging Face transformers directory: what `python -m research.convert`
does, importable (`import_hf`, `export_hf`; the PEFT adapter export is `research.convert.hf_peft`;
`check_target`, the command's check of the directory it writes, before anything is read)."""
import dataclasses
import json
import os
import shutil

from research import files
from research.errors import UserError


def import_hf(hf_dir: str, out: str) -> str:
  from research.convert import hub  # pylint: disable=g-import-not-at-top
  directory = hub.resolve(hf_dir)  # a hub name that cannot be had fails before the imports below
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  model_cfg, params = hf.load_pretrained(directory)
  model_section = dataclasses.asdict(model_cfg)
  del model_section["peft"]  # a plain model: no adapters
  ckpt = checkpoint.Checkpointer(os.path.join(out, "checkpoints"), use_async=False)
  ckpt.save(0, {"params": params}, {"next_step": 0}, {"model": model_section})
  ckpt.wait()
  ckpt.close()
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"model": model_section}, f, indent=2, sort_keys=True)
  try:
    tokenizer_lib.save(tokenizer_lib.load(directory), out)
  except UserError:
    pass  # no tokenizer files beside the weights
  return f"{hf_dir} ({model_cfg.kind}, heads {list(model_cfg.heads)}) -> {out}"


def export_hf(workdir: str, out: str) -> str:
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  from research.models.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from research.compress import quantize  # pylint: disable=g-import-not-at-top
  from research.models import quantization  # pylint: disable=g-import-not-at-top
  from research.peft import lora  # pylint: disable=g-import-not-at-top
  run_config = checkpoint.workdir_config(workdir)
  params = checkpoint.workdir_params(workdir, best=True)
  model_cfg = ModelConfig.of_run(run_config)
  peft = model_cfg.peft
  if peft.method == "lora":
    params = lora.merge(params, peft)[0]
  model_section = run_config["model"]
  if model_cfg.quantization in quantization.INT8_MODES:  # float32 kernels = q * scale
    params = quantize.dequantize(params)
    model_section = dict(model_section, quantization="none")
  hf.save_pretrained(model_section, params, out, labels=class_names(workdir))
  tokenizer = os.path.join(workdir, "tokenizer.json")
  if os.path.exists(tokenizer):
    shutil.copy(tokenizer, os.path.join(out, "tokenizer.json"))
  kept = "best" if checkpoint.Checkpointer.exists(os.path.join(workdir, "best")) else "latest"
  return f"{workdir} ({kept} parameters) -> {out}"


def class_names(workdir: str) -> list | None:
  """The class names of the run's classification head, in index order, from its labels.json
  (None without one): what the export writes as id2label, so that transformers' pipelines name
  the classes rather than LABEL_<i>."""
  path = os.path.join(workdir, "labels.json")  # tasks.LABELS_FILE: research.tasks is slow to load
  if not os.path.exists(path):
    return None
  with open(path) as f:
    labels = json.load(f)
  names = {tuple(info.get("names") or ()) for info in labels.values()
           if info.get("head") == "classification"}  # the head transformers' classes hold
  return list(names.pop()) if len(names) == 1 else None


def check_target(out: str, flag: str, source: str, overwrite: bool = False):
  """Refuses `out` before anything is read or written: a file, the source itself (its
  config.json would be replaced), or a directory that is not empty, unless `overwrite` (then
  the files an export writes replace theirs there; others stay)."""
  files.check_output_dir(out, flag)
  if not os.path.isdir(out):
    return
  if os.path.exists(source) and os.path.samefile(out, source):
    raise UserError(f"{flag} {out!r} is the directory converted from: writing there would "
                    "replace its files; give another directory")
  if os.listdir(out) and not overwrite:
    raise UserError(f"{flag} {out!r} exists and is not empty: give a new directory"
                    + (", or pass --overwrite to replace an earlier export there"
                       if flag != "--to" else ""))
