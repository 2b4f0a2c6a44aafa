"""The Windows persona plus ``netstat -an``, which it lacks (test-only; the persona itself is not edited here).

``netstat -an`` prints Windows' table (header as Windows Server 2012 R2 prints it)
with the rows a test put in the host's state under ``netstat_rows`` (each a
``(proto, local, foreign, state)`` tuple), then one LISTENING row per running
emulated service that has a ``port`` (IPv4 and IPv6, as a service bound to
both stacks shows). What the real persona should gain is exactly this: netstat
from its own socket model, services listening on their port while running.
"""

from __future__ import annotations

from deploy_tasks.rehearsal.cmdline import split_argv
from deploy_tasks.rehearsal.persona import WindowsPersona

HEADER = "\nActive Connections\n\n  Proto  Local Address          Foreign Address        State\n"


def row(proto: str, local: str, foreign: str, state: str = "") -> str:
    return f"  {proto:<7}{local:<23}{foreign:<23}{state}".rstrip() + "\n"


class NetstatPersona(WindowsPersona):
    def _run_plain(self, ctx, text):
        argv = split_argv(text)
        if argv and argv[0].lower() in ("netstat", "netstat.exe"):
            if [a.lower() for a in argv[1:]] != ["-an"]:
                ctx.err("(the test persona supports: netstat -an)\n")
                return 1
            state = self.state()
            lines = [row(*r) for r in state.get("netstat_rows", [])]
            for info in state["services"].values():
                if info.get("state") == "running" and info.get("port"):
                    lines.append(row("TCP", f"0.0.0.0:{info['port']}", "0.0.0.0:0", "LISTENING"))
                    lines.append(row("TCP", f"[::]:{info['port']}", "[::]:0", "LISTENING"))
            ctx.out(HEADER + "".join(lines))
            return 0
        return super()._run_plain(ctx, text)


def factory(*args):
    return NetstatPersona(*args)
