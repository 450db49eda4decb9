r"""Generate text with a decoder run of ours.

  python -m research.generate --workdir=DIR --prompt="The company said"
      One prompt: the completion streams to stdout as it is generated.
  python -m research.generate --workdir=DIR --input=prompts.jsonl [--output=out.jsonl]
      JSON Lines with a "prompt" field (other fields are kept), or plain text lines: one output
      row per input row, {..., "prompt": ..., "completion": ...}, `--batch_size` prompts at a time.

Decoding: --strategy=greedy|sample|beam, --max_new_tokens, --temperature, --top_k, --top_p,
--repetition_penalty, --num_beams, --length_penalty, --stop (extra stop tokens, as vocabulary
entries; the tokenizer's end-of-text always stops), --seed (sampling: the same seed gives the
same text). Several devices: --mesh=DATA,FSDP,TENSOR (default: every device data-parallel).
Bad input (an empty --input, a directory or binary file, --output the same file as --input, a
flag out of range) ends with one line on stderr and exit code 2, before the weights load and with
nothing written (--verbose shows the traceback); --output is replaced only when every row is done.
"""
import json
import sys

from absl import app, flags

from research import command_line, compile_cache, files
from research.errors import UserError, one_line_errors

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined only when it runs (importing `research.generate` defines none)."""
  flags.DEFINE_string("workdir", None, "A decoder run's workdir (its best or latest parameters, "
                      "config.json and tokenizer.json).")
  flags.DEFINE_string("prompt", None, "One prompt; its completion streams to stdout.")
  flags.DEFINE_string("input", None, "JSONL (a 'prompt' field) or text file of prompts; '-' "
                      "reads stdin.")
  flags.DEFINE_string("output", "-", "Where --input's JSONL results go; '-' is stdout.")
  flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate at most per prompt.")
  flags.DEFINE_enum("strategy", "greedy", ["greedy", "sample", "beam"], "Decoding strategy.")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature (strategy=sample).")
  flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
  flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set of tokens whose probability "
                     "reaches top_p, in (0, 1] (1: all).")
  flags.DEFINE_float("repetition_penalty", 1.0, "> 1 discourages tokens already in the prompt "
                     "or the output (1: off).")
  flags.DEFINE_integer("num_beams", 4, "Beams (strategy=beam).")
  flags.DEFINE_float("length_penalty", 1.0, "Beam scores are sum(log p) / length ** this.")
  flags.DEFINE_list("stop", [], "Extra stop tokens (vocabulary entries), comma-separated.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_integer("batch_size", 16, "Prompts decoded together (--input).", lower_bound=1)
  flags.DEFINE_string("mesh", "-1,1,1", "Device mesh sizes data,fsdp,tensor (one may be -1).")
  flags.DEFINE_bool("progress", True, "Show a progress bar on stderr (--input).")
  flags.DEFINE_bool("verbose", False, "Show tracebacks for bad-input errors.")
  compile_cache.define_flag()


def settings_from_flags(tokenizer):
  from research import generate  # pylint: disable=g-import-not-at-top
  stop_ids = []
  for token in FLAGS.stop:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
      raise UserError(f"--stop {token!r} is not a token of this model's vocabulary")
    stop_ids.append(token_id)
  return generate.Settings(
      max_new_tokens=FLAGS.max_new_tokens, strategy=FLAGS.strategy,
      temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
      repetition_penalty=FLAGS.repetition_penalty, num_beams=FLAGS.num_beams,
      length_penalty=FLAGS.length_penalty, stop_tokens=tuple(stop_ids), seed=FLAGS.seed)


def read_prompts(path: str) -> list[dict]:
  """Rows with a 'prompt': JSON objects as they are, plain text lines as {'prompt': line}; at
  least one (an empty input is most likely the wrong file)."""
  files.check_input(path, "--input")
  rows = []
  with (sys.stdin if path == files.STDIO else open(path, encoding="utf-8")) as f:
    try:
      for n, line in enumerate(f, 1):
        if line.strip():
          rows.append(_prompt_row(path, n, line))
    except UnicodeDecodeError as e:  # past the part `files.check_input` reads
      raise UserError(f"--input {path!r} is not UTF-8 text ({e.reason}); expected JSON Lines or "
                      "UTF-8 text") from None
  if not rows:
    where = "stdin" if path == files.STDIO else f"--input {path!r}"
    raise UserError(f"{where} holds no prompts (it is empty or blank lines only): nothing to "
                    "generate")
  return rows


def _prompt_row(path: str, n: int, line: str) -> dict:
  if not line.lstrip().startswith("{"):
    return {"prompt": line.rstrip("\n")}
  try:
    row = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
  if "prompt" not in row:
    raise UserError(f"{path}:{n}: the row has no 'prompt' field")
  return row


def make_mesh(spec: str):
  """The device mesh --mesh asks for (None on one device: nothing to split)."""
  import jax  # pylint: disable=g-import-not-at-top
  from research import sharding  # pylint: disable=g-import-not-at-top
  try:
    sizes = [int(s) for s in spec.split(",")]
  except ValueError:
    sizes = []
  if len(sizes) != 3:
    raise UserError(f"--mesh takes three sizes DATA,FSDP,TENSOR, got {spec!r}")
  mesh_cfg = dict(zip(sharding.MESH_AXES, sizes))
  sharding.mesh_shape(mesh_cfg, len(jax.devices()))  # sizes the devices cannot form: one line
  if len(jax.devices()) == 1:
    return None
  return sharding.make_mesh(mesh_cfg)


def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines are not the output
  compile_cache.use(FLAGS.compile_cache_dir)
  with one_line_errors(FLAGS.verbose):
    if not FLAGS.workdir:
      raise UserError("--workdir is required")
    if (FLAGS.prompt is None) == (FLAGS.input is None):
      raise UserError("pass one of --prompt=TEXT or --input=FILE")
    if FLAGS.input is not None:  # the files first: no model is read for a bad one
      files.check_output(FLAGS.output, "--output", FLAGS.input)
    rows = [{"prompt": FLAGS.prompt}] if FLAGS.prompt is not None else read_prompts(FLAGS.input)
    from research import checkpoint  # pylint: disable=g-import-not-at-top
    from research import generate  # pylint: disable=g-import-not-at-top
    model_cfg, tokenizer = generate.load_model(FLAGS.workdir)
    settings = settings_from_flags(tokenizer)
    generate.check_prompts(tokenizer, [r["prompt"] for r in rows], model_cfg, settings)
    mesh = make_mesh(FLAGS.mesh)
    params, model_cfg = generate.merged_adapters(
        checkpoint.workdir_params(FLAGS.workdir, best=True), model_cfg)
    if FLAGS.prompt is not None:
      stream_one(params, model_cfg, tokenizer, settings, mesh)
    else:
      write_rows(rows, params, model_cfg, tokenizer, settings, mesh)


def stream_one(params, model_cfg, tokenizer, settings, mesh):
  """--prompt: the prompt, then its completion as it is generated (beam search: at the end)."""
  from research import generate  # pylint: disable=g-import-not-at-top
  stream = settings.strategy != "beam"
  write = lambda text: (sys.stdout.write(text), sys.stdout.flush())
  sys.stdout.write(FLAGS.prompt)
  sys.stdout.flush()
  texts = generate.generate(params, model_cfg, tokenizer, [FLAGS.prompt], settings,
                            mesh=mesh, on_text=write if stream else None)
  sys.stdout.write(("" if stream else texts[0]) + "\n")


def write_rows(rows, params, model_cfg, tokenizer, settings, mesh):
  """--input: one JSON line per row, --batch_size prompts per call; --output is replaced when
  every row is written."""
  import tqdm  # pylint: disable=g-import-not-at-top
  from research import generate  # pylint: disable=g-import-not-at-top
  bar = tqdm.tqdm(total=len(rows), unit="prompt", desc="generate", file=sys.stderr,
                  disable=not FLAGS.progress)
  with files.written_when_done(FLAGS.output) as sink:
    for start in range(0, len(rows), FLAGS.batch_size):
      part = rows[start:start + FLAGS.batch_size]
      texts = generate.generate(params, model_cfg, tokenizer, [r["prompt"] for r in part],
                                settings, mesh=mesh, batch_size=FLAGS.batch_size)
      for row, text in zip(part, texts):
        sink.write(json.dumps({**row, "completion": text}) + "\n")
      sink.flush()
      bar.update(len(part))
  bar.close()


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=command_line.parse_flags)  # a bad flag: one line, exit code 2
