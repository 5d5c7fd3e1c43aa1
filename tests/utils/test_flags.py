"""The flags the commands share (sapnet_jax.utils.flags): each bad value is refused by argparse,
naming the flag, with exit status 2, before a command does any work."""

import argparse

import pytest

from sapnet_jax.utils import flags


def _parser():
  parser = argparse.ArgumentParser(prog="cmd")
  flags.add_weights(parser, "default-weights", "weights help")
  flags.add_tiling(parser, 512, 64)
  flags.add_dtype(parser)
  flags.add_compile_cache(parser, "the cache folder")
  parser.add_argument("--wait", type=flags.float_above(0, inclusive=True), default=0.0)
  parser.add_argument("--timeout", type=flags.float_above(0), default=1.0)
  parser.add_argument("--port", type=flags.int_in(1, 65535), default=8000)
  return parser


def _parse(argv):
  parser = _parser()
  args = parser.parse_args(argv)
  flags.check_tiling(parser, args)
  return args


def test_defaults_and_good_values():
  args = _parse([])
  assert (args.weights, args.tile, args.overlap, args.dtype, args.compile_cache,
          args.no_compile_cache) == ("default-weights", 512, 64, "float32", None, False)
  args = _parse(["--tile", "0", "--overlap", "100", "--wait", "0", "--timeout", "0.5",
                 "--port", "65535", "--dtype", "bfloat16", "--no-compile-cache"])
  assert (args.tile, args.overlap, args.wait, args.timeout, args.port, args.dtype,
          args.no_compile_cache) == (0, 100, 0.0, 0.5, 65535, "bfloat16", True)


@pytest.mark.parametrize("argv,message", [
    (["--tile", "48"], "cmd: error: --overlap 64 must be smaller than --tile 48"),
    (["--tile", "64"], "--overlap 64 must be smaller than --tile 64"),
    (["--tile", "-1"], "argument --tile: must be >= 0, got -1"),
    (["--overlap", "-1"], "argument --overlap: must be >= 0, got -1"),
    (["--tile", "1.5"], "argument --tile: invalid integer value: '1.5'"),
    (["--port", "0"], "argument --port: must be in 1..65535, got 0"),
    (["--timeout", "0"], "argument --timeout: must be a finite number > 0, got 0"),
    (["--timeout", "nan"], "argument --timeout: must be a finite number > 0, got nan"),
    (["--wait=-inf"], "argument --wait: must be a finite number >= 0, got -inf"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--compile-cache", "d", "--no-compile-cache"], "not allowed with argument"),
])
def test_bad_values_exit_2_naming_the_flag(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _parse(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err.splitlines()[-1]


def test_number_flags_show_their_default_and_parse_their_type():
  parser = flags.command_parser("sapnet_jax.cmd", "Usage:\n    python -m sapnet_jax.cmd X")
  flags.add_number(parser, "--queue", int, 8, "N", "requests waiting")
  flags.add_number(parser, "--deadline", float, 300.0, "S", "seconds before a request is dropped")
  text = parser.format_help()
  assert parser.prog == "python -m sapnet_jax.cmd"
  assert "\n    python -m sapnet_jax.cmd X" in text  # the description's layout is kept
  assert "requests waiting (default: 8)" in text
  assert "dropped (default: 300)" in " ".join(text.split())
  args = parser.parse_args(["--queue", "3", "--deadline", "2.5"])
  assert (args.queue, args.deadline) == (3, 2.5)


@pytest.mark.parametrize("value,low,high,above,message", [
    (0, 1, None, False, "--n must be >= 1, got 0"),
    (0, 0, 3600, True, "--n must be in (0, 3600], got 0"),
    (3600.5, 0, 3600, True, "--n must be in (0, 3600], got 3600.5"),
    (float("nan"), 0, 3600, True, "--n must be in (0, 3600], got nan"),
    (-1, 0, 10_000, False, "--n must be in 0..10000, got -1"),
    (2**20 + 1, 1024, 2**20, False, "--n must be in 1024..1048576, got 1048577"),
])
def test_range_checks_name_the_flag_and_the_bounds(value, low, high, above, message):
  with pytest.raises(ValueError) as info:
    flags.check_range("--n", value, low, high, above=above)
  assert str(info.value) == message
  for ok in (low + 0.5 if above else low, low + 1 if high is None else high):
    flags.check_range("--n", ok, low, high, above=above)
