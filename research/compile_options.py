"""XLA compiler options for the steps this codebase compiles: `for_step(kind)`, passed to jax.jit.

Only a CPU target gets any (elsewhere `{}`: TPU and GPU compiles are XLA's defaults). Both were
measured on this repository's 2-core AMD EPYC (AVX-512), MiniLM-L6 (BERT 6 x 384) at 32 x 128,
float32: the set together is `--levers`' `xla_cpu_options` (README "CPU performance",
`python -m research.bench --device=cpu --levers`); each option alone and the alternatives were
timed by compiling one lowered step with each option set and timing them interleaved (5 rounds):

- `xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`, forward-only steps
  (FORWARD: eval, predict, a teacher's outputs). XLA:CPU hands matmuls to a library (YNNPACK) and
  by default fuses each one with the elementwise ops and reductions around it into one library
  call: a post-LN BERT layer's attention output, residual, LayerNorm, MLP and second LayerNorm
  become one call that ran at about half this CPU's matmul rate. One library call per matmul, with
  XLA's own loops for the rest, takes MiniLM's forward from 377 to 304 ms at 32 rows and 813 to
  634 ms at 64. The train step is slower that way (1,413 -> 1,563 ms; dots with elementwise ops
  but no reductions, 1,352 -> 1,419; no library fusions, 1,352 -> 1,485), so TRAIN keeps XLA's.
- `xla_cpu_prefer_vector_width=512` where the host has AVX-512 (XLA's own loops then use the full
  vector width): MiniLM's train step 1,352 -> 1,320 ms, the forward 304 -> 289 ms.

Results change by float round-off only (the same operations, other loop orders): MiniLM's logits
by 2e-7, its train loss after the same steps by 1e-7 (`--levers`); tested: outputs to 1e-5
(tests/test_compile_options.py), losses to 1e-5 relative (tests/test_bench_cpu.py).
"""
import functools

import jax

TRAIN = "train"  # forward, backward and the optimizer update
FORWARD = "forward"  # no gradient: eval steps, predict, a teacher's outputs
KINDS = (TRAIN, FORWARD)


def for_step(kind: str, platform: str | None = None) -> dict:
  """`compiler_options` for a jitted step of `kind` on `platform` (default: where the traced
  computation runs: the set mesh's platform, else jax's default backend)."""
  if kind not in KINDS:
    raise ValueError(f"kind {kind!r} is not one of {KINDS}")
  if (platform or target_platform()) != "cpu":
    return {}
  options = {}
  if kind == FORWARD:
    options["xla_cpu_experimental_ynn_fusion_type"] = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
  if host_has_avx512():
    options["xla_cpu_prefer_vector_width"] = 512
  return options


def target_platform() -> str:
  """Where the traced computation will run: the set mesh's platform, else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  return jax.default_backend() if mesh.empty else mesh.abstract_device.platform


@functools.cache
def host_has_avx512() -> bool:
  """Whether this host's CPU has AVX-512 Foundation (Linux: /proc/cpuinfo; elsewhere False)."""
  try:
    with open("/proc/cpuinfo") as f:
      return any(line.startswith("flags") and " avx512f" in line for line in f)
  except OSError:
    return False
