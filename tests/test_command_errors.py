"""Bad input to the commands other than training (predict, generate, compress, convert, prepare):
one line on stderr, exit code 2, before any model is compiled, and nothing touched: every file
under the test's directory byte-identical afterwards and none added. And no libtpu start-up
errors on a machine without a TPU."""
import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest

from conftest import REPO
from test_cli_errors import _tree_digest

TEXT = "Shares fell as the bank cut its profit forecast\n"
BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"  # NUL bytes: not text
LATIN1 = "caf\xe9 cr\xe8me\n".encode("latin-1")  # text, but not UTF-8


def _command(module, *args, env=None, stdin=""):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                        text=True, input=stdin, timeout=300, env=dict(os.environ, **(env or {})))


def _refused(root, module, args, line, **kwargs):
  """Runs the command; asserts exactly `line` on stderr, exit code 2, and `root` untouched."""
  before = _tree_digest(root)
  proc = _command(module, *args, **kwargs)
  assert (proc.returncode, proc.stderr.strip().splitlines()) == (2, [line]), proc.stderr[-3000:]
  assert proc.stdout == ""
  assert _tree_digest(root) == before


@pytest.fixture
def files(tmp_path):
  """A directory of inputs: text, empty, blank, binary, latin-1, a plain file, a sub-directory."""
  (tmp_path / "in.txt").write_text(TEXT)
  (tmp_path / "out.jsonl").write_text('{"an": "earlier output"}\n')
  (tmp_path / "empty.txt").write_text("")
  (tmp_path / "blank.txt").write_text("\n  \n\n")
  (tmp_path / "binary.bin").write_bytes(BINARY)
  (tmp_path / "latin1.txt").write_bytes(LATIN1)
  (tmp_path / "a_file").write_text("not a directory\n")
  (tmp_path / "a_dir").mkdir()
  return tmp_path


# ---------------------------------------------------------------------------------------------
# research.predict: every check runs before the model loads (the workdir here has no weights).
# ---------------------------------------------------------------------------------------------
PREDICT_CASES = [
    (["--input={d}/in.txt", "--output={d}/in.txt"],
     "error: --output '{d}/in.txt' is the --input file: writing it would erase the input; give "
     "another --output"),
    (["--input={d}/a_dir", "--output={d}/out.jsonl"],
     "error: --input '{d}/a_dir' is a directory, not a file"),
    (["--input={d}/binary.bin"],
     "error: --input '{d}/binary.bin' looks binary, not text (it has NUL bytes); expected JSON "
     "Lines or UTF-8 text"),
    (["--input={d}/latin1.txt"],
     "error: --input '{d}/latin1.txt' is not UTF-8 text (byte 3: invalid continuation byte); "
     "expected JSON Lines or UTF-8 text"),
    (["--input={d}/in.txt", "--output={d}/a_dir"],
     "error: --output '{d}/a_dir' is a directory; give a file to write"),
    (["--input={d}/in.txt", "--output={d}/nowhere/out.jsonl"],
     "error: --output '{d}/nowhere/out.jsonl': no such directory '{d}/nowhere'"),
    (["--input={d}/empty.txt", "--output={d}/out.jsonl"],
     "error: --input '{d}/empty.txt' holds no rows (it is empty or blank lines only): nothing to "
     "predict"),
    (["--input={d}/blank.txt"],
     "error: --input '{d}/blank.txt' holds no rows (it is empty or blank lines only): nothing to "
     "predict"),
    (["--input=-"],
     "error: stdin holds no rows (it is empty or blank lines only): nothing to predict"),
    (["--input={d}/in.txt", "--batch_size=0"],
     "error: bad flags: flag --batch_size=0: 0 is not a positive integer"),
]


@pytest.mark.parametrize("args, line", PREDICT_CASES, ids=[
    "output_is_input", "input_dir", "input_binary", "input_latin1", "output_dir",
    "output_in_no_dir", "input_empty", "input_blank", "stdin_empty", "batch_size_0"])
def test_predict_bad_input(files, args, line):
  workdir = files / "run"
  workdir.mkdir()
  for name in ("config.json", "tokenizer.json", "labels.json"):
    (workdir / name).write_text("{}")  # the checks below come first: never read
  d = str(files)
  _refused(files, "research.predict",
           [f"--workdir={workdir}", "--progress=false"] + [a.format(d=d) for a in args],
           line.format(d=d))


def test_output_is_replaced_only_when_done(tmp_path):
  """What a command writes to --output appears there at the end; an error on the way leaves an
  earlier file as it was and no temporary file behind."""
  from research import files as files_lib  # pylint: disable=g-import-not-at-top
  out = tmp_path / "out.jsonl"
  out.write_text("earlier\n")
  with pytest.raises(KeyError):
    with files_lib.written_when_done(str(out)) as sink:
      sink.write("half\n")
      raise KeyError("text")
  assert out.read_text() == "earlier\n" and os.listdir(tmp_path) == ["out.jsonl"]
  with files_lib.written_when_done(str(out)) as sink:
    sink.write("new\n")
    assert out.read_text() == "earlier\n"
  assert out.read_text() == "new\n" and os.listdir(tmp_path) == ["out.jsonl"]


# ---------------------------------------------------------------------------------------------
# research.generate: before the weights load (the workdir has config.json and tokenizer.json).
# Its files go through the checks above (`research.files`): one case of each kind here, as each
# of these costs the import of jax.
# ---------------------------------------------------------------------------------------------
GENERATE_CASES = [
    (["--input={d}/in.txt", "--output={d}/in.txt"],
     "error: --output '{d}/in.txt' is the --input file: writing it would erase the input; give "
     "another --output"),
    (["--input={d}/a_dir"], "error: --input '{d}/a_dir' is a directory, not a file"),
    (["--input={d}/binary.bin"],
     "error: --input '{d}/binary.bin' looks binary, not text (it has NUL bytes); expected JSON "
     "Lines or UTF-8 text"),
    (["--input={d}/empty.txt", "--output={d}/out.jsonl"],
     "error: --input '{d}/empty.txt' holds no prompts (it is empty or blank lines only): nothing "
     "to generate"),
    (["--input={d}/in.txt", "--batch_size=0"],
     "error: bad flags: flag --batch_size=0: 0 is not a positive integer"),
    (["--prompt=The market", "--mesh=2,1,1"],  # was ignored on one device
     "error: mesh {{'data': 2, 'fsdp': 1, 'tensor': 1}} needs 2 devices, but 1 are available"),
]


@pytest.mark.parametrize("args, line", GENERATE_CASES, ids=[
    "output_is_input", "input_dir", "input_binary", "input_empty", "batch_size_0", "mesh"])
def test_generate_bad_input(files, args, line):
  from test_generate import _fake_workdir  # pylint: disable=g-import-not-at-top
  workdir = _fake_workdir(files / "run", "decoder")
  d = str(files)
  _refused(files, "research.generate",
           [f"--workdir={workdir}", "--progress=false"] + [a.format(d=d) for a in args],
           line.format(d=d))


# ---------------------------------------------------------------------------------------------
# research.compress and research.data.prepare: the directory they write.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, line", [
    (["--method=nope", "--out={d}/small"],
     "error: bad flags: flag --method=nope: value should be one of <distill|prune|quantize>"),
    (["--method=distill", "--distill_layers=0", "--out={d}/small"],
     "error: bad flags: flag --distill_layers=0: 0 is not a positive integer"),
    (["--method=distill", "--out={d}/a_file"],  # checked before any method: distill's too
     "error: --out '{d}/a_file' is a file, not a directory"),
], ids=["method", "distill_layers", "out_file"])
def test_compress_bad_input(files, args, line):
  d = str(files)
  _refused(files, "research.compress", [f"--workdir={d}/a_dir"] + [a.format(d=d) for a in args],
           line.format(d=d))


@pytest.mark.parametrize("args, line", [
    (["--config.data.source={d}/blank.txt", "--output={d}/rows"],
     "error: data source '{d}/blank.txt' gave no non-empty documents for the train split"),
    (["--output={d}/a_file"], "error: --output '{d}/a_file' is a file, not a directory"),
], ids=["empty_corpus", "output_file"])
def test_prepare_bad_input(files, args, line):
  d = str(files)
  _refused(files, "research.data.prepare",
           ["--config=configs/mlm.py:runlocal", "--progress=false"] + [a.format(d=d) for a in args],
           line.format(d=d))


# ---------------------------------------------------------------------------------------------
# research.convert: the target directory, and a hub name the hub cannot give.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, line", [
    (["--from={d}/run", "--to_hf={d}/run"],
     "error: --to_hf '{d}/run' is the directory converted from: writing there would replace its "
     "files; give another directory"),
    (["--from={d}/run", "--to_hf={d}/run", "--overwrite"],
     "error: --to_hf '{d}/run' is the directory converted from: writing there would replace its "
     "files; give another directory"),
    (["--from={d}/run", "--to_hf_peft={d}/run"],
     "error: --to_hf_peft '{d}/run' is the directory converted from: writing there would replace "
     "its files; give another directory"),
    (["--from={d}/run", "--to_hf={d}/export"],
     "error: --to_hf '{d}/export' exists and is not empty: give a new directory, or pass "
     "--overwrite to replace an earlier export there"),
    (["--from={d}/run", "--to_hf_peft={d}/export"],
     "error: --to_hf_peft '{d}/export' exists and is not empty: give a new directory, or pass "
     "--overwrite to replace an earlier export there"),
    (["--from={d}/run", "--to_hf={d}/a_file"],
     "error: --to_hf '{d}/a_file' is a file, not a directory"),
    (["--from_hf={d}/export", "--to={d}/run"],
     "error: --to '{d}/run' exists and is not empty: give a new directory"),
], ids=["to_hf_is_from", "overwrite_is_from", "peft_is_from", "to_hf_not_empty",
        "peft_not_empty", "to_hf_file", "to_not_empty"])
def test_convert_bad_target(files, args, line):
  for name, files_in in (("run", ("config.json", "labels.json")),
                         ("export", ("config.json", "model.safetensors"))):
    (files / name).mkdir()
    for file_name in files_in:
      (files / name / file_name).write_text("{}")
  d = str(files)
  _refused(files, "research.convert", [a.format(d=d) for a in args], line.format(d=d))


class _Hub(http.server.BaseHTTPRequestHandler):
  """A Hugging Face hub that answers every request with the server's `status`."""

  def do_GET(self):  # pylint: disable=invalid-name
    self.send_response(self.server.status)
    if self.server.status == 401:  # what the hub says of a name it does not know
      self.send_header("X-Error-Code", "RepoNotFound")
    self.send_header("Content-Length", "2")
    self.end_headers()
    self.wfile.write(b"{}")

  do_HEAD = do_GET

  def log_message(self, *args):  # pylint: disable=arguments-differ
    del args


@pytest.fixture
def hub(request):
  """(the endpoint of a local hub answering `request.param`, or of a port nothing listens on)."""
  if request.param is None:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]  # closed again: connections are refused
    yield f"http://127.0.0.1:{port}"
    return
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
  server.status = request.param
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()


@pytest.mark.parametrize("hub, cause", [
    (None, "ConnectError [Errno 111] Connection refused"),
    (503, "HfHubHTTPError Server error '503 Service Unavailable' for url "
          "'{hub}/api/models/nobody/no-such-model'"),
], indirect=["hub"], ids=["refused", "503"])
def test_unreachable_hub_name_is_one_line_at_once(files, hub, cause):
  """Where the hub cannot give the name (no network, a proxy, the hub down), one line names it
  and how to use a local directory, at once: no retries with back-off (the command's whole run,
  imports included, stays under 10 s)."""
  import time  # pylint: disable=g-import-not-at-top
  start = time.time()
  _refused(files, "research.convert", ["--from_hf=nobody/no-such-model", f"--to={files}/ours"],
           "error: 'nobody/no-such-model' is not a local directory nor in the local Hugging Face "
           f"cache, and could not be downloaded (the hub at {hub} did not answer: "
           f"{cause.format(hub=hub)}); download it where the hub can be reached (huggingface-cli "
           "download nobody/no-such-model --local-dir DIR) and pass DIR",
           env={"HF_ENDPOINT": hub, "HF_HUB_CACHE": str(files / "a_dir")})
  assert time.time() - start < 10


@pytest.mark.parametrize("hub", [401], indirect=True)
def test_unknown_hub_name_is_one_line(files, hub):
  _refused(files, "research.convert", ["--from_hf=nobody/no-such-model", f"--to={files}/ours"],
           "error: 'nobody/no-such-model' is not a local directory, and the Hugging Face hub has "
           "no model of that name that we may read; check the name, or pass a local directory",
           env={"HF_ENDPOINT": hub, "HF_HUB_CACHE": str(files / "a_dir")})


# ---------------------------------------------------------------------------------------------
# libtpu installed, no TPU: no start-up errors on stderr.
# ---------------------------------------------------------------------------------------------
def test_tpu_device_ids_are_jax_own():
  """research/platforms.py tells a TPU by jax's PCI ids, copied: importing jax there would be
  too early (jax reads JAX_PLATFORMS when it is imported)."""
  # pylint: disable=protected-access
  from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
  from research import platforms  # pylint: disable=g-import-not-at-top
  assert set(platforms.TPU_PCI_DEVICES) == set(hardware_utils._TPU_PCI_DEVICE_IDS)
  assert platforms.GOOGLE_PCI_VENDOR == hardware_utils._GOOGLE_PCI_VENDOR_ID


def test_no_libtpu_start_up_errors_without_a_tpu(tmp_path):
  """A command that starts jax's backends (the README's mesh row), as a user runs it: no
  JAX_PLATFORMS. ALLOW_MULTIPLE_LIBTPU_LOAD makes libtpu start even while another process holds
  its lock file, so that its errors would show here."""
  pytest.importorskip("libtpu", reason="the errors come from libtpu")
  from research import platforms  # pylint: disable=g-import-not-at-top
  if platforms.has_tpu():
    pytest.skip("a TPU is attached: jax must start libtpu here")
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "JAX_FORCE_TPU_INIT")}
  env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
  proc = subprocess.run([sys.executable, "-m", "research.main", "--config=configs/mlm.py:runlocal",
                         f"--workdir={tmp_path}/w", "--config.mesh.tensor=3"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert (proc.returncode, proc.stderr.strip().splitlines()) == (
      2, ["error: mesh {'data': -1, 'fsdp': 1, 'tensor': 3} does not divide the 1 devices"]), \
      proc.stderr[-3000:]
