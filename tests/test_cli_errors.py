"""Bad input: one line on stderr, exit code 2, and nothing already written is touched."""
import hashlib
import json
import os
import shutil

import pytest

from conftest import run_cli

TINY = ["--config.train.steps=4", "--config.train.batch_size=8", "--config.data.vocab_size=1024",
        "--config.data.seq_len=32", "--config.evals.batches=1", "--config.ckpt.every_steps=2",
        "--config.logging.progress=False", "--config.logging.tensorboard=False"]


def _fails_with(proc, *fragments):
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert lines[-1].startswith("error: "), proc.stderr[-3000:]
  errors = [l for l in lines if l.startswith("error")]
  assert len(errors) == 1
  for fragment in fragments:
    assert fragment.lower() in lines[-1].lower(), lines[-1]
  return lines[-1]


def _tree_digest(root):
  digest = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        digest[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return digest


@pytest.mark.parametrize("flag, fragments", [
    ("--config.train.stpes=3", ("stpes", 'did you mean "steps"')),
    ("--config.train.steps=abc", ("train.steps",)),
    ("--config.mesh.tensor=3", ("mesh", "'tensor': 3", "1 device")),
    ("--config.data.source=/no/such/corpus.txt", ("no file matches", "/no/such/corpus.txt")),
    ("--config.model.kind=decoder", ("trains a encoder",)),
    ("--config.train.dropout_prng=philox", ("train.dropout_prng", "'philox'", "rbg")),
    ("--config.train.nonfinite=ignore",
     ("train.nonfinite must be one of stop, skip, got 'ignore'",)),
    ("--config.train.max_consecutive_skips=0",
     ("train.max_consecutive_skips must be >= 1, got 0",)),
    ("--config.trian.steps=3", ("--config.trian.steps", "'trian'", 'did you mean "train"')),
    ("--config.init.from=/some/run", ("--config.init.from was renamed",
                                      "use --config.init.weights")),
    ("--config.logging.wandb.mode=cloud",
     ("logging.wandb.mode must be one of disabled, offline, online, got 'cloud'",)),
])
def test_bad_flags(tmp_path, flag, fragments):
  _fails_with(run_cli("--config=configs/mlm.py:runlocal", f"--workdir={tmp_path}/w", flag),
              *fragments)


def test_a_path_pattern_that_names_no_parameter(tmp_path):
  # In the scanned layout the blocks are one stacked array: a per-block pattern names nothing,
  # and would silently freeze every parameter.
  proc = run_cli("--config=configs/mlm.py:runlocal", f"--workdir={tmp_path}/w", *TINY,
                 "--config.model.scan_layers=True", "--config.optim.trainable=('^backbone/layer_1/',)")
  _fails_with(proc, "optim.trainable pattern '^backbone/layer_1/' matches no parameter",
              "model.scan_layers=True", "backbone/layers/")
  assert not os.path.exists(tmp_path / "w")


def test_bad_config_argument(tmp_path):
  _fails_with(run_cli("--config=configs/mlm.py:size=huge", f"--workdir={tmp_path}/w"), "huge")


def test_bad_config_file(tmp_path):
  _fails_with(run_cli("--config=configs/nope.py", f"--workdir={tmp_path}/w"),
              "no such config file 'configs/nope.py'")
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(arg=None):\n  return dict(steps=3\n")
  _fails_with(run_cli(f"--config={broken}:runlocal", f"--workdir={tmp_path}/w"),
              f"{broken}:2", "syntax error")
  assert not (tmp_path / "w").exists()


def _random_bytes(n):
  return bytes(range(256)) * (n // 256)  # NULs and bytes that are not UTF-8


def test_binary_and_malformed_data_files(tmp_path):
  binary = tmp_path / "corpus.txt"
  binary.write_bytes(_random_bytes(4096))
  _fails_with(run_cli("--config=configs/mlm.py:runlocal", f"--workdir={tmp_path}/w",
                      f"--config.data.source={binary}"), str(binary), "looks binary, not text")
  rows = tmp_path / "corpus.jsonl"
  rows.write_text('{"text": "fine"}\n\n{"text": "missing quote}\n{"text": "fine"}\n')
  _fails_with(run_cli("--config=configs/mlm.py:runlocal", f"--workdir={tmp_path}/w",
                      f"--config.data.source={rows}"), f"{rows}:3:", "not valid JSON")
  good = tmp_path / "good.jsonl"
  good.write_text("".join(f'{{"text": "row {i}", "label": "{i % 2}"}}\n' for i in range(8)))
  _fails_with(run_cli(f"--config=configs/finetune.py:task=local,runlocal,train={good},eval={rows}",
                      f"--workdir={tmp_path}/w"), f"{rows}:3:", "not valid JSON")
  assert _tree_digest(tmp_path / "w") == {}  # no file written (the trainer makes empty folders)


def test_garbage_tokenizer_json(tmp_path):
  garbage = tmp_path / "tokenizer.json"
  garbage.write_text('{"version": "1.0", "model": ')
  _fails_with(run_cli("--config=configs/mlm.py:runlocal", f"--workdir={tmp_path}/w", *TINY,
                      f"--config.data.tokenizer={garbage}"),
              str(garbage), "not a tokenizer.json")
  workdir = tmp_path / "saved"  # the tokenizer a run saved, damaged
  workdir.mkdir()
  (workdir / "tokenizer.json").write_bytes(_random_bytes(1024))
  before = _tree_digest(workdir)
  _fails_with(run_cli("--config=configs/mlm.py:runlocal", f"--workdir={workdir}", *TINY),
              str(workdir / "tokenizer.json"), "not a tokenizer.json")
  assert _tree_digest(workdir) == before


def test_batch_not_divisible_by_data_parallel_size(tmp_path):
  proc = run_cli("--config=configs/mlm.py:runlocal", f"--workdir={tmp_path}/w",
                 "--config.train.batch_size=12",
                 env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  _fails_with(proc, "batch_size (12)", "data-parallel size")


def test_mesh_that_cannot_split_the_heads(tmp_path):
  # The runlocal model's 2 attention heads over tensor=8 (jax alone: an IndivisibleError traceback).
  proc = run_cli("--config=configs/mlm.py:runlocal", f"--workdir={tmp_path}/w", *TINY,
                 "--config.mesh.data=1", "--config.mesh.tensor=8",
                 env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  _fails_with(proc, "cannot split backbone/layer_0/attention/", "over tensor (8 ways)")
  assert not os.path.exists(tmp_path / "w")  # refused in resolve, before the first write


def test_empty_dataset(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n\n")
  _fails_with(run_cli("--config=configs/mlm.py:runlocal", f"--workdir={tmp_path}/w",
                      f"--config.data.source={empty}"), "no non-empty documents")


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  _fails_with(run_cli("--config=configs/mlm.py:runlocal", f"--workdir={blocker}/w"),
              "cannot write to workdir")


@pytest.mark.slow
def test_checkpoint_of_a_different_model_is_refused_and_kept(tmp_path):
  workdir = str(tmp_path / "w")
  first = run_cli("--config=configs/mlm.py:runlocal", f"--workdir={workdir}", *TINY)
  assert first.returncode == 0, first.stderr[-3000:]
  before = _tree_digest(workdir)
  assert any(k.startswith("checkpoints/4/") for k in before)
  proc = run_cli("--config=configs/mlm.py:runlocal", f"--workdir={workdir}", *TINY,
                 "--config.model.hidden_size=64", "--config.train.steps=8")
  _fails_with(proc, "different model", "hidden_size=128")
  assert _tree_digest(workdir) == before


def test_verbose_shows_the_traceback(tmp_path):
  proc = run_cli("--config=configs/mlm.py:runlocal", f"--workdir={tmp_path}/w", "--verbose",
                 "--config.data.source=/no/such/corpus.txt")
  assert proc.returncode != 0
  assert "Traceback" in proc.stderr


@pytest.fixture(scope="module")
def finished_workdir(tmp_path_factory):
  """A tiny successful run's workdir (checkpoints, tokenizer, metrics), made once."""
  root = tmp_path_factory.mktemp("existing")
  (root / "binary.txt").write_bytes(_random_bytes(2048))
  (root / "tokenizer.json").write_text("not json at all")
  first = run_cli("--config=configs/mlm.py:runlocal", f"--workdir={root}/w", *TINY)
  assert first.returncode == 0, first.stderr[-3000:]
  return root


# Each bad input against a finished run's workdir: one line, exit 2, every file byte-identical.
BAD_INPUTS = [
    ("--config.objective.mask_rate=0", ("objective.mask_rate", "(0, 1]", "got 0")),
    ("--config.objective.mask_rate=1.5", ("objective.mask_rate", "(0, 1]", "got 1.5")),
    ("--config.optim.learning_rate=-1", ("optim.learning_rate", ">= 0", "got -1")),
    ("--config.model.dropout_rate=2.0", ("model.dropout_rate", "[0, 1)", "got 2.0")),
    ("--config.schedule.decay=bogus", ("schedule.decay", "linear, cosine, constant", "'bogus'")),
    ("--config.trian.steps=3", ('did you mean "train"',)),
    ("--config.train.steps=abc", ("train.steps", "abc")),
    ("--config.mesh.tensor=3", ("mesh", "1 device")),
    ("--config.model.hidden_size=64", ("different model", "hidden_size=128")),
    ("--config.data.source={root}/binary.txt", ("binary.txt", "looks binary")),
    ("--config.data.tokenizer={root}/tokenizer.json", ("tokenizer.json", "not a tokenizer.json")),
    ("--config.optim.no_decay=('[',)", ("bad regex '['",)),
    # Resuming with a changed config (not a run-length field) names what differs.
    ("--config.train.seed=9", ("different config", "train.seed: 0 -> 9", "new --workdir")),
    # A lenient parse read 'maybe' as false: a full-size run (issue 27).
    ("--config=configs/mlm.py:runlocal=maybe",
     ("error: config argument runlocal='maybe' is not a bool: use true, 1, yes, false, 0, no "
      "(any case), or runlocal alone for true",)),
    # Once an overflow in the first jitted step, after config.json and the tokenizer were written.
    ("--config.train.steps=100000000000000000000",
     ("error: train.steps must be <= 2147483647 (the step counter is int32), got "
      "100000000000000000000",)),
]


@pytest.mark.parametrize("flag, fragments", BAD_INPUTS, ids=[f for f, _ in BAD_INPUTS])
def test_bad_input_leaves_an_existing_workdir_untouched(finished_workdir, flag, fragments):
  workdir = finished_workdir / "w"
  before = _tree_digest(workdir)
  assert any(k.startswith("checkpoints/4/") for k in before) and "tokenizer.json" in before
  proc = run_cli("--config=configs/mlm.py:runlocal", f"--workdir={workdir}", *TINY,
                 flag.format(root=finished_workdir))
  _fails_with(proc, *fragments)
  assert _tree_digest(workdir) == before


def test_a_swapped_tokenizer_is_refused_on_resume(finished_workdir, tmp_path):
  """Another valid tokenizer.json in the workdir (here two ids swapped) would resume training with
  ids that mean other tokens: the checkpoint's fingerprint of its tokenizer refuses it."""
  workdir = tmp_path / "w"
  shutil.copytree(finished_workdir / "w", workdir)
  spec = json.loads((workdir / "tokenizer.json").read_text())
  vocab = spec["model"]["vocab"]
  a, b = list(vocab)[200:202]
  vocab[a], vocab[b] = vocab[b], vocab[a]
  (workdir / "tokenizer.json").write_text(json.dumps(spec))
  before = _tree_digest(workdir)
  line = _fails_with(run_cli("--config=configs/mlm.py:runlocal", f"--workdir={workdir}", *TINY,
                             "--config.train.steps=8"))
  assert line == (f"error: workdir '{workdir}' holds a checkpoint trained with another tokenizer: "
                  f"'{workdir}/tokenizer.json' differs from the tokenizer checkpoint 4 was trained "
                  "with. Restore that tokenizer.json, or use a new --workdir")
  assert _tree_digest(workdir) == before


def test_nan_in_a_continual_penalty_is_refused(tmp_path):
  # NaN passed the `strength <= 0` refusal: EWC trained with a NaN penalty.
  line = _fails_with(run_cli("--config=configs/continual.py:runlocal,method=ewc",
                             f"--workdir={tmp_path}/w", "--config.continual.ewc.strength=nan"))
  assert line == "error: continual.ewc.strength must be a finite number, got nan"
  assert not (tmp_path / "w").exists()


def test_fine_tuning_labels_of_two_types_are_refused(tmp_path):
  """1 and '1' were two classes, both named '1' in labels.json (the other label checks:
  tests/test_classification.py)."""
  train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
  train_file.write_text("".join(json.dumps({"text": f"row {i}", "label": label}) + "\n"
                                for i, label in enumerate([1, "1", "pos", 1] * 2)))
  eval_file.write_text("".join(json.dumps({"text": f"row {i}", "label": "pos"}) + "\n"
                               for i in range(4)))
  line = _fails_with(run_cli(f"--config=configs/finetune.py:task=local,runlocal,"
                             f"train={train_file},eval={eval_file}", f"--workdir={tmp_path}/w"))
  assert line == ("error: task 'local', train split: labels mix integers and text (row 1: 1, "
                  "row 2: '1'); write every label the same way")
  assert _tree_digest(tmp_path / "w") == {}
