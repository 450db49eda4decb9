"""An exponential moving average of the trained weights (Polyak averaging), as a training feature.

`config.ema` (every recipe has it, off by default):
  decay   the average's weight on its past at each update, in [0, 1): 0 is off; 0.999 averages
          over about the last 1,000 updates

After each applied update the average becomes  ema = decay * ema + (1 - decay) * params,  starting
from the parameters the run starts from. It is part of the optimizer's state (`EmaState`, a
wrapper around the optimizer of the trained parameters): laid out on the mesh like them, saved in
every checkpoint and restored with it, so a resumed run's average is the uninterrupted run's, bit
for bit; a non-finite step, whose update is dropped, leaves it unchanged. Frozen parameters (PEFT)
are their own average and are not stored twice.

At every evaluation the average is evaluated too, logged as `ema/eval/<task>/<metric>` beside the
raw weights' `eval/...`; at the end the summary has its eval and test metrics (`ema/eval/...`,
`ema/test/...`) and WORKDIR/ema/ holds it as a workdir of its own (config.json, tokenizer,
labels, a step-0 checkpoint), which research.predict, research.convert and `init.weights` read
like any other.
"""
import dataclasses
import json
import os
import shutil
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import config_section
from research import params as params_lib
from research.errors import UserError
from research.train.feature import Feature

FOLDER = "ema"  # WORKDIR/ema: the averaged weights, as a workdir


class EmaState(NamedTuple):
  ema: Any  # the average of the trained parameters
  inner: Any  # the wrapped optimizer's state


def averaged(inner: optax.GradientTransformation, decay: float) -> optax.GradientTransformation:
  """`inner`, plus the average of the parameters its updates produce in its state."""
  def init_fn(params):
    return EmaState(jax.tree.map(jnp.copy, params), inner.init(params))

  def update_fn(updates, state, params):
    updates, inner_state = inner.update(updates, state.inner, params)
    new_params = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema, new_params)
    return updates, EmaState(ema, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def weights(state) -> dict:
  """The averaged parameters of a train state (its frozen parameters as they are)."""
  found = optax.tree_utils.tree_get(state.opt_state, "ema")
  return params_lib.unflatten({**params_lib.flatten(state.params),
                               **params_lib.flatten(found)})


@dataclasses.dataclass(frozen=True)
class EmaSettings:
  decay: float = 0.0

  def validate(self):
    if not 0 <= self.decay < 1:  # written so that NaN, which fails every test, fails
      raise UserError(f"ema.decay must be in [0, 1) (0: off), got {self.decay!r}")


@dataclasses.dataclass(frozen=True)
class Ema(Feature):
  name = "ema"
  settings: EmaSettings

  @classmethod
  def section(cls) -> dict:
    return dataclasses.asdict(EmaSettings())

  @classmethod
  def of_run(cls, config) -> "Ema | None":
    settings = config_section.parse(EmaSettings, config.get("ema"), "ema")
    return cls(settings) if settings.decay else None

  def optimizer(self, tx):
    return averaged(tx, self.settings.decay)

  def evaluated(self, state, evaluate) -> dict:
    return _prefixed(evaluate(weights(state)))

  def finish(self, params, state, workdir: str, evaluate) -> dict:
    """The average's eval and test metrics; WORKDIR/ema/ (process 0 writes it)."""
    averaged_params = weights(state)
    out = {**_prefixed(evaluate(averaged_params)), **_prefixed(evaluate(averaged_params, "test"))}
    if jax.process_index() == 0:
      write(workdir, jax.device_get(averaged_params), int(state.step))
    return {**out, "ema/step": int(state.step)}


def _prefixed(metrics: dict) -> dict:
  return {f"ema/{k}": v for k, v in metrics.items()}


def write(workdir: str, params, step: int):
  """WORKDIR/ema/ as a workdir of the run's model holding `params`, replaced whole (a rerun of a
  finished run writes it again, never a mix)."""
  from research.compress import output  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  final, partial = os.path.join(workdir, FOLDER), os.path.join(workdir, FOLDER + ".partial")
  shutil.rmtree(partial, ignore_errors=True)
  output.write(partial, workdir, jax.tree.map(np.asarray, params), config)
  with open(os.path.join(partial, "ema.json"), "w") as f:
    json.dump({"step": step, "decay": config["ema"]["decay"]}, f)
  shutil.rmtree(final, ignore_errors=True)
  os.replace(partial, final)
