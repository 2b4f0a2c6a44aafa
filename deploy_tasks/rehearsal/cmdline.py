"""Windows command-line rules for the emulated persona: ``CommandLineToArgvW`` and ``cmd /c``.

``split_argv`` follows shell32's ``CommandLineToArgvW`` as Windows 7 and later
implement it (the same algorithm Wine documents and reproduces):

* argv[0] (the program) ends at the next space or tab, or, when it starts with
  a quote, at the next quote; no backslash processing there.
* Elsewhere, 2n backslashes followed by a quote give n backslashes and the
  quote opens or closes a quoted part; 2n+1 backslashes followed by a quote
  give n backslashes and a literal quote; backslashes not followed by a quote
  are literal.
* Inside a quoted part, a doubled quote ``""`` gives a literal quote (and
  three quotes in a row likewise), which is what the ``qcount``
  bookkeeping below encodes.

``subprocess.list2cmdline`` is the inverse for any argv whose program name
holds no quote (Windows file names cannot), which the tests check.

``split_cmd`` is the part of cmd.exe the persona needs: the ``/c`` quote
stripping rule and the ``&&``, ``||`` and ``&`` operators outside quotes.
"""

from __future__ import annotations

from typing import List, Tuple

_WS = " \t"


def split_argv(line: str) -> List[str]:
    """Split a command line into argv exactly as ``CommandLineToArgvW`` does."""
    s = line
    n = len(s)
    i = 0
    argv: List[str] = []
    # argv[0]: special rules.
    if i < n and s[i] == '"':
        j = s.find('"', i + 1)
        if j < 0:
            argv.append(s[i + 1 :])
            i = n
        else:
            argv.append(s[i + 1 : j])
            i = j + 1
    else:
        j = i
        while j < n and s[j] not in _WS:
            j += 1
        argv.append(s[i:j])
        i = j
    while i < n and s[i] in _WS:
        i += 1
    if i >= n:
        return argv

    cur: List[str] = []
    qcount = 0
    bcount = 0
    started = True  # an argument is pending once we reach a non-space
    while i < n:
        c = s[i]
        if c in _WS and qcount == 0:
            argv.append("".join(cur))
            cur = []
            bcount = 0
            while i < n and s[i] in _WS:
                i += 1
            started = i < n
            continue
        if c == "\\":
            cur.append(c)
            bcount += 1
            i += 1
            continue
        if c == '"':
            if bcount % 2 == 0:
                # 2n backslashes + quote: n backslashes, the quote is erased.
                if bcount:
                    del cur[len(cur) - bcount // 2 :]
                qcount += 1
            else:
                # 2n+1 backslashes + quote: n backslashes and a literal quote.
                del cur[len(cur) - bcount // 2 - 1 :]
                cur.append('"')
            i += 1
            bcount = 0
            while i < n and s[i] == '"':
                qcount += 1
                if qcount == 3:
                    cur.append('"')
                    qcount = 0
                i += 1
            if qcount == 2:
                qcount = 0
            continue
        cur.append(c)
        bcount = 0
        i += 1
    if started:
        argv.append("".join(cur))
    return argv


def cmd_strip_c(rest: str) -> str:
    """cmd.exe's rule for the text after ``/c``: strip the first and the last quote.

    cmd keeps the quotes only when the text is exactly one quoted program name
    (two quotes, whitespace between them, no special characters); every other
    text that starts with a quote loses its first and last quote.
    """
    text = rest.lstrip(_WS)
    if not text.startswith('"'):
        return text
    if text.count('"') == 2 and text.endswith('"') and not any(ch in text for ch in "&<>()@^|") \
            and any(ch in text[1:-1] for ch in _WS) and text[1:-1].strip() == text[1:-1]:
        return text
    last = text.rfind('"')
    if last == 0:
        return text[1:]
    return text[1:last] + text[last + 1 :]


def split_cmd(line: str, keep_trailing_space: bool = False) -> List[Tuple[str, str]]:
    """Split a cmd.exe line into (operator, command) pairs at ``&&``, ``||`` and ``&`` outside quotes.

    The first pair's operator is ``""``; a caret escapes the next character,
    as in cmd (the caret itself is dropped). ``keep_trailing_space``: keep the
    blanks before an operator, as cmd does (``echo x && ...`` prints ``x ``).
    """
    strip = (lambda s: s.lstrip(_WS)) if keep_trailing_space else (lambda s: s.strip(_WS))
    parts: List[Tuple[str, str]] = []
    cur: List[str] = []
    op = ""
    quoted = False
    i = 0
    n = len(line)
    while i < n:
        c = line[i]
        if c == '"':
            quoted = not quoted
            cur.append(c)
            i += 1
        elif c == "^" and not quoted and i + 1 < n:
            cur.append(line[i + 1])
            i += 2
        elif not quoted and c in "&|" and not (c == "&" and i > 0 and line[i - 1] == ">"):  # 2>&1 is no operator
            two = line[i : i + 2]
            if two in ("&&", "||"):
                new_op, step = two, 2
            elif c == "&":
                new_op, step = "&", 1
            else:
                new_op, step = "|", 1  # a pipe: reported as unsupported by the caller
            parts.append((op, strip("".join(cur))))
            cur = []
            op = new_op
            i += step
        else:
            cur.append(c)
            i += 1
    parts.append((op, strip("".join(cur))))
    return parts


def split_redirections(text: str) -> Tuple[str, List[Tuple[int, str, str]]]:
    """Take cmd.exe redirections out of a simple command: ``>f``, ``>>f``, ``2>f``, ``2>&1``, ``<f``.

    Returns the command text without them and a list of (stream, mode, target):
    stream 0 (stdin), 1 or 2; mode ``>``, ``>>``, ``<`` or ``>&`` (target then
    the stream number it joins). Quoted text is left alone.
    """
    out: List[str] = []
    redirs: List[Tuple[int, str, str]] = []
    quoted = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            quoted = not quoted
            out.append(c)
            i += 1
            continue
        if quoted or c not in "<>" and not (c in "12" and i + 1 < n and text[i + 1] == ">"
                                            and (i == 0 or text[i - 1] in _WS)):
            out.append(c)
            i += 1
            continue
        stream = 1
        if c in "12":
            stream = int(c)
            i += 1
            c = text[i]
        if c == "<":
            mode, i, stream = "<", i + 1, 0
        elif text[i : i + 2] == ">>":
            mode, i = ">>", i + 2
        else:
            mode, i = ">", i + 1
        if mode == ">" and text[i : i + 1] == "&":
            mode, i = ">&", i + 1
        while i < n and text[i] in _WS:
            i += 1
        j = i
        if j < n and text[j] == '"':
            k = text.find('"', j + 1)
            k = n if k < 0 else k + 1
            target = text[j + 1 : k - 1] if k <= n and text[k - 1 : k] == '"' else text[j + 1 : k]
        else:
            k = j
            while k < n and text[k] not in _WS and text[k] not in "<>":
                k += 1
            target = text[j:k]
        redirs.append((stream, mode, target))
        i = k
        if not text[i:].strip(_WS):
            i = n  # the blanks after a last redirection are no part of the command
    # cmd keeps the blanks a command ends with, also those before a redirection: `echo x > f` writes "x \r\n"
    return "".join(out).lstrip(_WS), redirs
