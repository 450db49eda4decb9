"""Distillation's loss terms: soft targets (temperature-scaled KL), hidden-state and attention
matching.

The train step computes the frozen teacher's outputs in the same jitted step and puts them into
the batch under `TEACHER` (research/train/step.py), so these objectives read them like labels:
  soft_targets(o, T)   T^2 KL(softmax(teacher / T) || softmax(student / T)) at the predictions
                       of the task objective `o` (its `predictions`: the same logits, the same
                       weights, the same count), so the term is a per-prediction mean like o's
  hidden_states()      squared error, averaged over the hidden axis, between each student
                       block's output and the teacher block the layer map pairs it with
                       (batch['teacher'][layers.BLOCK_OUTPUTS], already picked), summed over
                       the blocks; a mean over real tokens
  attentions()         KL(teacher || student) of the attention distributions of each query
                       token, averaged over heads, summed over the paired blocks (MiniLM /
                       TinyBERT's attention transfer); a mean over real tokens
`with_distillation(objectives, distill)` is a task's objectives with the hard-label terms
weighted by `distill.hard_weight` and these added; a weight of 0 adds no term at all, so with
soft_weight = hidden_weight = attention_weight = 0 and hard_weight = 1 the loss is the task's
own, exactly.
"""
import dataclasses

import jax
import jax.numpy as jnp

from research.models import layers
from research.objectives.base import Objective, row_weights

TEACHER = "teacher"  # the batch key of the teacher's outputs


def kl_sums(student_logits, teacher_logits, weights, temperature: float) -> dict:
  """{'loss': sum of weights x T^2 KL(softmax(teacher / T) || softmax(student / T))}."""
  log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  log_teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
  kl = (jnp.exp(log_teacher) * (log_teacher - log_student)).sum(-1)
  return {"loss": temperature ** 2 * (kl * weights).sum()}


def soft_targets(objective: Objective, temperature: float, weight: float) -> Objective:
  def sums(outputs, batch):
    logits, weights = objective.predictions(outputs, batch)
    teacher_logits, _ = objective.predictions(batch[TEACHER], batch)
    return kl_sums(logits, teacher_logits, weights, temperature)
  return Objective(f"{objective.name}_soft", objective.count, sums, weight)


def _tokens(batch):
  mask = batch.get("attention_mask", jnp.ones_like(batch["input_ids"]))
  return row_weights(batch, mask.astype(jnp.float32))


def hidden_states(weight: float) -> Objective:
  def sums(outputs, batch):
    student = outputs[layers.BLOCK_OUTPUTS].astype(jnp.float32)
    teacher = batch[TEACHER][layers.BLOCK_OUTPUTS].astype(jnp.float32)
    errors = jnp.square(student - teacher).mean(-1).sum(1)  # (batch, length)
    return {"loss": (errors * _tokens(batch)).sum()}
  return Objective("hidden", lambda batch: _tokens(batch).sum(), sums, weight)


def attentions(weight: float) -> Objective:
  def sums(outputs, batch):
    student = outputs[layers.ATTENTION]  # (batch, blocks, heads, query, key) log-probabilities
    teacher = batch[TEACHER][layers.ATTENTION]
    kl = (jnp.exp(teacher) * (teacher - student)).sum(-1).mean(2).sum(1)  # (batch, query)
    return {"loss": (kl * _tokens(batch)).sum()}
  return Objective("attention", lambda batch: _tokens(batch).sum(), sums, weight)


def with_distillation(objectives: tuple, distill) -> tuple:
  """`objectives` (a task's) weighted by `distill.hard_weight`, plus the soft-target term of each
  (soft_weight > 0), hidden-state (hidden_weight > 0) and attention matching (attention_weight >
  0); `distill` a DistillConfig."""
  terms = [dataclasses.replace(o, weight=o.weight * distill.hard_weight) for o in objectives
           if distill.hard_weight]
  if distill.soft_weight:
    terms += [soft_targets(o, distill.temperature, distill.soft_weight) for o in objectives]
  if distill.hidden_weight:
    terms.append(hidden_states(distill.hidden_weight))
  if distill.attention_weight:
    terms.append(attentions(distill.attention_weight))
  return tuple(terms)
