"""A workdir of ours <-> a Hugging Face transformers directory: what `python -m research.convert`
does, importable (`import_hf`, `export_hf`; the PEFT adapter export is `research.convert.hf_peft`)."""
import dataclasses
import json
import os
import shutil

from research.errors import UserError


def import_hf(hf_dir: str, out: str) -> str:
  from research import checkpoint  # pylint: disable=g-import-not-at-top
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  from research.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  model_cfg, params = hf.load_pretrained(hf_dir)
  model_section = dataclasses.asdict(model_cfg)
  del model_section["peft"]  # a plain model: no adapters
  ckpt = checkpoint.Checkpointer(os.path.join(out, "checkpoints"), use_async=False)
  ckpt.save(0, {"params": params}, {"next_step": 0}, {"model": model_section})
  ckpt.wait()
  ckpt.close()
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"model": model_section}, f, indent=2, sort_keys=True)
  try:
    tokenizer_lib.save(tokenizer_lib.load(hf.resolve(hf_dir)), out)
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
  hf.save_pretrained(model_section, params, out)
  tokenizer = os.path.join(workdir, "tokenizer.json")
  if os.path.exists(tokenizer):
    shutil.copy(tokenizer, os.path.join(out, "tokenizer.json"))
  kept = "best" if checkpoint.Checkpointer.exists(os.path.join(workdir, "best")) else "latest"
  return f"{workdir} ({kept} parameters) -> {out}"
