"""The archive member rules of artifacts/safety.py, table by table, with the exact message a user reads.

The extraction tests (test_artifacts.py) prove the rules hold end to end on real
archives; these pin each rule's boundary and wording, which the mutation run
(bench/mutation.py) showed were free to drift.
"""

from __future__ import annotations

import pytest

from deploy_tasks.artifacts.safety import (DIR, FILE, HARDLINK, RATIO_MIN_SIZE, SYMLINK, Limits, Member,
                                           check_kind, check_members, clean_name, is_root, resolve_link)
from deploy_tasks.errors import ArtifactError
from deploy_tasks.settings import resolve


def message(fn, *args) -> str:
    with pytest.raises(ArtifactError) as err:
        fn(*args)
    return str(err.value)


@pytest.mark.parametrize("raw, root", [
    (".", True), ("./", True), ("./.", True), (".\\", True), (".\\.", True), (".//.", True),
    ("", False), ("/", False), ("/.", False), ("\\", False), ("a", False), ("./a", False), ("..", False),
])
def test_the_tree_itself(raw, root):
    assert is_root(raw) is root


@pytest.mark.parametrize("raw, clean", [
    ("a/b/c.txt", "a/b/c.txt"), ("./a//b/", "a/b"), ("a\\b\\c", "a/b/c"), ("..a/b..c", "..a/b..c"),
    ("COM10", "COM10"), ("console.txt", "console.txt"), ("con-x.txt", "con-x.txt"), ("X", "X"), ("X/X", "X/X"),
    ("nul\u2003.txt", "nul\u2003.txt"),  # Windows strips only spaces before it compares device names
])
def test_clean_names(raw, clean):
    assert clean_name("zope", raw) == clean


@pytest.mark.parametrize("raw, text", [
    ("", "component zope, member '': empty member name"),
    ("/", "component zope, member '/': empty member name"),
    ("//", "component zope, member '//': empty member name"),
    ("./", "component zope, member './': empty member name"),
    (" ", "component zope, member ' ': name ends with a dot or a space, which Windows strips "
          "(the nodes would write another file than the archive names)"),
    ("/etc/passwd", "component zope, member '/etc/passwd': absolute path (archives must hold relative paths)"),
    ("\\evil", "component zope, member '\\\\evil': absolute path (archives must hold relative paths)"),
    ("C:x", "component zope, member 'C:x': absolute path (archives must hold relative paths)"),
    ("z:/x", "component zope, member 'z:/x': absolute path (archives must hold relative paths)"),
    ("a/../../b", "component zope, member 'a/../../b': path traversal ('..') "
                  "(the member would land outside the target directory)"),
    ("..\\x", "component zope, member '..\\\\x': path traversal ('..') "
              "(the member would land outside the target directory)"),
    ("a/b<c", "component zope, member 'a/b<c': name holds a character Windows forbids (control, <>:\"|?*)"),
    ("a\x01b", "component zope, member 'a\\x01b': name holds a character Windows forbids (control, <>:\"|?*)"),
    ("a\x7fb", "component zope, member 'a\\x7fb': name holds a character Windows forbids (control, <>:\"|?*)"),
    ("a\x1fb", "component zope, member 'a\\x1fb': name holds a character Windows forbids (control, <>:\"|?*)"),
    ("dir./f", "component zope, member 'dir./f': name ends with a dot or a space, which Windows strips "
               "(the nodes would write another file than the archive names)"),
    ("a/f.txt ", "component zope, member 'a/f.txt ': name ends with a dot or a space, which Windows strips "
                 "(the nodes would write another file than the archive names)"),
    ("CON", "component zope, member 'CON': 'CON' is a Windows device name (CON, NUL, COM1...) "
            "(the nodes could not write this file)"),
    ("logs/nul.txt", "component zope, member 'logs/nul.txt': 'nul.txt' is a Windows device name (CON, NUL, COM1...) "
                     "(the nodes could not write this file)"),
    ("aux .log", "component zope, member 'aux .log': 'aux .log' is a Windows device name (CON, NUL, COM1...) "
                 "(the nodes could not write this file)"),
    ("lpt\u00b9", "component zope, member 'lpt\u00b9': 'lpt\u00b9' is a Windows device name (CON, NUL, COM1...) "
                  "(the nodes could not write this file)"),
])
def test_names_that_could_leave_the_tree_or_break_on_windows(raw, text):
    assert message(clean_name, "zope", raw) == text


def test_a_member_that_is_not_a_file_directory_or_link():
    assert check_kind("zope", "f", FILE, "x") == FILE
    assert message(check_kind, "zope", "dev/sda", None, "tar member") == (
        "component zope, member 'dev/sda': tar member is not a regular file, directory or link "
        "(device files, FIFOs and sockets are never extracted)")


def link(name: str, target: str, raw: str = "") -> Member:
    return Member(name, SYMLINK, target=target, raw_name=raw)


def links_of(*members: Member) -> dict:
    return {m.name.lower(): m for m in members}


@pytest.mark.parametrize("name, target, where", [
    ("d/l", "../x", "x"), ("d/l", "./x//y", "d/x/y"), ("d/e/l", "..\\f", "d/f"), ("l", "x/./y/..", "x"),
    ("d/l", ".", "d"), ("d/l", "x", "d/x"),
])
def test_a_link_inside_the_tree_resolves_to_its_target(name, target, where):
    assert resolve_link("zope", link(name, target), {}) == where


@pytest.mark.parametrize("target", ["../../x", "..\\..\\x", "/etc", "\\x", "C:x", "", "a/../../../x"])
@pytest.mark.parametrize("raw", ["", "./d/l"])
def test_a_link_leaving_the_tree_is_refused_naming_it(target, raw):
    shown = raw or "d/l"
    assert message(resolve_link, "zope", link("d/l", target, raw), {}) == (
        f"component zope, member {shown!r}: link points outside the tree (to {target!r})")


def test_a_link_target_with_a_control_character():
    assert message(resolve_link, "zope", link("l", "a\nb", "./l"), {}) == (
        "component zope, member './l': link target 'a\\nb' holds a control character (NUL, newline...) "
        "(link targets must be plain relative paths)")
    assert message(resolve_link, "zope", link("l", "a\0b"), {}).startswith("component zope, member 'l': link target")


def test_links_are_followed_through_the_archive_s_other_links():
    up = link("d/up", "..")  # d/up -> the tree root
    inside = link("x", "d/up/d/y")
    assert resolve_link("zope", inside, links_of(up, inside)) == "d/y"
    escape = link("e", "d/up/../etc", "./e")  # only leaves the tree once d/up is followed
    assert message(resolve_link, "zope", escape, links_of(up, escape)) == (
        "component zope, member './e': link points outside the tree (to 'd/up/../etc')")
    spaced = link("d/in", "my dir/sub")  # a resolved path is split on "/" only
    via = link("o", "d/in/../g")
    assert resolve_link("zope", via, links_of(spaced, via)) == "d/my dir/g"
    nested = link("n", "D/UP/d/z")  # links are matched ignoring case, as NTFS does
    assert resolve_link("zope", nested, links_of(up, nested)) == "d/z"


def chain(length: int) -> list:
    """l0 -> l1 -> ... -> l<length-1> -> file: resolving l0 follows length-1 links."""
    return [link(f"l{i}", f"l{i + 1}" if i < length - 1 else "file") for i in range(length)]


def test_link_loops_and_the_depth_limit():
    ok = chain(41)  # 40 links followed: the deepest chain allowed
    assert resolve_link("zope", ok[0], links_of(*ok)) == "file"
    deep = chain(42)
    assert message(resolve_link, "zope", deep[0], links_of(*deep)) == "component zope, member 'l0': link loop"
    a, b = link("a", "b", "./a"), link("b", "a")
    assert message(resolve_link, "zope", a, links_of(a, b)) == "component zope, member './a': link loop"


BIG = RATIO_MIN_SIZE + 1


def test_limits_come_from_the_settings():
    settings = resolve({"artifact_max_unpacked_mb": 3, "artifact_max_ratio": 7, "artifact_max_members": 9})
    assert Limits.from_settings(settings) == Limits(3 << 20, 7, 9)
    assert Limits() == Limits.from_settings(resolve({}))


def test_a_clean_member_list_is_returned_as_is():
    members = [Member("a", DIR), Member("a/f", FILE, 10), Member("A", DIR), Member("a/h", HARDLINK, target="A/F"),
               Member("l", SYMLINK, target="a/f")]
    assert check_members("zope", members, Limits()) == members


def test_the_member_count_limit():
    limits = Limits(max_members=2)
    assert len(check_members("zope", [Member("a", FILE), Member("b", FILE)], limits)) == 2
    assert message(check_members, "zope", [Member(n, FILE) for n in "abc"], limits) == (
        "component zope: 3 members, more than the limit of 2 (setting artifact_max_members)")


def test_duplicates_are_refused_ignoring_case_except_directories():
    assert message(check_members, "zope", [Member("a/f", FILE), Member("a/f", FILE, raw_name="./a/f")], Limits()) == (
        "component zope, member './a/f': duplicate member: the same name appears twice")
    assert message(check_members, "zope", [Member("a/F", FILE), Member("a/f", DIR)], Limits()) == (
        "component zope, member 'a/f': duplicate member: a name differing only in case ('a/F') appears twice")
    assert message(check_members, "zope", [Member("d", DIR), Member("D", FILE)], Limits()).endswith(
        "duplicate member: a name differing only in case ('d') appears twice")
    # a repeated directory is fine, and the members after it are still checked
    assert message(check_members, "zope", [Member("d", DIR), Member("d", DIR), Member("f", FILE),
                                           Member("F", FILE)], Limits()).endswith("('f') appears twice")


def test_the_unpacked_size_limit_is_a_total():
    limits = Limits(max_unpacked=3 << 20)
    fits = [Member("a", FILE, 2 << 20), Member("b", FILE, 1 << 20)]
    assert check_members("zope", fits, limits) == fits
    over = [Member("a", FILE, 2 << 20), Member("b", FILE, (1 << 20) + 1, raw_name="./b")]
    assert message(check_members, "zope", over, limits) == (
        "component zope, member './b': unpacks to more than 3 MiB (zip bomb guard) (setting artifact_max_unpacked_mb)")


def test_the_compression_ratio_of_one_member():
    limits = Limits(max_ratio=10)
    assert check_members("zope", [Member("small", FILE, RATIO_MIN_SIZE, packed=1)], limits)  # too small to be a bomb
    assert check_members("zope", [Member("edge", FILE, BIG * 10, packed=BIG)], limits)  # exactly at the limit
    assert check_members("zope", [Member("unknown", FILE, BIG * 100, packed=0)], limits)  # tar: no packed size
    assert check_members("zope", [Member("d", DIR, BIG * 100, packed=1)], limits)
    assert message(check_members, "zope", [Member("bomb", FILE, BIG * 10 + 1, packed=BIG)], limits) == (
        "component zope, member 'bomb': compression ratio 10:1 is above the limit of 10:1 (zip bomb guard) "
        "(setting artifact_max_ratio)")
    assert "compression ratio 1048577:1" in message(check_members, "zope", [Member("b", FILE, BIG * 2, packed=2)],
                                                    limits)
    assert "compression ratio 1048577:1" in message(check_members, "zope", [Member("b", FILE, BIG, packed=1)], limits)


def test_the_compression_ratio_of_the_whole_archive():
    limits = Limits(max_ratio=10)
    members = [Member("a", FILE, BIG), Member("b", FILE, BIG)]
    assert check_members("zope", members, limits, archive_size=2 * BIG // 10 + 1)
    assert check_members("zope", [Member("a", FILE, RATIO_MIN_SIZE)], limits, archive_size=1)
    assert check_members("zope", members, limits, archive_size=0)  # size unknown
    exact = [Member("a", FILE, 1_000_000), Member("b", FILE, 1_000_000)]
    assert check_members("zope", exact, limits, archive_size=200_000)  # exactly at the limit
    assert message(check_members, "zope", members, limits, 2 * BIG // 10 - 1) == (
        f"component zope: unpacks to {2 * BIG} bytes from {2 * BIG // 10 - 1}: ratio above 10:1 (zip bomb guard) "
        "(setting artifact_max_ratio)")


def test_nothing_is_written_through_a_link_or_under_a_file():
    assert message(check_members, "zope", [Member("l", SYMLINK, target="d"), Member("d", DIR),
                                           Member("L/x", FILE, raw_name="./L/x")], Limits()) == (
        "component zope, member './L/x': member is written through the link 'l' "
        "(links inside an archive may not be used as directories)")
    assert message(check_members, "zope", [Member("a/b", FILE), Member("a/b/c/d", FILE)], Limits()) == (
        "component zope, member 'a/b/c/d': 'a/b' is both a file and a directory")
    # a hard link is a file: nothing may be written under it either
    assert message(check_members, "zope", [Member("f", FILE), Member("h", HARDLINK, target="f"),
                                           Member("h/x", FILE)], Limits()).endswith("'h' is both a file and a directory")


def test_links_in_the_list_are_checked_against_each_other():
    members = [Member("d", DIR), Member("d/up", SYMLINK, target=".."), Member("e", SYMLINK, target="d/up/../x")]
    assert message(check_members, "zope", members, Limits()) == (
        "component zope, member 'e': link points outside the tree (to 'd/up/../x')")
    # a hard link is not followed as a symlink: its target is a member name
    members = [Member("f", FILE), Member("h", HARDLINK, target="f"), Member("s", SYMLINK, target="h/../f")]
    assert check_members("zope", members, Limits()) == members


@pytest.mark.parametrize("target, text", [
    ("../x", "hard link to '../x' points outside the tree (path traversal ('..'))"),
    ("/etc/shadow", "hard link to '/etc/shadow' points outside the tree (absolute path)"),
    ("nope", "hard link to 'nope', which is not a file in this archive (links pointing outside are refused)"),
    ("d", "hard link to 'd', which is not a file in this archive (links pointing outside are refused)"),
    ("s", "hard link to 's', which is not a file in this archive (links pointing outside are refused)"),
    ("", "hard link to '', which is not a file in this archive (links pointing outside are refused)"),
])
def test_hard_links_must_name_a_file_of_the_archive(target, text):
    members = [Member("f", FILE), Member("d", DIR), Member("s", SYMLINK, target="f"), Member("xxxx", FILE),
               Member("h", HARDLINK, target=target, raw_name="./h")]
    assert message(check_members, "zope", members, Limits()) == f"component zope, member './h': {text}"
