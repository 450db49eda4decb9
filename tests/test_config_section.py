"""research.config_section: a config section as a typed, checked, frozen dataclass."""
import dataclasses

import ml_collections
import pytest

from research import config_section
from research.compress.distill import DistillConfig
from research.compress.magnitude import PruneConfig
from research.errors import UserError
from research.models.config import ModelConfig
from research.peft.config import PeftConfig


@dataclasses.dataclass(frozen=True)
class Settings:
  rate: float = 0.5
  names: tuple = ()

  def validate(self):
    if not 0 <= self.rate <= 1:
      raise UserError(f"demo.rate must be in [0, 1], got {self.rate}")


@pytest.mark.parametrize("section", [
    ml_collections.ConfigDict({"rate": 0.25, "names": ["a", "b"]}),
    ml_collections.FrozenConfigDict({"rate": 0.25, "names": ["a", "b"]}),
    {"rate": 0.25, "names": ["a", "b"]},
])
def test_a_section_becomes_its_hashable_dataclass(section):
  parsed = config_section.parse(Settings, section, "demo")
  assert parsed == Settings(0.25, ("a", "b"))
  hash(parsed)  # jax.jit holds settings as static arguments: a list would not hash


@pytest.mark.parametrize("section", [None, {}, ml_collections.ConfigDict()])
def test_no_section_gives_the_defaults(section):
  assert config_section.parse(Settings, section, "demo") == Settings()


def test_an_unknown_key_and_a_bad_value_are_one_line_each():
  with pytest.raises(UserError, match=r"^unknown demo config keys \['nmes'\]; known: "
                                      r"\['names', 'rate'\]$"):
    config_section.parse(Settings, {"nmes": ["a"]}, "demo")
  with pytest.raises(UserError, match=r"^demo.rate must be in \[0, 1\], got 2$"):
    config_section.parse(Settings, {"rate": 2}, "demo")


@pytest.mark.parametrize("cls, name, typo", [
    (PeftConfig, "peft", "rnk"), (PruneConfig, "prune", "sparsty"),
    (DistillConfig, "distill", "teachr"), (ModelConfig, "model", "hiden_size")])
def test_every_section_parses_through_it(cls, name, typo):
  """The four sections that once each had their own copy of this code."""
  with pytest.raises(UserError, match=rf"^unknown {name} config keys \['{typo}'\]"):
    cls.from_dict({typo: 1})
