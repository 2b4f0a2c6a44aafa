"""Windows command lines from argv: ``CommandLineToArgvW`` quoting, and the cmd.exe layer on top.

Windows passes a program one string; the program (the C runtime,
``CommandLineToArgvW``) splits it back into argv. A WinRM command runs
through cmd.exe first (unless the shell was created with
WINRS_SKIP_CMD_SHELL), which reads the same string once more with rules of
its own. Two functions, one per layer:

``argv_line(argv)``
    For a program started directly (CreateProcess, WINRS_SKIP_CMD_SHELL):
    each argument quoted by the ``CommandLineToArgvW`` rules, so the
    program's argv is exactly ``argv``. Unlike ``subprocess.list2cmdline``
    it handles the program name by its own rule (argv[0] ends at the next
    quote, no backslash escapes: a quote in it is refused) and refuses NUL.

``cmd_line(argv)``
    For a command cmd.exe reads (WinRM's default shell). cmd toggles its
    quote state at every ``"`` it sees, backslash or not, and outside quotes
    it acts on ``& | < > ^ ( )``; ``%NAME%`` is expanded everywhere, quoted
    or not. The choice made here, per character of an argument:

    * ``& | < > ^ ( )`` are always placed where cmd's quote state is *on*
      (an extra ``"`` that ``CommandLineToArgvW`` reads as the start or end of
      a quoted part is inserted where needed), so cmd passes them through
      untouched. Not ``^``-escaping them keeps the line correct for readers
      that take the escapes and the redirections in two passes.
    * ``%`` is placed where cmd's quote state is *off* and written ``^%``:
      cmd then looks for a variable whose name ends in ``^`` (there is none),
      leaves the text alone, and drops the caret. A ``%NAME%`` in an
      argument reaches the program as written.
    * ``!`` is left as it is: it is special only under delayed expansion
      (``cmd /v:on`` or the DelayedExpansion registry value), which WinRM's
      shell does not enable; the product never turns it on.
    * CR, LF (they end a cmd command) and NUL are refused, naming the argument.

    The program name (argv[0]) is refused when it holds whitespace, a quote
    or any of ``& | < > ^ ( ) % !``: cmd finds the program by its first
    token, and a line that starts with a quote is rewritten by ``cmd /c``'s
    quote-stripping rule. Name programs as the product does (``msiexec``,
    ``puppet``, a path without spaces); use ``argv_line`` without cmd for anything else.

Both raise ``ConfigError`` (a value from the workbook can reach them).
"""

from __future__ import annotations

from typing import List, Sequence

from ..errors import ConfigError

WHITESPACE = " \t"
CMD_SPECIAL = "&|<>^()"
PROGRAM_REFUSED_IN_CMD = WHITESPACE + '"' + CMD_SPECIAL + "%!"


def _where(argv: Sequence[str], index: int) -> str:
    return f"argument {index} ({argv[index]!r})" if index else f"the program name {argv[0]!r}"


def quote_arg(arg: str) -> str:
    """One argument (not the program) by the ``CommandLineToArgvW`` rules: quoted only when it holds
    whitespace or is empty; a quote becomes ``\\"`` and the backslashes before it double (as list2cmdline)."""
    quote = not arg or any(c in arg for c in WHITESPACE)
    if not quote and '"' not in arg:
        return arg  # nothing to quote or escape (backslashes double only before a quote)
    out: List[str] = ['"'] if quote else []
    run = 0  # backslashes just written: they double before a quote
    for c in arg:
        if c == "\\":
            run += 1
            out.append(c)
            continue
        if c == '"':
            out.append("\\" * run + '\\"')
        else:
            out.append(c)
        run = 0
    if quote:
        out.append("\\" * run + '"')
    return "".join(out)


def _program(argv: Sequence[str]) -> str:
    if not argv:
        raise ConfigError("an empty command line: no program named")
    program = argv[0]
    if not program:
        raise ConfigError("an empty program name")
    if '"' in program or "\0" in program:
        raise ConfigError(f"{_where(argv, 0)} holds a quote or NUL: Windows file names cannot")
    return f'"{program}"' if any(c in program for c in WHITESPACE) else program


def argv_line(argv: Sequence[str]) -> str:
    """The command line a program started directly splits back into exactly ``argv``."""
    argv = [str(a) for a in argv]
    parts = [_program(argv)]
    for i, arg in enumerate(argv[1:], 1):
        if "\0" in arg:
            raise ConfigError(f"{_where(argv, i)} holds a NUL character, which no Windows command line can carry")
        parts.append(quote_arg(arg))
    return " ".join(parts)


def cmd_line(argv: Sequence[str]) -> str:
    """The command line that cmd.exe, then the program, read back as exactly ``argv`` (see the module docstring)."""
    argv = [str(a) for a in argv]
    if argv and any(c in argv[0] for c in PROGRAM_REFUSED_IN_CMD):
        raise ConfigError(f"{_where(argv, 0)} cannot be run through cmd.exe as written: name the program "
                          f"without spaces, quotes or any of & | < > ^ ( ) % ! (put it on PATH, or use its "
                          f"short 8.3 path)")
    parts = [_program(argv)]
    cmd_quoted = False  # cmd's quote state: every '"' in the line flips it
    for i, arg in enumerate(argv[1:], 1):
        bad = next((c for c in ("\0", "\r", "\n") if c in arg), None)
        if bad is not None:
            raise ConfigError(f"{_where(argv, i)} holds {'NUL' if bad == chr(0) else 'a line break'}, which "
                              f"cmd.exe cannot pass on: pass it another way (a file, an environment variable)")
        text, cmd_quoted = _cmd_arg(arg, cmd_quoted)
        parts.append(text)
    return " ".join(parts)


def _cmd_arg(arg: str, cmd_quoted: bool):
    """One argument for cmd_line; returns its text and cmd's quote state after it."""
    out: List[str] = []
    quoted = False  # CommandLineToArgvW's quoted part
    run = 0

    def toggle():  # a '"' that CommandLineToArgvW reads as a quoted part's start or end
        nonlocal quoted, cmd_quoted, run
        out.append("\\" * run + '"')
        run = 0
        quoted = not quoted
        cmd_quoted = not cmd_quoted

    if not arg:
        out.append('""')  # two flips of cmd's state: none
        return "".join(out), cmd_quoted
    if not cmd_quoted and any(c in arg for c in WHITESPACE + CMD_SPECIAL):
        toggle()  # quote the whole argument from its start: "a&b" reads better than a"&b"
    for c in arg:
        if c == "\\":
            out.append(c)
            run += 1
            continue
        if c in WHITESPACE and not quoted:
            toggle()
        elif c in CMD_SPECIAL and not cmd_quoted:
            toggle()
        elif c == "%" and cmd_quoted:
            toggle()
        if c == '"':
            out.append("\\" * run + '\\"')
            cmd_quoted = not cmd_quoted
        elif c == "%":
            out.append("^%")
        else:
            out.append(c)
        run = 0
    if quoted:
        toggle()
    return "".join(out), cmd_quoted
