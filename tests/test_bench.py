"""The benchmark harness's smoke mode: both sides train the same shapes and report figures."""
import json

import pytest

from research import bench

FIELDS = ("workload", "batch", "seq", "tokens_per_sec", "step_ms", "mfu", "peak_memory_gb",
          "compile_s")


def test_smoke_run_prints_one_json_line_per_workload(capsys):
  pytest.importorskip("torch")
  bench.main(["--smoke", "--peer=hf", "--steps=2", "--warmup=2",
              "--workloads=bert-base-mlm-s128,gpt2-medium-clm-s1024"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["workload"] for r in rows] == ["bert-base-mlm-s128-smoke", "gpt2-medium-clm-s1024-smoke"]
  for r in rows:
    assert set(FIELDS) <= set(r) and r["tokens_per_sec"] > 0 and r["hf_tokens_per_sec"] > 0
    assert r["ratio"] == pytest.approx(r["tokens_per_sec"] / r["hf_tokens_per_sec"])
    # Same model shape, same data: both start at the loss of a uniform guess, ln(vocab).
    assert r["loss"] == pytest.approx(r["hf_loss"], rel=0.05)


def test_smoke_pipeline_rate(capsys):
  bench.main(["--smoke", "--pipeline", "--steps=1", "--warmup=1", "--workloads=bert-base-mlm-s128"])
  row = json.loads(capsys.readouterr().out)
  assert row["pipeline_batches_per_sec"] > 0 and row["pipeline_ratio"] > 0


def test_flops_formula_matches_a_hand_count():
  w = bench.workloads("bert-base-mlm-s128", smoke=False)[0]
  cfg = bench.model_config(w, "bfloat16")
  from research import perf  # pylint: disable=g-import-not-at-top
  d, f, L, T, V, P = 768, 3072, 12, 128, 30522, 19
  per_seq = L * (2 * T * 4 * d * d + 2 * T * 2 * d * f + 4 * T * T * d) + 2 * P * (d * d + d * V)
  assert perf.train_flops_per_step(cfg, T, 256, P) == 3 * 256 * per_seq
