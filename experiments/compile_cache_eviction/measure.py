r"""What jax's own eviction of its compilation cache costs a process that compiles, against ours.

  python experiments/compile_cache_eviction/measure.py --entries=3300 --programs=60

Fills a scratch folder with `--entries` cache entries (20 KB each, the size of a small program's;
with the '<key>-atime' files jax's eviction keeps), then, in a fresh process per mode, compiles
`--programs` small new programs into it and prints the process's CPU seconds: `jax_lru` is jax
with `jax_compilation_cache_max_size` set (its eviction reads every entry at every write), `ours`
is research.compile_cache.use (jax's eviction off; `trim` once an hour). Results: README.md here.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_integer("entries", 3300, "Entries already in the folder (a test suite's run: 3,300).")
flags.DEFINE_integer("programs", 60, "New programs each process compiles and caches.")
FLAGS = flags.FLAGS

CHILD = r"""
import sys, time
folder, mode, programs = sys.argv[1], sys.argv[2], int(sys.argv[3])
import jax, jax.numpy as jnp
if mode == "jax_lru":
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  jax.config.update("jax_compilation_cache_max_size", 8 * 2**30)
else:
  from research import compile_cache
  compile_cache.use(folder)
start = time.process_time()
for i in range(programs):
  jax.jit(lambda x, i=i: x * i + 1.0)(jnp.ones((i + 1,))).block_until_ready()
print(time.process_time() - start)
"""


def fill(folder: str, entries: int):
  os.makedirs(folder)
  now = time.time_ns()
  for i in range(entries):
    key = f"jit_filler-{i:064x}"
    with open(os.path.join(folder, f"{key}-cache"), "wb") as f:
      f.write(os.urandom(20_000))
    with open(os.path.join(folder, f"{key}-atime"), "wb") as f:
      f.write((now - i).to_bytes(8, "little"))


def main(argv):
  del argv
  root = tempfile.mkdtemp(prefix="eviction-")
  try:
    fill(os.path.join(root, "filled"), FLAGS.entries)
    print(f"{FLAGS.programs} new programs compiled into a folder of {FLAGS.entries} entries: "
          "CPU seconds of the compiling loop")
    for mode in ("jax_lru", "ours", "jax_lru", "ours"):
      folder = os.path.join(root, mode)
      shutil.rmtree(folder, ignore_errors=True)
      shutil.copytree(os.path.join(root, "filled"), folder)
      out = subprocess.run([sys.executable, "-c", CHILD, folder, mode, str(FLAGS.programs)],
                           capture_output=True, text=True, check=True,
                           env=dict(os.environ, JAX_PLATFORMS="cpu"))
      print(f"  {mode:8s} {float(out.stdout.split()[-1]):6.2f} s")
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
