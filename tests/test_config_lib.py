"""Config arguments (`--config=FILE.py:ARGS`) are parsed strictly, by every config file: a
lenient parse read 'runlocal=maybe' as false and started a full-size run (issue 27). Through the
command line: tests/test_cli_errors.py (BAD_INPUTS)."""
import glob
import os

import pytest

from conftest import REPO
from research import config_lib
from research.errors import UserError

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")) +
                      glob.glob(os.path.join(REPO, "experiments", "*", "configs", "*.py")))


@pytest.mark.parametrize("arg, expected", [
    ("runlocal", True), ("runlocal=true", True), ("runlocal=YES", True), ("runlocal=1", True),
    ("runlocal=False", False), ("runlocal=no", False), ("runlocal=0", False), ("", False),
])
def test_bool_arguments_accept_these_spellings(arg, expected):
  assert config_lib.parse_arg(arg, runlocal=False, size="base").runlocal is expected


@pytest.mark.parametrize("arg, line", [
    ("runlocal=maybe", "config argument runlocal='maybe' is not a bool: use true, 1, yes, false, "
                       "0, no (any case), or runlocal alone for true"),
    ("runlocal=", "config argument runlocal='' is not a bool: use true, 1, yes, false, 0, no "
                  "(any case), or runlocal alone for true"),
    ("size", "config argument 'size' needs a value: size=..."),
    ("steps=3.5", "config argument steps='3.5' is not a int"),
    ("stpes=3", "unknown config argument 'stpes'; known: ['runlocal', 'size', 'steps']"),
])
def test_anything_else_is_refused_in_one_line(arg, line):
  with pytest.raises(UserError) as e:
    config_lib.parse_arg(arg, runlocal=False, size="base", steps=1)
  assert str(e.value) == line


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, REPO))
def test_every_config_file_parses_its_argument_strictly(path):
  """Each `get_config(arg)` goes through `parse_arg`: an unknown name is refused, and so is a
  bool argument that is not one of the accepted spellings."""
  name = os.path.relpath(path, REPO)
  with pytest.raises(UserError, match="^unknown config argument 'nope'; known: "):
    config_lib.load_config_file(name, "nope=1")
  with pytest.raises(UserError) as e:
    config_lib.load_config_file(name, "runlocal=maybe")
  assert ("not a bool" in str(e.value) or "unknown config argument 'runlocal'" in str(e.value))
