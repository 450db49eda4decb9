"""`python -m research.bench --device=cpu`: the CPU side-by-side against transformers + torch."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, require


def bench(*flags):
  proc = subprocess.run([sys.executable, "-m", "research.bench", "--device=cpu", *flags],
                        cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  return [json.loads(l) for l in lines if l.startswith("{")], [l for l in lines if l.startswith("|")]


@pytest.mark.slow
def test_side_by_side_rows_are_the_same_function_and_consistent():
  require("torch", "the peer of the CPU benchmark")
  records, table = bench("--peer=hf", "--workloads=runlocal-encoder,runlocal-decoder",
                         "--repeats=2", "--warmup=1", "--table")
  assert [(r["workload"], r["row"]) for r in records] == [
      ("runlocal-encoder", "train"), ("runlocal-encoder", "eval"),
      ("runlocal-decoder", "train"), ("runlocal-decoder", "eval")]  # no infer: not a task
  for r in records:
    # The peer holds our exported weights: on the same batch, dropout off, the same loss.
    assert r["loss_match"], r
    assert r["eval_loss"] == pytest.approx(r["hf_eval_loss"], rel=1e-4)
    assert r["ratio"] == pytest.approx(r["hf_ms"] / r["ms"])
    assert r["tokens_per_sec"] == pytest.approx(r["batch"] * r["seq"] / (r["ms"] / 1e3))
    assert r["hf_tokens_per_sec"] == pytest.approx(r["batch"] * r["seq"] / (r["hf_ms"] / 1e3))
  assert len(table) == 2 + len(records)
  assert f"{records[0]['ratio']:.2f}" in table[2]


@pytest.mark.slow
def test_levers_leave_the_loss_and_are_each_measured():
  records, _ = bench("--levers", "--workloads=runlocal-decoder", "--repeats=1", "--warmup=1")
  variants = ["none", "only fused_dropout_bits", "only heads_major_attention", "only erf_gelu",
              "only xla_cpu_options", "all"]
  # the decoder has no infer row (not a classification task)
  assert [(r["row"], r["levers"]) for r in records] == [
      (row, v) for row in ("train", "eval") for v in variants]
  for row in ("train", "eval"):
    none, *others = [r for r in records if r["row"] == row]
    assert none["speedup"] == 1.0
    for r in others:
      assert r["loss"] == pytest.approx(none["loss"], rel=1e-5), r
      assert r["speedup"] == pytest.approx(none["ms"] / r["ms"])


def test_unknown_workload_is_one_line():
  proc = subprocess.run([sys.executable, "-m", "research.bench", "--device=cpu",
                         "--workloads=gpt5"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --device=cpu knows workloads")
