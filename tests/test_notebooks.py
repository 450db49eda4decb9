"""The notebooks of colab/: committed stripped and valid (fast), and executed headless (slow).

  pytest tests/test_notebooks.py              # stripped, valid, badges (a second)
  pytest -m slow tests/test_notebooks.py      # every colab/*.ipynb executed on this machine

The slow case is parametrised over `colab/*.ipynb`, so a new notebook is executed without editing
this file. It runs the notebook with nbclient in a kernel of this Python (a kernelspec written to a
temporary JUPYTER_PATH, so nothing under ~ is read or written), with this checkout's package
first on the kernel's PYTHONPATH; any error fails it. A notebook's cells assert their own claims;
for the notebooks named in CHECKS the test also reads the JSON its last cell prints and checks
the runs it names.
"""
import glob
import json
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(REPO, "colab")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLAB, "*.ipynb")))
SLUG = "research-jax/research"  # the one GitHub slug of the badges and colab/README.md
KERNEL = "research-notebooks"
CELL_TIMEOUT_S = 600


def _names():
  return [os.path.basename(p)[:-len(".ipynb")] for p in NOTEBOOKS]


def _read(name):
  import nbformat  # pylint: disable=g-import-not-at-top
  return nbformat.read(os.path.join(COLAB, f"{name}.ipynb"), as_version=4)


def test_the_issue_s_notebooks_exist():
  assert {"quickstart", "finetune_from_hf", "lora", "generate"} <= set(_names())


@pytest.mark.parametrize("name", _names())
def test_notebook_is_stripped_and_valid(name):
  import nbformat  # pylint: disable=g-import-not-at-top
  nb = _read(name)
  nbformat.validate(nb)
  assert "widgets" not in nb.metadata
  for cell in nb.cells:
    assert "widgets" not in cell.metadata, cell.id
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} has outputs"


@pytest.mark.parametrize("name", _names())
def test_notebook_opens_itself_in_colab(name):
  """The title cell's badge links to this notebook on Colab; an install cell clones that slug."""
  nb = _read(name)
  title = nb.cells[0]
  assert title.cell_type == "markdown" and title.source.startswith("# ")
  links = re.findall(r"https://colab\.research\.google\.com/github/([^)\s]+)", title.source)
  assert links == [f"{SLUG}/blob/main/colab/{name}.ipynb"]
  code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  assert f'REPO = "{SLUG}"' in code
  with open(os.path.join(COLAB, "README.md")) as f:
    readme = f.read()
  assert f"{SLUG}/blob/main/colab/{name}.ipynb" in readme


# ---------------------------------------------------------------------------------------------
# Execution.
# ---------------------------------------------------------------------------------------------
def _kernel_env(tmp_path) -> dict:
  """The environment of the test's kernel: a kernelspec running this Python, Jupyter's and
  IPython's files under tmp_path, this checkout's package first."""
  spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
  spec_dir.mkdir(parents=True)
  with open(spec_dir / "kernel.json", "w") as f:
    json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
               "display_name": "research (tests)", "language": "python"}, f)
  return {"JUPYTER_PATH": str(tmp_path / "jupyter"),
          "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
          "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
          "IPYTHONDIR": str(tmp_path / "ipython"),
          "MPLBACKEND": "module://matplotlib_inline.backend_inline",
          "PYTHONPATH": os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])}


def _last_json(nb) -> dict:
  code = [c for c in nb.cells if c.cell_type == "code"]
  text = "".join(o.get("text", "") for o in code[-1].outputs if o.output_type == "stream")
  return json.loads(text)


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def _majority(workdir):
  with open(os.path.join(workdir, "reports", "test_bbc_news_report.json")) as f:
    support = [row["support"] for row in json.load(f).values()]
  return max(support) / sum(support)


def _beats_majority(workdir, shown):
  """The run's test accuracy (its summary.json) beats always predicting the test split's most
  frequent class, and is the number the notebook showed."""
  accuracy = _summary(workdir)["test/bbc_news/accuracy"]
  assert accuracy == shown
  assert accuracy > _majority(workdir) + 0.1, (accuracy, _majority(workdir))


def check_quickstart(out):
  _beats_majority(out["finetune_workdir"], out["test_accuracy"])
  with open(os.path.join(out["finetune_workdir"], "labels.json")) as f:
    names = json.load(f)["bbc_news"]["names"]
  assert len(out["predicted"]) == 5 and set(out["predicted"]) <= set(names)
  assert len(set(out["predicted"])) >= 2  # not one label for five topics
  losses = [json.loads(line).get("train/loss")
            for line in open(os.path.join(out["pretrain_workdir"], "metrics.jsonl"))]
  losses = [v for v in losses if v is not None]
  assert losses[-1] < losses[0] - 0.5


def check_finetune_from_hf(out):
  _beats_majority(out["workdir"], out["test_accuracy"])
  assert _summary(out["workdir"])["init"].startswith("init.weights hf:")  # from the checkpoint
  assert out["max_logit_diff"] < 1e-4
  assert sorted(os.listdir(out["export"])) == ["config.json", "model.safetensors",
                                               "tokenizer.json"]


def check_lora(out):
  _beats_majority(out["lora_workdir"], out["lora_test_accuracy"])
  _beats_majority(out["full_workdir"], out["full_test_accuracy"])
  lora, full = _summary(out["lora_workdir"]), _summary(out["full_workdir"])
  assert lora["params/trainable"] < 0.01 * lora["params/total"]
  assert full["params/trainable"] == full["params/total"]
  assert out["lora_checkpoint_bytes"] < 0.05 * out["full_checkpoint_bytes"]
  assert out["peft_max_logit_diff"] is not None and out["peft_max_logit_diff"] < 1e-4


def check_generate(out):
  assert len(out["greedy"]) == len(out["prompts"]) and all(t.strip() for t in out["greedy"])
  assert out["streamed"] == out["penalised"][-1]  # the stream is the batch's text
  assert out["penalised"] != out["greedy"]  # the repetition penalty changed something
  assert out["sampled"] != out["greedy"]
  assert len(out["beam"]) == len(out["prompts"]) and all(out["beam"])


CHECKS = {"quickstart": check_quickstart, "finetune_from_hf": check_finetune_from_hf,
          "lora": check_lora, "generate": check_generate}


@pytest.mark.slow
@pytest.mark.parametrize("name", _names())
def test_notebook_runs(name, tmp_path, monkeypatch):
  import nbclient  # pylint: disable=g-import-not-at-top
  env = _kernel_env(tmp_path)
  for key, value in env.items():
    monkeypatch.setenv(key, value)  # read by jupyter_client in this process and by the kernel
  nb = _read(name)
  client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError (the cell, the traceback) on any error
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count for c in code)
  assert not [o for c in code for o in c.outputs if o.output_type == "error"]
  if name in CHECKS:
    CHECKS[name](_last_json(nb))
