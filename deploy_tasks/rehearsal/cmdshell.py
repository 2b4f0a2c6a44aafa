"""cmd.exe on an emulated host: the interpreter a WinRM command line runs in, and the ``cmd`` program.

What it does as Windows Server 2012 R2's cmd.exe does (each with its source in
tests/test_rehearsal_cmd.py):

* ``a && b``, ``a || b``, ``a & b``; ``exit [/b] N`` ends cmd with N
  (reported as a 32-bit unsigned code); ``cmd /c``, ``/k``, ``/s``, ``/q``;
* a line over 8191 characters, before or after ``%VAR%`` expansion, is
  refused: "The command line is too long." and exit 1 (KB830473);
* ``%NAME%`` expands from the process's environment (case-insensitive;
  ``%ERRORLEVEL%`` and ``%CD%`` are dynamic); an undefined one stays as written;
* blanks before an operator or a redirection stay part of the command, so
  ``echo x && ...`` and ``echo x > f`` print ``x `` with its trailing space;
* redirection ``>``, ``>>``, ``2>``, ``2>&1``, ``< file``, ``nul``;
* built-ins ``echo``, ``exit``, ``type``, ``ver``, ``mkdir``/``md``,
  ``cd``/``chdir`` (no argument: print the current directory), ``set``;
* ``cmd`` with no ``/c`` reads and runs lines from stdin (prompt, and the
  line echoed when stdin is a pipe rather than a console) until ``exit`` or
  the end of input.

Anything else is a program, found in the current directory and then on the
PATH (``Host.find_program``); an unknown one answers "'x' is not recognized
as an internal or external command" with exit 9009.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Union

from .cmdline import cmd_strip_c, split_argv, split_cmd, split_redirections
from .process import (EXIT_NOT_RECOGNIZED, EXIT_TERMINATED, WINDOWS_VERSION, Host, Process, Redirected,
                      exit_status)

#: the longest string cmd.exe accepts as a command line, also after expansion (KB830473)
CMD_LINE_MAX = 8191
TOO_LONG = "The command line is too long.\n"
BANNER = f"Microsoft Windows [Version {WINDOWS_VERSION}]\n(c) 2013 Microsoft Corporation. All rights reserved.\n"


def not_recognized(name: str) -> str:
    return f"'{name}' is not recognized as an internal or external command,\noperable program or batch file.\n"


class Exit:
    """``exit N``: ends the cmd.exe that runs it, with N."""

    def __init__(self, code: int):
        self.code = exit_status(code)


Outcome = Union[int, Exit]


class CmdShell:
    """cmd.exe: the shell of every WinRM command line, and the ``cmd`` program of the host's table."""

    def __init__(self, host: Host):
        self.host = host
        self._builtins: Dict[str, Callable[[Process, str, List[str]], Outcome]] = {
            "echo": self._echo, "exit": self._exit, "type": self._type, "ver": self._ver, "mkdir": self._mkdir,
            "md": self._mkdir, "cd": self._cd, "chdir": self._cd, "set": self._set,
            "del": self._del, "erase": self._del,
        }

    # -- entry points --------------------------------------------------------------------------
    def is_builtin(self, name: str) -> bool:
        return self._builtin_for(name) is not None

    def run_line(self, proc: Process, line: str) -> int:
        """Run ``line`` as ``cmd /c`` does (what a WinRM shell does with a command line); the exit code."""
        result = self._execute(proc, line)
        return result.code if isinstance(result, Exit) else result

    def run(self, proc: Process, argv: List[str], line: str) -> int:
        """``cmd [/Q] [/D] [/S] [/V:..] [/E:..] [/F:..] [/A|/U] [/C|/K string]``."""
        m = re.match(r'^\s*(?:"[^"]*"|\S+)((?:\s+/(?:[qdsau]|[vef]:\w+))*)(?:\s+/([ck])(.*))?\s*$', line,
                     re.IGNORECASE | re.DOTALL)
        if not m:
            proc.err("The emulated persona supports cmd with its switches and /c or /k and a command only.\n")
            return 1
        switches = m.group(1).lower()
        proc.session.echo = "/q" not in switches
        if m.group(2) is None:
            proc.out(BANNER)
            return self._interactive(proc)
        rest = m.group(3)
        if "/s" in switches:
            stripped = rest.lstrip()
            if stripped.startswith('"'):
                last = stripped.rfind('"')
                rest = stripped[1:last] + stripped[last + 1 :] if last > 0 else stripped[1:]
        else:
            rest = cmd_strip_c(rest)
        result = self._execute(proc, rest)
        if isinstance(result, Exit):
            return result.code
        if m.group(2).lower() == "k":
            return self._interactive(proc)
        return result

    def _interactive(self, proc: Process) -> int:
        """Read lines from stdin and run them until ``exit`` or the end of input."""
        while True:
            echo = proc.session.echo
            if echo:
                proc.out(f"\n{proc.session.cwd}>")
            line = proc.read_line()
            if line is None:
                return proc.session.errorlevel if not proc.cancelled else EXIT_TERMINATED
            if echo and not proc.session.console_stdin:
                proc.out(line + "\n")  # from a pipe cmd echoes what it read; a console echoes typing itself
            if not line.strip():
                continue
            result = self._execute(proc, line)
            if isinstance(result, Exit):
                return result.code
            if proc.cancelled:
                return EXIT_TERMINATED

    # -- one line ------------------------------------------------------------------------------------
    def _execute(self, proc: Process, line: str) -> Outcome:
        """cmd.exe semantics: ``a & b`` binds loosest, then ``||``, then ``&&``; ``exit`` ends everything."""
        if len(line) > CMD_LINE_MAX:
            proc.err(TOO_LONG)
            return self._set_errorlevel(proc, 1)
        line = self.expand(proc, line)
        if len(line) > CMD_LINE_MAX:
            proc.err(TOO_LONG)
            return self._set_errorlevel(proc, 1)
        parts = split_cmd(line, keep_trailing_space=True)
        for i, (op, part) in enumerate(parts):
            if op == "|":
                proc.err("The emulated persona does not support pipes.\n")
                return self._set_errorlevel(proc, 255)
            if not part.strip() and len(parts) > 1 and not (i == len(parts) - 1 and op == "&"):
                following = parts[i + 1][0] if i + 1 < len(parts) else op
                proc.err(f"{following} was unexpected at this time.\n")
                return self._set_errorlevel(proc, 255)
        # sequences split at '&'; each is an '||' list of '&&' chains
        sequences: List[List[List[str]]] = [[[]]]
        for op, part in parts:
            if op == "&":
                sequences.append([[]])
            elif op == "||":
                sequences[-1].append([])
            sequences[-1][-1].append(part)
        code = proc.session.errorlevel
        for alternatives in sequences:
            for chain in alternatives:
                for part in chain:
                    if not part.strip():
                        continue
                    result = self._run_simple(proc, part)
                    if isinstance(result, Exit):
                        return result
                    code = self._set_errorlevel(proc, result)
                    if proc.cancelled:
                        return EXIT_TERMINATED
                    if code != 0:
                        break  # the rest of this && chain does not run
                if code == 0:
                    break  # an || alternative succeeded
        return code

    @staticmethod
    def _set_errorlevel(proc: Process, code: int) -> int:
        proc.session.errorlevel = exit_status(code)
        return proc.session.errorlevel

    @staticmethod
    def expand(proc: Process, line: str) -> str:
        """``%NAME%`` from the process's environment; an undefined name stays as written (command-line rule)."""
        session = proc.session

        def value(m: "re.Match[str]") -> str:
            name = m.group(1)
            if name in session.env:
                return session.env[name]
            if name.upper() == "ERRORLEVEL":
                return str(session.errorlevel)
            if name.upper() == "CD":
                return session.cwd
            return m.group(0)

        return re.sub(r"%([^%\r\n]+?)%", value, line)

    def _run_simple(self, proc: Process, text: str) -> Outcome:
        text, redirs = split_redirections(text)
        if not redirs:
            return self._run_plain(proc, text)
        sink = Redirected(proc)
        files = []
        for stream, mode, target in redirs:
            if mode == ">&":
                if target not in ("1", "2"):
                    proc.err("The handle could not be duplicated\nduring redirection of handle %d.\n" % stream)
                    return 1
                sink.join(stream, int(target))
                continue
            if not target:
                proc.err("The syntax of the command is incorrect.\n")
                return 1
            if target.lower() in ("nul", "nul:"):
                if mode == "<":
                    sink.stdin_from(b"")
                else:
                    sink.discard(stream)
                continue
            try:
                path = self.host.to_sandbox(target, proc.session.cwd)
            except FileNotFoundError:
                proc.err("The system cannot find the path specified.\n")
                return 1
            if mode == "<":
                if not path.is_file():
                    proc.err("The system cannot find the file specified.\n")
                    return 1
                sink.stdin_from(path.read_bytes())
                continue
            if not path.parent.is_dir():
                proc.err("The system cannot find the path specified.\n")
                return 1
            if path.is_dir():
                proc.err("Access is denied.\n")
                return 1
            files.append((stream, mode, path))
            sink.capture(stream)
        result = self._run_plain(sink, text)
        for stream, mode, path in files:
            with open(path, "ab" if mode == ">>" else "wb") as fh:
                fh.write(sink.captured(stream))
        return result

    def _run_plain(self, proc: Process, text: str) -> Outcome:
        argv = split_argv(text)
        if not argv or not argv[0]:
            return 0
        builtin = self._builtin_for(argv[0])
        if builtin is not None:
            return builtin(proc, text, argv)
        program = self.host.find_program(argv[0], proc.session.cwd, proc.session.env.get("PATH"))
        if program is None:
            proc.err(not_recognized(argv[0]))
            return EXIT_NOT_RECOGNIZED
        return program.run(Redirected(proc, proc.session.child()), argv, text)

    def _builtin_for(self, name: str) -> Optional[Callable[[Process, str, List[str]], Outcome]]:
        key = name.lower()
        if key in self._builtins:
            return self._builtins[key]
        if re.match(r"^echo[.:]", key):
            return self._echo
        if re.match(r"^(cd|chdir)[.\\]", key):  # cd.. and cd\ need no blank
            return self._cd
        return None

    # -- built-ins -------------------------------------------------------------------------------------
    @staticmethod
    def _rest(text: str, word: str) -> str:
        """What follows the built-in's name in ``text`` (leading blanks kept)."""
        return text.lstrip()[len(word):]

    def _echo(self, proc: Process, text: str, argv: List[str]) -> int:
        """``echo text``; ``echo.`` is an empty line, ``echo`` alone the echo state, ``echo on|off`` sets it."""
        rest = self._rest(text, "echo")
        separator, rest = rest[:1], rest[1:]
        if separator in (".", ":"):
            proc.out(rest + "\n")
        elif not rest.strip():
            proc.out(f"ECHO is {'on' if proc.session.echo else 'off'}.\n")
        elif rest.strip().lower() in ("on", "off"):
            proc.session.echo = rest.strip().lower() == "on"
        else:
            proc.out(rest + "\n")
        return 0

    @staticmethod
    def _exit(proc: Process, text: str, argv: List[str]) -> Exit:
        args = [a for a in argv[1:] if a.lower() != "/b"]
        try:
            return Exit(int(args[0]) if args else 0)
        except ValueError:
            return Exit(0)  # cmd treats a non-number as 0

    @staticmethod
    def _ver(proc: Process, text: str, argv: List[str]) -> int:
        proc.out(f"\nMicrosoft Windows [Version {WINDOWS_VERSION}]\n")
        return 0

    def _type(self, proc: Process, text: str, argv: List[str]) -> int:
        if len(argv) < 2:
            proc.err("The syntax of the command is incorrect.\n")
            return 1
        code = 0
        for name in argv[1:]:
            if name.lower() in ("nul", "nul:"):
                continue  # the NUL device: nothing to print (`type nul > f` makes an empty file)
            try:
                data = self.host.to_sandbox(name, proc.session.cwd).read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                is_dir = self._is_dir(proc, name)
                proc.err("Access is denied.\n" if is_dir else "The system cannot find the file specified.\n")
                code = 1
                continue
            proc.write_bytes(data)
        return code

    def _mkdir(self, proc: Process, text: str, argv: List[str]) -> int:
        if len(argv) < 2:
            proc.err("The syntax of the command is incorrect.\n")
            return 1
        code = 0
        for name in argv[1:]:
            try:
                path = self.host.to_sandbox(name, proc.session.cwd)
            except FileNotFoundError:
                proc.err("The system cannot find the path specified.\n")
                code = 1
                continue
            if path.exists():
                proc.err(f"A subdirectory or file {name} already exists.\n")
                code = 1
                continue
            try:
                path.mkdir(parents=True)  # command extensions: intermediate folders too
            except (FileExistsError, NotADirectoryError):
                proc.err("The system cannot find the path specified.\n")
                code = 1
        return code

    def _cd(self, proc: Process, text: str, argv: List[str]) -> int:
        """``cd``: print the current directory; ``cd [/d] path``: change it (blanks need no quotes)."""
        rest = re.sub(r"^(cd|chdir)", "", text.lstrip(), flags=re.IGNORECASE).strip()
        if re.match(r"^/d(\s|$)", rest, re.IGNORECASE):
            rest = rest[2:].strip()
        rest = rest.replace('"', "")
        if not rest or re.fullmatch(r"[A-Za-z]:", rest):
            if rest and rest[0].upper() != "C":
                proc.err("The system cannot find the drive specified.\n")
                return 1
            proc.out(proc.session.cwd + "\n")
            return 0
        try:
            path = self.host.to_sandbox(rest, proc.session.cwd)
        except FileNotFoundError:
            proc.err("The system cannot find the path specified.\n")
            return 1
        if not path.is_dir():
            proc.err("The directory name is invalid.\n" if path.exists() else
                     "The system cannot find the path specified.\n")
            return 1
        proc.session.cwd = self.host.to_windows(path)  # with extensions, the case the names have on disk
        return 0

    def _set(self, proc: Process, text: str, argv: List[str]) -> int:
        """``set``, ``set PREFIX``, ``set NAME=value``, ``set "NAME=value"``, ``set NAME=`` (removes it)."""
        rest = self._rest(text, "set").strip()
        env = proc.session.env
        if rest[:2].lower() in ("/a", "/p"):
            proc.err("The emulated persona supports set, set NAME and set NAME=VALUE only.\n")
            return 1
        if rest.startswith('"') and '"' in rest[1:]:
            rest = rest[1 : rest.rindex('"')]
        if "=" not in rest:
            names = sorted((n for n in env if n.upper().startswith(rest.upper())), key=str.upper)
            if not names:
                proc.err(f"Environment variable {rest} not defined\n")
                return 1
            proc.out("".join(f"{n}={env[n]}\n" for n in names))
            return 0
        name, _, value = rest.partition("=")
        if not name:
            proc.err("The syntax of the command is incorrect.\n")
            return 1
        if value:
            env[name] = value
        elif name in env:
            del env[name]
        return 0

    def _del(self, proc: Process, text: str, argv: List[str]) -> int:
        """``del [/f] [/q] file...``: files only (no wildcards, no /s); a missing file is reported, exit 0 as cmd."""
        names = [a for a in argv[1:] if not a.startswith("/")]
        unknown = [a for a in argv[1:] if a.startswith("/") and a.lower() not in ("/f", "/q")]
        if not names or unknown:
            proc.err("The syntax of the command is incorrect.\n")
            return 1
        for name in names:
            if any(c in name for c in "*?"):
                proc.err("The syntax of the command is incorrect. (wildcards are not emulated)\n")
                return 1
            path = self.host.to_sandbox(name, proc.session.cwd)
            if path.is_dir():
                proc.err(f"{self.host.to_windows(path)}\\*, Are you sure (Y/N)? (deleting a directory is not emulated)\n")
                return 1
            try:
                path.unlink()
            except FileNotFoundError:
                proc.err(f"Could Not Find {self.host.to_windows(path)}\n")
        return 0

    def _is_dir(self, proc: Process, name: str) -> bool:
        try:
            return self.host.to_sandbox(name, proc.session.cwd).is_dir()
        except FileNotFoundError:
            return False

