"""research/tasks/pretraining.py: an evaluation pass sums each metric's (sum, count) over the split
and divides once, so batches holding different numbers of predictions weigh by those numbers."""
import jax
import numpy as np

from research import objectives
from research.tasks import EvalContext, PretrainingTask
from test_objectives import log_softmax


def test_eval_loss_is_a_mean_over_predictions_not_over_batches():
  """CLM rows: batch 0 holds 2 documents of 6 tokens (10 predictions); batch 1, the last one,
  one of 3 tokens (2 predictions) and a padding row."""
  rng = np.random.default_rng(0)
  lengths = ((6, 6), (3, 0))
  batches = [{"input_ids": rng.integers(1, 9, (2, 6)).astype(np.int32),
              "attention_mask": (np.arange(6) < np.array(n)[:, None]).astype(np.int32),
              "unigram_top": np.full(2, 4, np.int32)} for n in lengths]
  logits = [rng.normal(size=(2, 6, 9)).astype(np.float32) for _ in batches]
  task = PretrainingTask.__new__(PretrainingTask)  # its evaluation alone: no corpus
  task.objectives, task.splits = (objectives.causal_lm(),), {"eval": ("the split", 2)}
  eval_outputs = jax.jit(task.eval_outputs)
  run = lambda split, steps: [eval_outputs({"lm_logits": x}, b)
                              for x, b in zip(logits[:steps], batches)]
  got = task.evaluate("eval", EvalContext(run=run))
  losses = [-log_softmax(x[r, t])[b["input_ids"][r, t + 1]] for x, b, n in
            zip(logits, batches, lengths) for r in range(2) for t in range(n[r] - 1)]
  assert len(losses) == 12
  np.testing.assert_allclose(got["eval/clm/loss"], np.mean(losses), rtol=1e-5)
  np.testing.assert_allclose(got["eval/clm/perplexity"], np.exp(np.mean(losses)), rtol=1e-5)
  hits = [x[r, t].argmax() == b["input_ids"][r, t + 1] for x, b, n in
          zip(logits, batches, lengths) for r in range(2) for t in range(n[r] - 1)]
  np.testing.assert_allclose(got["eval/clm/accuracy"], np.mean(hits), rtol=1e-6)
