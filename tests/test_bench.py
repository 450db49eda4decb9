"""The benchmark harness's smoke mode: both sides train the same shapes and report figures."""
import json

import pytest

from conftest import require
from research import bench

FIELDS = ("workload", "batch", "seq", "tokens_per_sec", "step_ms", "mfu", "peak_memory_gb",
          "compile_s")


@pytest.mark.slow  # CI also runs the smoke command itself
def test_smoke_run_prints_one_json_line_per_workload(capsys):
  require("torch", "the HF peer runs PyTorch (pip install -e '.[test]')")
  require("transformers", "the HF peer runs transformers")
  bench.main(["--smoke", "--peer=hf", "--steps=2", "--warmup=2",
              "--workloads=bert-base-mlm-s128,gpt2-medium-clm-s1024"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["workload"] for r in rows] == ["bert-base-mlm-s128-smoke", "gpt2-medium-clm-s1024-smoke"]
  for r in rows:
    assert set(FIELDS) <= set(r) and r["tokens_per_sec"] > 0 and r["hf_tokens_per_sec"] > 0
    assert r["ratio"] == pytest.approx(r["tokens_per_sec"] / r["hf_tokens_per_sec"])
    # Same model shape, same data: both start at the loss of a uniform guess, ln(vocab).
    assert r["loss"] == pytest.approx(r["hf_loss"], rel=0.05)


@pytest.mark.slow  # CI also runs the smoke command itself
def test_smoke_pipeline_rate(capsys):
  bench.main(["--smoke", "--pipeline", "--steps=1", "--warmup=1", "--workloads=bert-base-mlm-s128"])
  row = json.loads(capsys.readouterr().out)
  assert row["pipeline_batches_per_sec"] > 0 and row["pipeline_ratio"] > 0


def test_flops_formula_matches_a_hand_count():
  w = bench.workloads("bert-base-mlm-s128", smoke=False)[0]
  cfg = bench.model_config(w, "bfloat16")
  from research import perf  # pylint: disable=g-import-not-at-top
  d, f, L, T, V, P = 768, 3072, 12, 128, 30522, 20  # P: ceil(0.15 x 128), as a run derives it
  per_seq = L * (2 * T * 4 * d * d + 2 * T * 2 * d * f + 4 * T * T * d) + 2 * P * (d * d + d * V)
  assert perf.train_flops_per_step(cfg, T, 256, P) == 3 * 256 * per_seq


def test_levers_batch_and_profile(capsys, tmp_path):
  bench.main(["--smoke", "--steps=2", "--warmup=1", "--workloads=gpt2-medium-clm-s1024",
              "--set=remat=full", "--set=attention_impl=xla", "--batch=4",
              f"--profile={tmp_path}"])
  row = json.loads(capsys.readouterr().out)
  assert row["batch"] == 4 and row["remat"] == "full" and row["attention_impl"] == "xla"
  assert row["overrides"] == {"remat": "full", "attention_impl": "xla"}
  assert row["matmul_tflops"] > 0 and 0 < row["ceiling_fraction"] < 2
  profile = row["profile"]  # the device was busy for part of each timed step
  assert 0 < profile["busy_ms"] < 2 * row["step_ms"]
  assert profile["busy_ms"] == pytest.approx(
      profile["matmul_ms"] + profile["attention_ms"] + profile["other_ms"])
  assert len(profile["top"]) == 5 and profile["top"][0][1] >= profile["top"][-1][1]


@pytest.mark.parametrize("pair", ["remat", "no_such_field=1"])
def test_bad_lever_is_one_line(pair):
  with pytest.raises(SystemExit, match="--set wants KEY=VALUE"):
    bench.parse_overrides([pair])


def test_lever_values_are_typed_like_the_field():
  assert bench.parse_overrides(["num_layers=3", "use_bias=false", "attention_impl=none",
                                "dropout_rate=0"]) == {
                                    "num_layers": 3, "use_bias": False, "attention_impl": None,
                                    "dropout_rate": 0.0}


def test_depths_give_a_row_per_depth_unrolled_then_scanned(capsys):
  assert bench.depth_overrides("1,3", {"remat": "full"}) == [
      {"remat": "full", "num_layers": n, "scan_layers": scan} for n in (1, 3) for scan in (False, True)]
  bench.main(["--smoke", "--steps=1", "--warmup=1", "--workloads=gpt2-medium-clm-s1024",
              "--depths=3", "--batch=2", "--set=remat=full"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(r["overrides"]["num_layers"], r["scan_layers"], r["remat"]) for r in rows] == \
      [(3, False, "full"), (3, True, "full")]


@pytest.mark.parametrize("depths", ["2,x", "0,2", ","])
def test_bad_depths_are_one_line(depths):
  with pytest.raises(SystemExit, match="--depths wants positive layer counts"):
    bench.depth_overrides(depths, {})


@pytest.mark.slow
def test_sweep_prints_one_row_per_lever(capsys):
  bench.main(["--smoke", "--steps=1", "--warmup=1", "--workloads=bert-base-mlm-s128", "--sweep",
              "--batch=2"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r.get("lever") for r in rows] == [None, *bench.SWEEP]
  by_lever = {r.get("lever"): r for r in rows}
  assert by_lever["remat=full"]["remat"] == "full"
  assert by_lever["dropout_prng=rbg"]["dropout_prng"] == "rbg"
  assert by_lever["attention_impl=xla"]["attention_impl"] == "xla"
  for r in rows[1:]:
    assert r["vs_baseline"] == pytest.approx(r["tokens_per_sec"] / rows[0]["tokens_per_sec"])


def test_largest_batch_stops_at_the_first_out_of_memory(monkeypatch):
  w = bench.workloads("bert-base-mlm-s128", smoke=True)[0]
  tried = []

  def fake_run(w, steps, warmup, overrides):
    tried.append(w.batch)
    if w.batch > 40:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB")
    return {"tokens_per_sec": 100.0 * w.batch, "peak_memory_gb": w.batch / 10}
  monkeypatch.setattr(bench, "run_ours", fake_run)
  assert bench.largest_batch(w, 2, 1, {}) == {
      "max_batch": 32, "max_batch_tokens_per_sec": 3200.0, "max_batch_peak_memory_gb": 3.2}
  assert tried == [8, 16, 32, 64]

  def broken(*_):
    raise ValueError("a real bug")
  monkeypatch.setattr(bench, "run_ours", broken)
  with pytest.raises(ValueError, match="a real bug"):
    bench.largest_batch(w, 2, 1, {})
