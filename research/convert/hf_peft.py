"""Export a PEFT run in the Hugging Face PEFT format: OUT/adapter_config.json +
OUT/adapter_model.safetensors, which `peft.PeftModel.from_pretrained(<transformers model>, OUT)`
loads onto the base model with our outputs.

What goes in:
  - LoRA: each adapted projection's factors under its transformers module name
    ('base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight'). A factor is a
    kernel whose output (A) or input (B) axis is the rank, so the projection's own conversion
    rule (`research.convert.rules`) writes it; transformers' Conv1D (GPT-2) stores weights
    (in, out), and PEFT's factors are (rank, in) and (out, rank) (`fan_in_fan_out`).
  - A fused module (GPT-2's c_attn holds query, key and value) gets one LoRA of rank r_q + r_v:
    A = [A_q; A_v] along the rank, B block-structured with zeros for the key rows and across the
    blocks; its `rank_pattern`/`alpha_pattern` entry keeps the scale alpha / r (or alpha / sqrt(r)).
  - The task heads, trained in every PEFT run, as PEFT's `modules_to_save` ('classifier').
  - The base: `init.weights` 'hf:NAME_OR_DIR' -> base_model_name_or_path its directory on this
    machine (a hub name: the installed or cached copy, which loads offline), after checking that
    every other parameter of the run equals its; a run with any other base (from scratch, or from
    a workdir of ours) gets its frozen weights written as a transformers checkpoint in OUT/base.

Only methods PEFT's format holds and this module writes are exported (`SUPPORTED`); bad input
raises `UserError` before anything is written.
"""
import json
import os
import shutil

import numpy as np

from research import checkpoint
from research import params as params_lib
from research.convert import architectures, hf
from research.errors import UserError
from research.models.config import ModelConfig
from research.peft import lora

SUPPORTED = {"lora": "LORA"}  # our method -> PEFT's peft_type
TASK_TYPES = {"classification": "SEQ_CLS", "lm": "CAUSAL_LM"}  # our head kind -> PEFT task_type
PREFIX = "base_model.model."  # what PeftModel puts before the transformers model's names
BASE_DIR = "base"  # OUT/base: the frozen weights of a run that started from no HF checkpoint


def export(workdir: str, out: str) -> str:
  """`python -m research.convert --from=WORKDIR --to_hf_peft=OUT`."""
  run_config = checkpoint.workdir_config(workdir)
  check_exportable(ModelConfig.of_run(run_config), workdir)
  tokenizer = os.path.join(workdir, "tokenizer.json")
  described = save_adapter(run_config, checkpoint.workdir_params(workdir, best=True), out,
                           tokenizer if os.path.exists(tokenizer) else None)
  kept = "best" if checkpoint.Checkpointer.exists(os.path.join(workdir, "best")) else "latest"
  return f"{workdir} ({kept} parameters): {described}"


def check_exportable(model_cfg: ModelConfig, where: str) -> ModelConfig:
  """The model with heads as transformers names them, if its method and heads have a PEFT-format
  export; else `UserError`."""
  method = model_cfg.peft.method
  if method == "none":
    raise UserError(f"{where} is not a PEFT run (peft.method='none'): export it with --to_hf")
  if method not in SUPPORTED:
    hint = (" (a BitFit model is a plain model: export it with --to_hf)" if method == "bitfit"
            else "")
    raise UserError(f"peft.method={method!r} has no Hugging Face PEFT export; --to_hf_peft "
                    f"exports {sorted(SUPPORTED)}{hint}")
  plain = hf.plain_heads(model_cfg)
  unheld = [h for h in plain.heads if h not in TASK_TYPES]
  if unheld:  # BERT's MLM head shares a module with the tied decoder: no modules_to_save for it
    raise UserError(f"the PEFT export holds the heads {sorted(TASK_TYPES)} (or none); this run's "
                    f"heads are {list(plain.heads)}")
  return plain


def save_adapter(run_config: dict, params, out: str, tokenizer: str | None = None) -> str:
  """Writes OUT/adapter_config.json + OUT/adapter_model.safetensors (and OUT/base when the run
  has no transformers base) for a run's config (its `model`, `peft` and `init` sections, as in
  WORKDIR/config.json) and parameters (either layout)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  model_cfg = ModelConfig.of_run(run_config)
  peft = model_cfg.peft
  plain = check_exportable(model_cfg, "this run")
  arch = architectures.for_model(plain)
  model_class = arch.architecture(plain.heads)  # the transformers class the adapter goes on
  flat = hf.unrolled_float32(params)
  tensors, ranks = lora_tensors(arch, plain, flat)
  heads, modules_to_save = head_tensors(arch, plain, flat)
  tensors.update(heads)
  base_params = {p: v for p, v in flat.items() if not is_adapter(p) and not p.startswith("heads_")}
  weights = run_config.get("init", {}).get("weights", "")
  if weights.startswith("hf:"):
    base_name = check_base(weights[3:], base_params)
  else:
    base_name = os.path.abspath(os.path.join(out, BASE_DIR))
  config = adapter_config(peft, arch, task_type(plain), ranks, modules_to_save, base_name)
  os.makedirs(out, exist_ok=True)
  if not weights.startswith("hf:"):
    base_dir = os.path.join(out, BASE_DIR)
    hf.save_pretrained(run_config["model"], params_lib.unflatten(
        {p: v for p, v in flat.items() if not is_adapter(p)}), base_dir)
    if tokenizer:
      shutil.copy(tokenizer, os.path.join(base_dir, "tokenizer.json"))
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
            os.path.join(out, "adapter_model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out, "adapter_config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  labels = f", num_labels={plain.num_labels}" if "classification" in plain.heads else ""
  return (f"LoRA r={peft.rank} on {len(ranks)} {arch.model_type} modules"
          + (f", modules_to_save {modules_to_save}" if modules_to_save else "")
          + f" -> {out}; load it with peft.PeftModel.from_pretrained("
          f"transformers.{model_class}.from_pretrained({base_name!r}{labels}), {out!r})")


def adapter_config(peft, arch, task: str | None, ranks: dict, modules_to_save: list,
                   base_name: str) -> dict:
  """adapter_config.json: peft.LoraConfig's fields. A fused module's rank (`ranks`) differs from
  peft.rank: its `rank_pattern` and `alpha_pattern` entries keep the scale alpha / r."""
  fused = {m: r for m, r in ranks.items() if r != peft.rank}
  scale = lora.scale(peft)
  return {
      "peft_type": SUPPORTED[peft.method], "task_type": task, "base_model_name_or_path": base_name,
      "r": peft.rank, "lora_alpha": peft.alpha, "use_rslora": peft.rslora,
      "lora_dropout": peft.dropout, "target_modules": list(ranks), "rank_pattern": fused,
      "alpha_pattern": {m: float(scale * (np.sqrt(r) if peft.rslora else r))
                        for m, r in fused.items()},
      "fan_in_fan_out": arch.fan_in_fan_out, "bias": "none",
      "modules_to_save": modules_to_save or None, "inference_mode": True,
      "init_lora_weights": True}


def is_adapter(path: str) -> bool:
  return path.endswith(("/" + lora.A, "/" + lora.B))


def task_type(model_cfg: ModelConfig) -> str | None:
  kinds = [TASK_TYPES[h] for h in model_cfg.heads if h in TASK_TYPES]
  return kinds[0] if len(kinds) == 1 else None


def lora_tensors(arch, model_cfg: ModelConfig, flat: dict) -> tuple[dict, dict]:
  """({PEFT tensor name: array}, {transformers module name: rank}) of the LoRA factors in
  `flat` (our unrolled parameters), one LoRA per transformers module."""
  tensors, ranks, placed = {}, {}, set()
  for rule in arch.rules(model_cfg):
    modules = [p[:-len("/kernel")] for p in rule.ours if p.endswith("/kernel")]
    adapted = [m for m in modules if f"{m}/{lora.A}" in flat]
    if not adapted:
      continue
    if len(modules) != len(rule.ours) or not rule.hf.endswith(".weight"):
      raise UserError(f"LoRA on {adapted} has no transformers weight to attach to ({rule.hf!r})")
    a_hf, b_hf = _factors(rule, modules, adapted, flat)
    if arch.fan_in_fan_out:  # the rule wrote Conv1D's (in, out); PEFT's factors are Linear's
      a_hf, b_hf = a_hf.T, b_hf.T
    name = PREFIX + hf.tensor_name(arch, rule, bool(model_cfg.heads))[:-len("weight")]
    tensors[name + "lora_A.weight"], tensors[name + "lora_B.weight"] = a_hf, b_hf
    ranks[rule.hf[:-len(".weight")]] = a_hf.shape[0]
    placed.update(adapted)
  unplaced = sorted({p.rsplit("/", 1)[0] for p in flat if is_adapter(p)} - placed)
  if unplaced:
    raise UserError(f"no {arch.model_type} module holds the LoRA of {unplaced}")
  return tensors, ranks


def _factors(rule, modules: list, adapted: list, flat: dict) -> tuple:
  """(A, B) in the layout of `rule`'s transformers weight. The rule maps our kernels (in..., out...)
  of `modules`; A's parts are (in..., r_m) (none: width 0), B's (R, out...) with module m's b in
  its rows of the total rank R (zeros elsewhere), so B A is each adapted module's b a in place."""
  a_of = {m: flat[f"{m}/{lora.A}"] for m in adapted}
  total = sum(a.shape[-1] for a in a_of.values())
  n_in = next(iter(a_of.values())).ndim - 1  # the kernels' input axes (shared by fused modules)
  a_parts, b_parts, offset = [], [], 0
  for m in modules:
    kernel_shape = flat[f"{m}/kernel"].shape
    b_part = np.zeros((total,) + kernel_shape[n_in:], np.float32)
    if m in a_of:
      rank = a_of[m].shape[-1]
      b_part[offset:offset + rank] = flat[f"{m}/{lora.B}"]
      a_parts.append(a_of[m])
      offset += rank
    else:
      a_parts.append(np.zeros(kernel_shape[:n_in] + (0,), np.float32))
    b_parts.append(b_part)
  return rule.to_hf(*a_parts), rule.to_hf(*b_parts)


def head_tensors(arch, model_cfg: ModelConfig, flat: dict) -> tuple[dict, list]:
  """The task heads' tensors under PEFT's names, and the transformers modules holding them
  (`modules_to_save`)."""
  tensors, modules = {}, []
  for rule in arch.rules(model_cfg):
    if all(p.startswith("heads_") for p in rule.ours):
      tensors[PREFIX + hf.tensor_name(arch, rule, bool(model_cfg.heads))] = rule.to_hf(
          *(flat[p] for p in rule.ours))
      modules.append(rule.hf.split(".")[0])
  return tensors, list(dict.fromkeys(modules))


def check_base(name_or_dir: str, base_params: dict) -> str:
  """The run's base is `init.weights`' transformers checkpoint: every parameter that is neither
  LoRA nor a head equals it. Returns what base_model_name_or_path names and the printed load line
  loads: the base's directory on this machine, as an absolute path (a hub name's installed or
  cached copy: the name itself would need the hub, and fail offline)."""
  directory = hf.resolve(name_or_dir)
  _, loaded = hf.load_pretrained(directory)
  reference = hf.unrolled_float32(loaded)
  differ = [p for p, v in base_params.items()
            if p not in reference or reference[p].shape != v.shape
            or not np.array_equal(reference[p], v)]
  if differ:
    raise UserError(f"{len(differ)} parameters of the run differ from its base (init.weights "
                    f"hf:{name_or_dir}), e.g. {differ[:3]}; PEFT's format holds the LoRA weights "
                    "and the task heads only: export the whole model with --to_hf")
  return os.path.abspath(directory)
