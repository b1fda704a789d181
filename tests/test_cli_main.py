"""The ``numbec`` entry point: what it adds to every subcommand.

Errors become one line naming the file and the command-line flag, tracebacks appear only
with ``--debug`` / ``NUMBEC_DEBUG``, a misused option shows the subcommand's usage, help
keeps paragraphs and shows defaults, ``--no-progress`` is accepted everywhere, and
``numbec --help`` does not import the numerical stack.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numbec.cli
import numbec.cli.info
import numbec.cli.predict
from numbec.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _run_cli(*args, env=None):
    """``python -m numbec ARGS`` in a fresh interpreter (the real entry point)."""
    environment = dict(os.environ)
    environment.pop("NUMBEC_DEBUG", None)
    environment.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "numbec", *args], capture_output=True,
                          text=True, env=environment, timeout=300)


def _extxyz(path: Path, frames: int = 40) -> bytes:
    lines = []
    for f in range(frames):
        lines.append('3\nLattice="9 0 0 0 9 0 0 0 9" Properties=species:S:1:pos:R:3 '
                     'pbc="T T T"\n')
        for a, symbol in enumerate("OHH"):
            lines.append(f"{symbol} {1.0 + a + 0.01 * f:.6f} {2.0 + 0.5 * a:.6f} 3.000000\n")
    data = "".join(lines).encode()
    path.write_bytes(data)
    return data


def _fail_with(monkeypatch, exc, command=numbec.cli.info):
    """Make a command raise ``exc`` (the entry point's handling, whatever the command)."""

    def run(args):
        raise exc

    monkeypatch.setattr(command, "run", run)


def _one_error_line(capsys, prefix="numbec info: error: "):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------- errors and --debug
def test_truncated_gzip_is_one_line_naming_the_file(tmp_path):
    data = _extxyz(tmp_path / "md.xyz")
    packed = gzip.compress(data)
    src = tmp_path / "md.xyz.gz"
    src.write_bytes(packed[: len(packed) // 2])
    result = _run_cli("convert", str(src), str(tmp_path / "md.zarr"), "--timestep", "1")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("numbec convert: error: ")
    assert "md.xyz.gz" in lines[0] and "truncated" in lines[0]
    # --debug (after the command) and NUMBEC_DEBUG show the traceback
    again = _run_cli("convert", str(src), str(tmp_path / "d.zarr"), "--timestep", "1",
                     "--debug")
    assert again.returncode != 0 and "Traceback" in again.stderr
    assert "EOFError" in again.stderr


def test_debug_before_after_and_from_the_environment(tmp_path, monkeypatch, capsys):
    _fail_with(monkeypatch, ValueError("x.zarr: broken"))
    assert main(["info", "x.zarr"]) == 1
    assert _one_error_line(capsys) == "numbec info: error: x.zarr: broken"
    for argv in (["--debug", "info", "x.zarr"], ["info", "x.zarr", "--debug"]):
        with pytest.raises(ValueError, match="broken"):
            main(argv)
    monkeypatch.setenv("NUMBEC_DEBUG", "1")
    with pytest.raises(ValueError, match="broken"):
        main(["info", "x.zarr"])
    monkeypatch.setenv("NUMBEC_DEBUG", "0")
    assert main(["info", "x.zarr"]) == 1


@pytest.mark.parametrize("exc, expected", [
    (KeyError("n_radial"), "missing entry 'n_radial'"),
    (FileNotFoundError(2, "No such file or directory", "gone.npz"),
     "gone.npz: No such file or directory"),
    (PermissionError(13, "Permission denied", "ro.zarr"), "ro.zarr: Permission denied"),
    (EOFError("Compressed file ended before the end-of-stream marker was reached"),
     "file ended unexpectedly, it is truncated or damaged"),
])
def test_anticipated_errors_are_one_line(monkeypatch, capsys, exc, expected):
    _fail_with(monkeypatch, exc)
    assert main(["info", "some.zarr"]) == 1
    assert expected in _one_error_line(capsys)


def test_errors_from_reading_a_file_name_it(tmp_path, monkeypatch, capsys):
    garbage = tmp_path / "garbage.dat"
    garbage.write_bytes(bytes(range(128, 256)))

    def run(args):
        with open(garbage, encoding="utf-8") as fh:
            fh.read()

    monkeypatch.setattr(numbec.cli.info, "run", run)
    assert main(["info", str(tmp_path / "other.zarr")]) == 1
    line = _one_error_line(capsys)
    assert str(garbage) in line and "not a text file" in line


def _is_printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


@pytest.mark.parametrize("command", ["train", "convert"])
def test_binary_input_is_named_in_printable_text(tmp_path, command):
    """A binary file given as ``.xyz``: one printable line naming it and saying it is not text
    (it used to print the undecodable bytes as they were read)."""
    rng = np.random.default_rng(3)
    garbage = tmp_path / "garbage.xyz"
    garbage.write_bytes(b"\x93\xfe\x1b[31m" + rng.bytes(4000))
    # the same after 8 KiB of good frames: the reader quotes the line, escaped
    late = tmp_path / "late.xyz"
    frame = ('1\nLattice="9 0 0 0 9 0 0 0 9" Properties=species:S:1:pos:R:3:bec:R:9 '
             'pbc="T T T"\nH 1 2 3 1 0 0 0 1 0 0 0 1\n')
    late.write_bytes(frame.encode() * 80 + b"\x93\xfe\x1b[31m\x00\n")
    for path, expected in ((garbage, "not a text file (binary data at byte 0: 93 fe 1b 5b"),
                           (late, "frame 80: expected the number of atoms, got "
                                  "'\\ufffd\\ufffd\\x1b[31m\\x00'")):
        args = ([str(path), "-o", str(tmp_path / "m.npz")] if command == "train" else
                [str(path), str(tmp_path / f"{path.stem}.zarr"), "--timestep", "1"])
        result = _run_cli(command, *args)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert _is_printable_ascii(lines[0]), repr(lines[0])
        assert lines[0].startswith(f"numbec {command}: error: {path}")
        assert expected in lines[0], lines[0]


def test_error_lines_escape_what_is_not_text(monkeypatch, capsys):
    _fail_with(monkeypatch, ValueError("x.zarr: got '\x1b[2J\ufffd\x00' in line 3"))
    assert main(["info", "x.zarr"]) == 1
    assert _one_error_line(capsys).endswith(r"x.zarr: got '\x1b[2J\ufffd\x00' in line 3")
    _fail_with(monkeypatch, AttributeError("\x07bell"))
    assert main(["info", "x.zarr"]) == 1
    assert r"AttributeError: \x07bell" in _one_error_line(capsys, "numbec info: internal error")


def test_errors_without_a_file_name_the_inputs(tmp_path, monkeypatch, capsys):
    model, store = tmp_path / "m.npz", tmp_path / "t.zarr"
    model.write_bytes(b"")
    store.mkdir()
    _fail_with(monkeypatch, KeyError("n_radial"), numbec.cli.predict)
    assert main(["predict", str(model), str(store), "-o", str(tmp_path / "p.zarr")]) == 1
    line = _one_error_line(capsys, "numbec predict: error: ")
    assert line.endswith(f"missing entry 'n_radial' (while reading {model}, {store})")
    _fail_with(monkeypatch, KeyError("n_radial"), numbec.cli.info)
    assert main(["info", str(store)]) == 1
    assert _one_error_line(capsys).endswith(f"{store}: missing entry 'n_radial'")


def test_memory_error_names_the_size_option(monkeypatch, capsys):
    _fail_with(monkeypatch, MemoryError(), numbec.cli.predict)
    assert main(["predict", "m.npz", "t.zarr", "-o", "p.zarr", "--chunk-frames",
                 "1000000000", "--workers", "1"]) == 1
    line = _one_error_line(capsys, "numbec predict: error: ")
    assert "not enough memory" in line and "--chunk-frames 1000000000" in line


def test_unanticipated_errors_say_how_to_get_the_traceback(monkeypatch, capsys):
    _fail_with(monkeypatch, AttributeError("'list' object has no attribute 'get'"))
    assert main(["info", "x.zarr"]) == 1
    line = _one_error_line(capsys, "numbec info: internal error: AttributeError")
    assert "--debug" in line and "NUMBEC_DEBUG=1" in line


def test_interrupt(monkeypatch, capsys):
    _fail_with(monkeypatch, KeyboardInterrupt())
    assert main(["info", "x.zarr"]) == 130
    assert capsys.readouterr().err.strip() == "numbec info: interrupted"


def test_errors_name_the_flag_not_the_python_keyword(monkeypatch, capsys):
    _fail_with(monkeypatch, ValueError("x.zarr: no time step; pass json="))
    assert main(["info", "x.zarr"]) == 1
    assert _one_error_line(capsys).endswith("x.zarr: no time step; use --json")
    # a keyword that is not an option of this command stays as it is
    _fail_with(monkeypatch, ValueError("x.zarr: pass timestep="))
    assert main(["info", "x.zarr"]) == 1
    assert _one_error_line(capsys).endswith("x.zarr: pass timestep=")
    # the keyword spelled next to the flag, and errors that carry the parameter name
    _fail_with(monkeypatch, FileExistsError("x.zarr: exists; use json=True (--json) to add"))
    assert main(["info", "x.zarr"]) == 1
    assert _one_error_line(capsys).endswith("x.zarr: exists; use --json to add")
    error = ValueError("must be positive, got 0")
    error.parameter = "chunk_frames"
    _fail_with(monkeypatch, error, numbec.cli.predict)
    assert main(["predict", "m.npz", "t.zarr", "-o", "p.zarr"]) == 1
    assert _one_error_line(capsys, "numbec predict: error: ").endswith(
        "--chunk-frames: must be positive, got 0")


def test_a_real_reader_error_names_the_flag(tmp_path, capsys):
    """The extxyz reader says ``pass key=...``; ``numbec train`` says ``--key``."""
    _extxyz(tmp_path / "plain.xyz", frames=2)
    assert main(["train", str(tmp_path / "plain.xyz"), "-o", str(tmp_path / "m.npz")]) == 1
    line = _one_error_line(capsys, "numbec train: error: ")
    assert "plain.xyz" in line and "use --key KEY" in line and "key=" not in line


# ------------------------------------------------------------------- usage and help
def test_misused_option_prints_the_subcommand_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["info", "x.zarr", "--bogus"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: numbec info ") and "unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):
        main(["--bogus", "info", "x.zarr"])  # a misused top-level option: top-level usage
    assert capsys.readouterr().err.startswith("usage: numbec [-h]")


def test_every_command_accepts_no_progress_and_debug():
    parser = build_parser()
    assert set(parser.commands) == set(COMMANDS)
    for name, sub in parser.commands.items():
        flags = {flag for action in sub._actions for flag in action.option_strings}
        assert {"--no-progress", "--debug"} <= flags, name


def test_progress_follows_the_terminal_and_no_progress(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(numbec.cli.info, "run", lambda args: seen.append(
        (args.progress, args.no_progress)))
    monkeypatch.setattr(numbec.cli, "_stderr_is_terminal", lambda: True)
    main(["info", "x.zarr"])
    main(["info", "x.zarr", "--no-progress"])
    main(["--no-progress", "info", "x.zarr"])
    monkeypatch.setattr(numbec.cli, "_stderr_is_terminal", lambda: False)
    main(["info", "x.zarr"])
    assert seen == [(True, False), (False, True), (False, True), (False, True)]


def test_top_level_help_lists_the_registered_commands(capsys):
    """``numbec --help`` lists the commands without registering them: same words."""
    parser = build_parser()
    actions = parser._subparsers._group_actions[0]._choices_actions
    assert {a.dest: a.help for a in actions} == COMMANDS
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, summary in COMMANDS.items():
        assert f"{name} {summary}" in text


def test_help_keeps_paragraphs_and_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    assert "\n* ``N = 1`` (default): one process" in text  # the list survives
    assert "parallel workers (processes; threads with --threads) (default: 1)" in " ".join(
        text.split())
    with pytest.raises(SystemExit):
        main(["ir", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "lag window (parzen: spectrum >= 0 for any data) (default: parzen)" in text
    assert "quantum correction factor (default: harmonic)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


HEAVY_MODULES = ("numba", "scipy", "xarray", "zarr", "dask", "ase")


def test_help_does_not_import_the_numerical_stack():
    """``numbec --help`` and every ``numbec COMMAND --help``: none of the numerical stack.

    One fresh interpreter runs them in turn and reports, after each, the heavy modules
    loaded so far (a command that imports one is the first to report it).
    """
    code = ("import sys\nfrom numbec.cli import COMMANDS, main\n"
            "for argv in [['--help']] + [[name, '--help'] for name in COMMANDS]:\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            f"    heavy = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)\n"
            "    print('RESULT', ' '.join(argv), heavy, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr
    reports = [line.split(" ", 1)[1] for line in result.stderr.splitlines()
               if line.startswith("RESULT ")]
    expected = ["--help []"] + [f"{name} --help []" for name in COMMANDS]
    assert reports == expected


def test_help_constants_agree_with_the_library():
    """Choices and defaults the parsers keep as constants (so --help stays light)."""
    import inspect

    import numbec.cli._bec_data
    import numbec.cli.ir
    import numbec.cli.select
    import numbec.cli.train
    import numbec.io.bec
    import numbec.io.dft_inputs
    import numbec.selection
    import numbec.spectra
    from numbec.models import CombinedModel, DipoleModel, MonopoleModel

    assert numbec.cli._bec_data.FORMATS == numbec.io.bec.FORMATS
    assert numbec.cli.ir.WINDOWS == numbec.spectra.WINDOWS
    assert numbec.cli.ir.QUANTUM_CORRECTIONS == numbec.spectra.QUANTUM_CORRECTIONS
    assert numbec.cli.select.STRATEGIES == numbec.selection.STRATEGIES
    assert numbec.cli.select.SCORES == numbec.selection.SCORES
    assert numbec.cli.select.UNCERTAINTY_RANK == numbec.selection.UNCERTAINTY_RANK
    assert numbec.cli.select.FORMATS == numbec.io.dft_inputs.FORMATS
    for cls in (MonopoleModel, DipoleModel, CombinedModel):
        params = inspect.signature(cls).parameters
        assert numbec.cli.train.MODEL_DEFAULTS == {
            name: params[name].default for name in numbec.cli.train.HYPERPARAMETERS}, cls


SIGTERM_SCRIPT = """
import sys, time
import numbec.cli.info
from numbec.cli import main
from numbec.io._files import store_lock

def run(args):
    with store_lock(args.store, "numbec info"):
        print("locked", flush=True)
        time.sleep(60)

numbec.cli.info.run = run
sys.exit(main(["info", sys.argv[1]]))
"""


def test_sigterm_is_a_clean_interruption(tmp_path):
    """SIGTERM (kill, a batch system's time limit) runs the clean-up code as Ctrl-C does:
    the store's lock is released, one line says so, and the exit status is 128 + 15."""
    import signal

    store = tmp_path / "s.zarr"
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, str(store)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        assert (tmp_path / "s.zarr.lock").exists()
        child.send_signal(signal.SIGTERM)
        _out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 143, err
    assert err.strip() == "numbec info: interrupted (terminated)"
    assert not (tmp_path / "s.zarr.lock").exists()


WARNING_SCRIPT = """
import sys, warnings
import numbec.cli.info
from numbec.cli import main

def run(args):
    for _ in range(2):
        warnings.warn("the same thing twice")
    warnings.warn("the same thing twice")  # another line: still shown once
    warnings.warn("another\\nthing")

numbec.cli.info.run = run
sys.exit(main(["info", "x.zarr"]))
"""


def test_warnings_are_one_line_each_once():
    """A warning is shown as 'numbec COMMAND: warning: MESSAGE', without numbec's source
    file, line and code, and each distinct message once."""
    r = subprocess.run([sys.executable, "-c", WARNING_SCRIPT], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["numbec info: warning: the same thing twice",
                                     "numbec info: warning: another thing"]


def test_python_keywords_become_the_options_of_the_command(tmp_path, capsys):
    """Library messages that give the Python keyword next to the option, or the keyword
    alone, reach the command line with the option only."""
    assert main(["convert", "example:sio2_quartz_subset", str(tmp_path / "ex.zarr")]) == 1
    err = _one_error_line(capsys, "numbec convert: error: ")
    assert "(--timestep FS)" in err and "(--no-time)" in err, err
    assert "=" not in err, err


def test_subpackages_are_attributes_after_import_numbec():
    """The docs write numbec.spectra.read_reference(...) after a plain `import numbec`: in
    a fresh interpreter, subpackages and their modules are reachable, private ones and
    unknown names are not."""
    script = (
        "import numbec\n"
        "assert callable(numbec.spectra.read_reference)\n"
        "assert callable(numbec.spectra.ir.kinetic_temperature)\n"
        "assert callable(numbec.io.trajectory.convert_trajectory)\n"
        "for name in ('no_such_module', '_lazy_not_there'):\n"
        "    try:\n"
        "        getattr(numbec, name)\n"
        "    except AttributeError as exc:\n"
        "        assert name in str(exc)\n"
        "    else:\n"
        "        raise SystemExit(name)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


def test_convert_help_says_the_example_needs_no_time(tmp_path, capsys):
    help_text = " ".join(build_parser("convert").commands["convert"].format_help().split())
    assert "(example:sio2_quartz_subset: structures, not a time series, so with --no-time)" \
        in help_text
    # and so it converts
    assert main(["convert", "example:sio2_quartz_subset", str(tmp_path / "ex.zarr"),
                 "--no-time", "--no-progress"]) == 0
