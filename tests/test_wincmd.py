"""The product's Windows quoting (transports/wincmd.py) read back by the emulator's parsers (rehearsal/cmdline.py).

Two independent implementations meet here: the product builds command
lines, the emulator splits them the way ``CommandLineToArgvW`` and cmd.exe
do. Hostile arguments (quotes, backslash runs, cmd operators, redirections,
``%VAR%``, carets, whitespace) must come back exactly.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import example, given, settings, strategies as st

from deploy_tasks.errors import ConfigError
from deploy_tasks.rehearsal.cmdline import split_argv, split_cmd, split_redirections
from deploy_tasks.transports import wincmd

HOSTILE = ' \t"\\&|<>^()%!a1=/:;,.*?@~`\'' + "é€"
argument = st.text(alphabet=st.sampled_from(list(HOSTILE)), max_size=24)
arguments = st.lists(argument, max_size=6)
program = st.sampled_from(["msiexec", "puppet", r"C:\Windows\system32\cmd.exe", "prog", r"C:\x\a(1).exe"])


def cmd_expand(line: str) -> str:
    """cmd's %NAME% expansion on a command line, as the persona does it, with EVERY name defined
    except names holding a caret (the one assumption the product's quoting makes)."""
    return re.sub(r"%([^%\s]+)%", lambda m: m.group(0) if "^" in m.group(1) else "EXPANDED", line)


def through_cmd(line: str) -> list:
    """cmd.exe's layer (variables, operators and carets, redirections), then the program's CommandLineToArgvW."""
    parts = split_cmd(cmd_expand(line))
    assert len(parts) == 1 and parts[0][0] == "", f"cmd would split {line!r} into {parts}"
    text, redirections = split_redirections(parts[0][1])
    assert not redirections, f"cmd would redirect in {line!r}: {redirections}"
    return split_argv(text)


@settings(max_examples=1500, deadline=None)
@given(program.filter(lambda p: "(" not in p), arguments)
@example("prog", ['a"b>c', "x"])
@example("prog", ["%PATH%", "a%", "%b", "%%", ""])
@example("prog", ['\\"&\\', "\\\\", ' "^" ', "2>&1", "1>", ">nul"])
@example("prog", ["a b\\\\", 'c\\\\"d', "e&\\\\\\", "f g\\\\\\h i"])  # runs of backslashes before a quote
def test_cmd_line_round_trips_through_cmd_and_commandlinetoargvw(prog, args):
    argv = [prog, *args]
    assert through_cmd(wincmd.cmd_line(argv)) == argv


@settings(max_examples=1500, deadline=None)
@given(program, arguments)
@example(r"C:\Program Files\Puppet Labs\Puppet\bin\puppet.bat", ["a b", 'c"d', "e\\", ""])
def test_argv_line_round_trips_through_commandlinetoargvw(prog, args):
    argv = [prog, *args]
    assert split_argv(wincmd.argv_line(argv)) == argv


@given(arguments)
def test_argv_line_agrees_with_list2cmdline_where_list2cmdline_is_right(args):
    # list2cmdline is correct for arguments: the differences are in argv[0] and NUL only
    assert wincmd.argv_line(["prog", *args]) == subprocess.list2cmdline(["prog", *args])


@pytest.mark.parametrize("argv,text", [
    (["msiexec", "/qn", "/i", "http://pkg:8080/puppet-agent/a.msi", "PUPPET_SERVER=deploy01"],
     "msiexec /qn /i http://pkg:8080/puppet-agent/a.msi PUPPET_SERVER=deploy01"),
    (["puppet", "agent", "--tags", "a,b"], "puppet agent --tags a,b"),
    (["prog", "a&b"], 'prog "a&b"'),
    (["prog", "%TEMP%"], "prog ^%TEMP^%"),
    (["prog", ""], 'prog ""'),
])
def test_plain_commands_stay_readable(argv, text):
    assert wincmd.cmd_line(argv) == text


@pytest.mark.parametrize("argv,message", [
    (["prog", "a\nb"], "argument 1 ('a\\nb') holds a line break"),
    (["prog", "a\0"], "holds NUL"),
    (["C:\\Program Files\\x.exe"], "cannot be run through cmd.exe"),
    (["a&b"], "cannot be run through cmd.exe"),
    ([], "no program"),
])
def test_what_cmd_cannot_carry_is_refused_naming_the_argument(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        wincmd.cmd_line(argv)


def test_a_quote_in_the_program_name_is_refused():
    with pytest.raises(ConfigError, match="program name"):
        wincmd.argv_line(['a"b', "x"])


@pytest.mark.parametrize("build,argv,message", [
    (wincmd.cmd_line, [], "an empty command line: no program named"),
    (wincmd.argv_line, [], "an empty command line: no program named"),
    (wincmd.cmd_line, ["", "x"], "an empty program name"),
    (wincmd.argv_line, [""], "an empty program name"),
    (wincmd.argv_line, ["a\0b"], "the program name 'a\\x00b' holds a quote or NUL: Windows file names cannot"),
    (wincmd.argv_line, ["prog", "ok", "a\0"],
     "argument 2 ('a\\x00') holds a NUL character, which no Windows command line can carry"),
    (wincmd.cmd_line, ["prog", "ok", "a\rb"],
     "argument 2 ('a\\rb') holds a line break, which cmd.exe cannot pass on: pass it another way "
     "(a file, an environment variable)"),
])
def test_refusals_say_exactly_which_argument_and_why(build, argv, message):
    with pytest.raises(ConfigError) as err:
        build(argv)
    assert str(err.value) == message
