"""Behaviour that deliberate one-line bugs (mutants, bench/mutation.py) showed to be untested.

Each test names what a user would notice if it broke; grouped by the module it pins down.
"""

from __future__ import annotations

import pytest

from deploy_tasks.errors import ConfigError
from deploy_tasks.settings import SETTINGS, Setting, resolve

# -- settings: how text from a flag, env var, invoke.yaml or the Settings sheet is typed ------------

FLAG = Setting("flag", "bool", False, "a yes/no setting")
BOOL_SETTINGS = [s.name for s in SETTINGS if s.kind == "bool"]


@pytest.mark.parametrize("text", ["true", "yes", "on", "1", "TRUE", " Yes ", "On", True, 1, 1.0])
def test_yes_words_read_as_true(text):
    assert FLAG.coerce(text) is True


@pytest.mark.parametrize("text", ["false", "no", "off", "0", "FALSE", " No ", "Off", False, 0, 0.0])
def test_no_words_read_as_false(text):
    assert FLAG.coerce(text) is False


@pytest.mark.parametrize("text", ["maybe", "2", 2, "y", "tru", 0.5])
def test_anything_else_is_not_silently_a_yes_or_no(text):
    with pytest.raises(ValueError, match="must be true or false"):
        FLAG.coerce(text)


@pytest.mark.parametrize("blank", [None, "", "  "])
def test_a_blank_flag_takes_its_default(blank):
    assert FLAG.coerce(blank) is False
    assert Setting("flag", "bool", True, "").coerce(blank) is True


@pytest.mark.skipif(not BOOL_SETTINGS, reason="no yes/no setting is declared on this branch")
def test_declared_yes_no_settings_accept_the_words():
    for name in BOOL_SETTINGS:
        for word, expected in [("yes", True), ("no", False), ("on", True), ("off", False)]:
            assert getattr(resolve({name: word}), name) is expected, (name, word)


@pytest.mark.parametrize("text, expected", [("8080", 8080), (" 8080 ", 8080), (8080.0, 8080), ("8080.0", 8080),
                                            (1, 1), (65535, 65535)])
def test_whole_numbers_are_read_from_text_and_spreadsheet_floats(text, expected):
    assert resolve({"package_port": text}).package_port == expected


@pytest.mark.parametrize("text, why", [("8080.5", "whole number"), (8080.5, "whole number"), ("lots", "whole number"),
                                       (True, "not true/false"), (0, "at least 1"), (65536, "at most 65535")])
def test_a_bad_number_names_the_setting_and_where_it_can_come_from(text, why):
    with pytest.raises(ConfigError) as err:
        resolve({"package_port": text})
    message = str(err.value)
    assert "setting package_port" in message and why in message
    assert "INVOKE_DEPLOY_PACKAGE_PORT" in message and "Settings sheet" in message


def test_every_bad_setting_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        resolve({"package_port": "x", "retries": "-1", "winrm_scheme": "ftp"})
    message = str(err.value)
    assert "package_port" in message and "retries" in message and "winrm_scheme" in message


def test_a_choice_is_read_case_insensitively_and_an_unknown_one_lists_the_choices():
    assert resolve({"winrm_scheme": " HTTP "}).winrm_scheme == "http"
    with pytest.raises(ConfigError, match="must be one of https, http"):
        resolve({"winrm_scheme": "ftp"})


def test_blank_values_take_the_defaults():
    settings = resolve({"package_port": "", "environment": None, "winrm_scheme": " "})
    assert (settings.package_port, settings.environment, settings.winrm_scheme) == (8080, "production", "https")
