"""research/compile_options.py: XLA:CPU options per step kind; they change the library fusions,
not the results."""
import re

import jax
import numpy as np
import pytest

from research import bench_cpu, compile_options, models
from research.train.step import apply_model


def test_only_a_cpu_target_gets_options():
  for kind in compile_options.KINDS:
    assert compile_options.for_step(kind, "tpu") == {}
    assert compile_options.for_step(kind, "gpu") == {}
  forward = compile_options.for_step(compile_options.FORWARD, "cpu")
  train = compile_options.for_step(compile_options.TRAIN, "cpu")
  assert forward["xla_cpu_experimental_ynn_fusion_type"] == "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
  assert "xla_cpu_experimental_ynn_fusion_type" not in train  # the train step keeps XLA's fusions
  for options in (forward, train):
    assert ("xla_cpu_prefer_vector_width" in options) == compile_options.host_has_avx512()
  with pytest.raises(ValueError, match="kind 'backward' is not one of"):
    compile_options.for_step("backward", "cpu")


def library_calls(compiled) -> list:
  """(dots, reduces) in each YNN library fusion of a compiled CPU program."""
  text = compiled.as_text()
  bodies = {m.group(1): m.group(2)
            for m in re.finditer(r"\n%?([\w.]+) [^\n]*\{\n(.*?)\n\}", text, re.S)}
  called = re.findall(r"calls=%([\w.]+), metadata=\{[^}]*\}, backend_config=\{\"fusion_config\":"
                      r"\{\"kind\":\"__ynn_fusion\"", text)
  return [(len(re.findall(r" dot\(", bodies[n])), len(re.findall(r" reduce\(", bodies[n])))
          for n in called]


def test_forward_options_give_one_library_call_per_matmul_and_the_same_outputs():
  config = bench_cpu.run_config(bench_cpu.WORKLOADS["runlocal-encoder"])
  model = models.build(models.ModelConfig.of_run(config))
  batch = bench_cpu.batch_of(config, 4)
  params = jax.jit(lambda key: model.init(key, batch["input_ids"],
                                          masked_positions=batch["masked_positions"])["params"]
                   )(jax.random.key(0))
  forward = lambda p, b: apply_model(model, p, b)["hidden"]
  default = jax.jit(forward).lower(params, batch).compile()
  ours = jax.jit(forward, compiler_options=compile_options.for_step(
      compile_options.FORWARD, "cpu")).lower(params, batch).compile()
  # XLA's default fuses reductions (LayerNorm's) into library calls; ours: one matmul per call.
  assert any(reduces for _, reduces in library_calls(default))
  calls = library_calls(ours)
  assert calls and all(call == (1, 0) for call in calls), calls
  np.testing.assert_allclose(ours(params, batch), default(params, batch), rtol=1e-5, atol=1e-6)
