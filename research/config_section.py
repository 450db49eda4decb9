"""A config section as a typed, checked, frozen dataclass: `parse(Settings, config.section, name)`.

A config file writes each section as an `ml_collections.ConfigDict`; the code that uses one reads
it as a frozen dataclass (hashable, so `jax.jit` can hold it; typos caught). `parse` is the one
conversion: unknown keys raise `UserError` naming the section and what it knows, a field whose
default is a tuple gets a tuple (a ConfigDict holds a list), and the dataclass's own `validate()`
checks the values. A missing or empty section gives the defaults.
"""
import dataclasses

import ml_collections

from research.errors import UserError


def as_dict(section) -> dict:
  """A section (ConfigDict, dict or None) as a plain dict (a new one: the caller may change it)."""
  if isinstance(section, ml_collections.ConfigDict):
    return section.to_dict()
  return dict(section or {})


def parse(cls, section, name: str):
  """`section` as a `cls`: a frozen dataclass with a `validate()` method."""
  values = as_dict(section)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise UserError(f"unknown {name} config keys {unknown}; known: {sorted(fields)}")
  for key, value in values.items():
    if isinstance(fields[key].default, tuple) and value is not None:
      values[key] = tuple(value)
  parsed = cls(**values)
  parsed.validate()
  return parsed
