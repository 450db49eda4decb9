"""Which backend jax starts where nobody chose: the CPU, quietly, on a machine that has libtpu
installed but no TPU or GPU (`cpu_where_nothing_else`, run when `research` is imported)."""
import glob
import importlib.util
import os
import sys

# jax._src.hardware_utils' TPU test, which cannot be imported without importing jax (and jax
# reads JAX_PLATFORMS when it is imported): Google's PCI vendor id and its TPUs' device ids
# (tests/test_command_errors.py checks these against the installed jax's).
GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")
GPU_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def _read(path: str) -> str:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return ""


def has_tpu() -> bool:
  """Whether a TPU chip may be attached: a PCI device of Google's with a TPU's id, or the device
  files libtpu opens (/dev/accel*, /dev/vfio/N: a container may show those and hide the PCI bus)."""
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    return True
  return any(_read(vendor) == GOOGLE_PCI_VENDOR and
             _read(os.path.join(os.path.dirname(vendor), "device")) in TPU_PCI_DEVICES
             for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"))


def cpu_where_nothing_else():
  """JAX_PLATFORMS=cpu where libtpu is installed but neither a TPU nor a GPU is present, before
  jax is imported.

  Left to choose, jax starts every backend it has a library for, and with libtpu installed (the
  `tpu-aot` and `test` extras) libtpu prints its start-up errors (`E0000 ... TPU_WORKER_HOSTNAMES`)
  on the stderr of every command before it finds no TPU. Where there is no accelerator the CPU is
  all jax could pick, so naming it changes nothing else. A TPU VM, a GPU machine, a JAX_PLATFORMS
  already set (even empty) and a process that imported jax before us are left alone; compiling
  for a TPU topology (`research.tpu`) loads libtpu itself and needs no TPU backend.
  """
  if ("JAX_PLATFORMS" in os.environ or "JAX_FORCE_TPU_INIT" in os.environ
      or "jax" in sys.modules):
    return
  if importlib.util.find_spec("libtpu") is None:  # nothing to silence
    return
  if any(os.path.exists(path) for path in GPU_DEVICE_FILES) or has_tpu():
    return
  os.environ["JAX_PLATFORMS"] = "cpu"
