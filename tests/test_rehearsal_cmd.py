"""cmd.exe and the WinRS shell options on the emulated persona, each checked against what Windows documents.

Driven through ``persona.start`` (the seam the WinRM endpoint calls with the
Create options); every test names its source. Bytes are asserted, not text:
what a WinRM client receives is bytes in the shell's code page.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy_tasks.rehearsal.base import ProgramNotFound, ShellOptions
from deploy_tasks.rehearsal.faults import FleetSpec, HostFaults
from deploy_tasks.rehearsal.persona import WindowsPersona
from deploy_tasks.rehearsal.process import decode, encode

BANNER = b"Microsoft Windows [Version 6.3.9600]\r\n(c) 2013 Microsoft Corporation. All rights reserved.\r\n"


@pytest.fixture
def host(tmp_path):
    return WindowsPersona("ZCMD01", "127.0.0.9", tmp_path / "ZCMD01" / "C", HostFaults(), FleetSpec(mode="timing"),
                          lambda seconds: None)


def run(host, line, options=ShellOptions(), skip_cmd_shell=False, stdin=None, timeout=10.0):
    """(stdout bytes, stderr bytes, exit code), as the endpoint reads them from the handle."""
    handle = host.start(line, options, skip_cmd_shell)
    if stdin is not None:
        handle.send_input(stdin, eof=True)
    out, err, code = b"", b"", None
    deadline = time.monotonic() + timeout
    while code is None:
        assert time.monotonic() < deadline, f"{line!r} did not finish"
        o, e, code = handle.read(0.5)
        out += o
        err += e
    return out, err, code


# -- WINRS_CODEPAGE ------------------------------------------------------------------------------------
# Code page identifiers: https://learn.microsoft.com/en-us/windows/win32/intl/code-page-identifiers
# (437 = OEM United States, the console code page of an English Windows Server; 65001 = UTF-8);
# conversion: https://learn.microsoft.com/en-us/windows/win32/api/stringapiset/nf-stringapiset-widechartomultibyte
# (default flags: best-fit characters, else the default character '?').
@pytest.mark.parametrize("codepage, text, expected", [
    (437, "café", b"caf\x82"),  # é is 0x82 in OEM 437
    (850, "Ørsted é", b"\x9drsted \x82"),
    (1252, "€ 5", b"\x80 5"),
    (65001, "café 雪", "café 雪".encode("utf-8")),
    (437, "Erdős", b"Erdos"),  # no ő in 437: its best fit, the base letter
    (437, "“quoted” – text", b'"quoted" - text'),  # typographic quotes and dashes: their best fit
    (437, "雪", b"?"),  # no best fit: the default character
])
def test_output_is_encoded_in_the_shells_code_page(host, codepage, text, expected):
    out, err, code = run(host, f"echo {text}", ShellOptions(codepage=codepage))
    assert (out, err, code) == (expected + b"\r\n", b"", 0)


@pytest.mark.parametrize("codepage", [437, 850, 852, 866, 1250, 1252])
def test_every_character_a_code_page_has_arrives_exactly(codepage):
    # never '?' for representable text: each byte the code page defines round-trips
    for byte in range(256):
        try:
            ch = bytes([byte]).decode(f"cp{codepage}")
        except UnicodeDecodeError:
            continue  # a byte the code page leaves undefined (1252's 0x81...)
        assert encode(ch, codepage) == bytes([byte]), (codepage, byte, ch)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20))
def test_utf8_shells_get_every_character(text):
    assert decode(encode(text, 65001), 65001) == text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def test_stdin_is_read_in_the_shells_code_page(host):
    out, _, code = run(host, "cmd /q", ShellOptions(codepage=850, consolemode_stdin=False),
                       stdin="echo Ørsted\r\n".encode("cp850"))
    assert code == 0 and out == BANNER + "Ørsted\r\n".encode("cp850")


def test_an_unknown_code_page_is_refused_not_guessed(host):
    with pytest.raises(ValueError, match="code page 4242"):
        host.start("echo x", ShellOptions(codepage=4242))


# -- rsp:Environment and %VAR% -------------------------------------------------------------------------
# WSMAN_SHELL_STARTUP_INFO_V10.variableSet ("environment variables ... of the shell"):
# https://learn.microsoft.com/en-us/windows/win32/api/wsman/ns-wsman-wsman_shell_startup_info_v10
# set / expansion: https://learn.microsoft.com/en-us/windows-server/administration/windows-commands/set_1
def test_create_environment_is_the_commands_environment(host):
    opts = ShellOptions(environment={"DEPLOY_ENV": "prod", "Path": r"C:\Windows\System32"})
    assert run(host, "echo %deploy_env% %DEPLOY_ENV%", opts) == (b"prod prod\r\n", b"", 0)
    assert run(host, "set DEPLOY", opts) == (b"DEPLOY_ENV=prod\r\n", b"", 0)
    # the PATH it sets is the one programs are found on: wmic's folder is no longer there
    assert run(host, "wmic os get caption", opts)[2] == 9009
    assert run(host, "hostname", opts) == (b"ZCMD01\r\n", b"", 0)


def test_undefined_variables_stay_literal_on_a_command_line(host):
    # command-line (not batch) expansion leaves an undefined %NAME% as typed: cmd /? under SET,
    # https://learn.microsoft.com/en-us/windows-server/administration/windows-commands/cmd
    assert run(host, "echo %NO_SUCH_VAR% 100%") == (b"%NO_SUCH_VAR% 100%\r\n", b"", 0)
    assert run(host, "cmd /c exit 4 || echo %ERRORLEVEL%")[0] == b"0\r\n"  # expanded once, before the line runs


def test_set_changes_the_environment_of_that_cmd_only(host):
    assert run(host, "set X_A=1 && echo %X_A%") == (b"%X_A%\r\n", b"", 0)  # the line was expanded first
    assert run(host, "cmd /q", stdin=b"set X_A=1\r\necho %X_A%\r\n")[0] == BANNER + b"1\r\n"
    assert run(host, "echo %X_A%")[0] == b"%X_A%\r\n"  # a new command: the shell's environment again


# -- rsp:WorkingDirectory, cd --------------------------------------------------------------------------
# workingDirectory "used when attempting to locate files specified by using a relative path":
# https://learn.microsoft.com/en-us/windows/win32/api/wsman/ns-wsman-wsman_shell_startup_info_v10
# cd: "If used without parameters, cd displays the current drive and directory"; with extensions the
# directory takes the case the names have on disk:
# https://learn.microsoft.com/en-us/windows-server/administration/windows-commands/cd
def test_cd_without_argument_prints_the_working_directory(host):
    assert run(host, "cd") == (b"C:\\Users\\Administrator\r\n", b"", 0)
    assert run(host, "chdir & cd C:") == (b"C:\\Users\\Administrator\r\nC:\\Users\\Administrator\r\n", b"", 0)


def test_working_directory_applies_to_relative_paths_and_cd(host):
    (host.sandbox / "Deploy" / "Logs").mkdir(parents=True)
    (host.sandbox / "Deploy" / "note.txt").write_bytes(b"hello\r\n")
    opts = ShellOptions(working_directory=r"c:\deploy")
    assert run(host, "cd", opts) == (b"C:\\Deploy\r\n", b"", 0)
    assert run(host, "type note.txt", opts) == (b"hello\r\n", b"", 0)
    assert run(host, r"cd logs && cd && echo x> out.txt && cd .. && cd", opts) == (
        b"C:\\Deploy\\Logs\r\nC:\\Deploy\r\n", b"", 0)
    assert (host.sandbox / "Deploy" / "Logs" / "out.txt").read_bytes() == b"x\r\n"
    assert run(host, "cd", opts)[0] == b"C:\\Deploy\r\n"  # each command starts in the shell's directory
    assert run(host, r"cd C:\no\such", opts) == (b"", b"The system cannot find the path specified.\r\n", 1)


def test_a_working_directory_that_does_not_exist_fails_the_command(host):
    out, err, code = run(host, "cd", ShellOptions(working_directory=r"C:\nowhere"))
    assert (out, err, code) == (b"", b"The directory name is invalid.\r\n", 267)  # ERROR_DIRECTORY


# -- WINRS_NOPROFILE ---------------------------------------------------------------------------------------
# winrs (Windows Server 2012 R2): /noprofile "prevents loading the user's profile"; without /directory "the
# remote shell will start in the user's home directory defined by the environment variable %USERPROFILE%":
# https://learn.microsoft.com/en-us/previous-versions/windows/it-pro/windows-server-2012-R2-and-2012/hh875630(v=ws.11)
# Without the profile the persona gives the Default User profile's folders (GetDefaultUserProfileDirectory):
# an emulation choice, not yet compared with a recorded exchange.
def test_noprofile_gives_the_default_profile(host):
    assert run(host, "echo %USERPROFILE%")[0] == b"C:\\Users\\Administrator\r\n"
    out, _, code = run(host, "echo %USERPROFILE%& cd", ShellOptions(noprofile=True))
    assert code == 0 and out == b"C:\\Users\\Default\r\nC:\\Users\\Default\r\n"


# -- WINRS_SKIP_CMD_SHELL ----------------------------------------------------------------------------------
# "WINRS_SKIP_CMD_SHELL ... the command is run directly, not through cmd.exe" (MS-WSMV 3.1.4.11 Command):
# https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-wsmv/c793e333-c409-43c6-a2eb-6ae2489c7ef4
def test_skip_cmd_shell_runs_the_program_itself(host):
    assert run(host, "hostname", skip_cmd_shell=True) == (b"ZCMD01\r\n", b"", 0)
    assert run(host, r"C:\Windows\System32\whoami.exe", skip_cmd_shell=True)[0] == b"zcmd01\\administrator\r\n"
    # no operators: `&&` is an argument of hostname, which then refuses to set the name
    out, err, code = run(host, "hostname && echo x", skip_cmd_shell=True)
    assert (out, code) == (b"", 1) and b"sethostname" in err
    # cmd.exe itself is a program like any other
    assert run(host, "cmd /c echo %COMPUTERNAME%&& exit 3", skip_cmd_shell=True) == (b"ZCMD01\r\n", b"", 3)


@pytest.mark.parametrize("line, program", [("echo hi", "echo"), ("exit 3", "exit"), ("type x", "type"),
                                           ("ipconfig /all", "ipconfig"), (r"C:\no\tool.exe", r"C:\no\tool.exe")])
def test_skip_cmd_shell_has_no_builtins_and_unknown_programs_raise(host, line, program):
    with pytest.raises(ProgramNotFound) as caught:
        host.start(line, skip_cmd_shell=True)
    assert caught.value.program == program


# -- stdin: cmd with no arguments ----------------------------------------------------------------------------
# "cmd" without /c or /k starts an interpreter that reads commands from its standard input; exit ends it:
# https://learn.microsoft.com/en-us/windows-server/administration/windows-commands/cmd
# https://learn.microsoft.com/en-us/windows-server/administration/windows-commands/exit
def test_cmd_reads_and_runs_lines_from_stdin(host):
    out, err, code = run(host, "cmd", ShellOptions(consolemode_stdin=False),
                         stdin=b"echo one\r\nnosuch\r\nexit 3\r\necho never\r\n")
    assert code == 3
    prompt = b"\r\nC:\\Users\\Administrator>"
    # from a pipe, cmd echoes each line it read after the prompt
    assert out == BANNER + prompt + b"echo one\r\none\r\n" + prompt + b"nosuch\r\n" + prompt + b"exit 3\r\n"
    assert err.startswith(b"'nosuch' is not recognized")


def test_cmd_stdin_in_console_mode(host):
    # a console echoes typing on the screen, not into stdout; Ctrl+Z at a line's start is the end of input
    out, _, code = run(host, "cmd", stdin=b"echo one\r\n\x1a\r\necho never\r\n")
    prompt = b"\r\nC:\\Users\\Administrator>"
    assert code == 0 and out == BANNER + prompt + b"one\r\n" + prompt


def test_send_input_reaches_a_running_command(host):
    handle = host.start("cmd /q")
    assert handle.read(0.3) == (BANNER, b"", None)  # waiting for input
    handle.send_input(b"echo hi\r\n")
    out = b""
    while b"hi" not in out:
        out += handle.read(1)[0]
    assert out == b"hi\r\n"
    handle.send_input(b"exit 5\r\n", eof=True)
    code = None
    while code is None:
        code = handle.read(1)[2]
    assert code == 5


def test_the_end_of_input_ends_cmd_with_the_last_errorlevel(host):
    assert run(host, "cmd /q", stdin=b"cmd /c exit 7\r\n") == (BANNER, b"", 7)


# -- cmd.exe quirks that bite real scripts ------------------------------------------------------------------
# The blank before an operator or a redirection belongs to the command (the parser only splits at the
# operator): "How does the Windows Command Interpreter (CMD.EXE) parse scripts?", phase 2,
# https://stackoverflow.com/questions/4094699/how-does-the-windows-command-interpreter-cmd-exe-parse-scripts
def test_echo_keeps_the_blank_before_an_operator_or_redirection(host):
    assert run(host, "echo x && echo y") == (b"x \r\ny\r\n", b"", 0)
    assert run(host, "echo x& echo y") == (b"x\r\ny\r\n", b"", 0)
    assert run(host, r"echo x > C:\Windows\Temp\f.txt && echo y>> C:\Windows\Temp\f.txt") == (b"", b"", 0)
    assert (host.sandbox / "Windows" / "Temp" / "f.txt").read_bytes() == b"x \r\ny\r\n"


# echo: "echo." displays a blank line; echo with no argument shows the echo setting; echo off hides prompts:
# https://learn.microsoft.com/en-us/windows-server/administration/windows-commands/echo
def test_echo_forms(host):
    assert run(host, "echo.& echo:x& echo") == (b"\r\nx\r\nECHO is on.\r\n", b"", 0)
    out, _, code = run(host, "cmd", stdin=b"echo off\r\necho hi\r\necho\r\n")
    assert code == 0 and out == BANNER + b"\r\nC:\\Users\\Administrator>hi\r\nECHO is off.\r\n"


# Command prompt (Cmd.exe) command-line string limitation, KB830473: 8191 characters, also after
# environment variable expansion: http://support.microsoft.com/kb/830473
def test_the_command_line_limit_is_8191_characters(host):
    fits = "echo " + "a" * (8191 - 5)
    assert run(host, fits) == (b"a" * 8186 + b"\r\n", b"", 0)
    assert run(host, fits + "a") == (b"", b"The command line is too long.\r\n", 1)
    opts = ShellOptions(environment={"BIG": "b" * 5000})
    assert run(host, "echo %BIG%", opts)[2] == 0
    assert run(host, "echo %BIG%%BIG%", opts) == (b"", b"The command line is too long.\r\n", 1)
    assert run(host, "cmd /c " + fits)[2] == 1  # the outer cmd.exe already refuses it


# Exit codes are DWORDs (GetExitCodeProcess): https://learn.microsoft.com/en-us/windows/win32/api/
# processthreadsapi/nf-processthreadsapi-getexitcodeprocess ; `exit -1` therefore reads 4294967295.
@pytest.mark.parametrize("line, code", [("exit -1", 4294967295), ("cmd /c exit -2", 4294967294),
                                        ("exit /b -1", 4294967295), ("exit 4294967295", 4294967295),
                                        ("exit 3010", 3010), ("exit x", 0)])
def test_exit_codes_are_32_bit_unsigned(host, line, code):
    assert run(host, line)[2] == code


def test_certutil_decode_del_and_type_nul_as_the_winrm_transport_uses_them(host):
    # certutil -decode: https://learn.microsoft.com/windows-server/administration/windows-commands/certutil#-decode
    # del: https://learn.microsoft.com/windows-server/administration/windows-commands/del
    import base64

    p, root = host, host.sandbox
    payload = bytes(range(256)) * 3
    text = base64.b64encode(payload).decode()
    assert p.run(f'>"C:\\t\\x.b64" echo {text[:400]}')[2] == 1  # no C:\t yet: cmd cannot open the file
    assert p.run("mkdir C:\\t")[2] == 0
    assert p.run(f'>"C:\\t\\x.b64" echo {text[:400]}')[2] == 0
    assert p.run(f'>>"C:\\t\\x.b64" echo {text[400:]}')[2] == 0
    out, _, code = p.run('certutil -decode "C:\\t\\x.b64" "C:\\t\\x.bin"')
    assert code == 0 and f"Output Length = {len(payload)}" in out
    assert (root / "t" / "x.bin").read_bytes() == payload
    out, _, code = p.run('certutil -decode "C:\\t\\x.b64" "C:\\t\\x.bin"')
    assert code == 0x80070050 and "ERROR_FILE_EXISTS" in out  # without -f an existing file is kept
    assert p.run('certutil -f -decode "C:\\t\\x.b64" "C:\\t\\x.bin"')[2] == 0
    assert p.run('del /f /q "C:\\t\\x.b64"')[2] == 0 and not (root / "t" / "x.b64").exists()
    _, err, code = p.run('del "C:\\t\\x.b64"')
    assert code == 0 and "Could Not Find C:\\t\\x.b64" in err
    assert p.run('type nul> "C:\\t\\empty"')[2] == 0 and (root / "t" / "empty").read_bytes() == b""
