"""The README's command, small: both modes compile into a filled folder and print their CPU
seconds, in the order the README's table reads them."""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_the_command_measures_both_modes_twice():
  proc = subprocess.run([sys.executable, os.path.join(HERE, "measure.py"), "--entries=50",
                         "--programs=2"], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[0] == ("2 new programs compiled into a folder of 50 entries: CPU seconds of the "
                      "compiling loop"), lines
  rows = [re.fullmatch(r"  (jax_lru|ours) +(\d+\.\d\d) s", line) for line in lines[1:]]
  assert all(rows) and len(rows) == 4, lines
  assert [r[1] for r in rows] == ["jax_lru", "ours", "jax_lru", "ours"]
  assert all(float(r[2]) > 0 for r in rows)
