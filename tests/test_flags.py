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
