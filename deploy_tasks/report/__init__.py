"""Reporting: console output (rich when interactive, plain lines otherwise)."""
