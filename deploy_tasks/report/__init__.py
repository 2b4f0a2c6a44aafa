"""Reporting: console output (rich when interactive, timestamped plain lines otherwise) and report files.

``live.ConsoleReporter`` listens to a runner's events; ``summary.finish``
prints the table, writes ``reports/<task>.json`` and
``reports/junit-<task>.xml`` (``files``) and raises the one aggregate error.
"""
