"""extract-artifacts: hostile and broken archives, every release form, incremental runs, the manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from deploy_tasks.artifacts import Job, Limits, extract_release, source as source_mod, synthetic
from deploy_tasks.artifacts import archive as archive_mod
from deploy_tasks.errors import ArtifactError, ConfigError, ExtractionFailed

ROOT = Path(__file__).resolve().parent.parent
INV = [str(Path(sys.executable).parent / "inv")]
ENV = "production"
GOOD = Job("good", "1.0", "good-1.0.zip")


def sha(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def snapshot(root: Path) -> dict:
    """Every path under root -> (inode, mtime_ns) (links by lstat)."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(base) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_ino, st.st_mtime_ns)
    return out


def zinfo(name: str, mode: int = 0o644 | stat.S_IFREG) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, (2026, 1, 1, 0, 0, 0))
    info.create_system = 3
    info.external_attr = mode << 16
    return info


def write_zip(path: Path, members) -> Path:
    """members: (ZipInfo or name, bytes[, compress_type])"""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on the duplicate names we write on purpose
        with zipfile.ZipFile(path, "w") as zf:
            for item in members:
                info, data = item[0], item[1]
                info = zinfo(info) if isinstance(info, str) else info
                zf.writestr(info, data, compress_type=item[2] if len(item) > 2 else zipfile.ZIP_DEFLATED)
    return path


def write_tar(path: Path, members, mode: str = "w:gz") -> Path:
    """members: TarInfo with data (bytes or None)."""
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def tinfo(name: str, kind=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


def resum(rel: Path) -> None:
    """Rewrite the release's SHA256SUMS for the artifacts now in it (as a release build would)."""
    synthetic.write_sums(rel, [p.name for p in rel.glob("*.zip")])


def link(name: str, target: str) -> tuple:
    return (zinfo(name, stat.S_IFLNK | 0o777), target.encode(), zipfile.ZIP_STORED)


# -- hostile and broken archives ---------------------------------------------------
# Each: a zip/tar writer given the artifact path; the member the error must name
# (None for an archive broken as a whole); a word the error must contain.

def _crc(path: Path) -> None:
    write_zip(path, [("data.bin", b"A" * 5000 + b"payload" + b"B" * 5000, zipfile.ZIP_STORED)])
    data = bytearray(path.read_bytes())
    data[data.find(b"payload")] ^= 0xFF
    path.write_bytes(bytes(data))


def _size(path: Path) -> None:
    write_zip(path, [("sized.txt", b"hello world " * 1000)])
    data = bytearray(path.read_bytes())
    cd = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 24, 12000 + 10)
    path.write_bytes(bytes(data))


def _truncated_zip(path: Path) -> None:
    write_zip(path, [("a.txt", os.urandom(20000))])
    path.write_bytes(path.read_bytes()[:12000])


def _corrupt_deflate(path: Path) -> None:
    write_zip(path, [("ok.txt", b"fine"), ("text.txt", b"some compressible text " * 4000)])
    data = bytearray(path.read_bytes())
    start = data.find(b"text.txt") + len("text.txt") + 40
    for i in range(start, start + 200):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _encrypted(path: Path) -> None:
    write_zip(path, [("secret.txt", b"classified", zipfile.ZIP_STORED)])
    data = bytearray(path.read_bytes())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature) + flag_at
        data[at] |= 0x1
    path.write_bytes(bytes(data))


def _method9(path: Path) -> None:
    """A member compressed with deflate64 (method 9), which zipfile cannot read."""
    write_zip(path, [("ok.txt", b"fine"), ("m.txt", b"some text " * 100)])
    data = bytearray(path.read_bytes())
    local = data.rfind(b"PK\x03\x04", 0, data.find(b"m.txt"))
    struct.pack_into("<H", data, local + 8, 9)
    cd = data.rfind(b"PK\x01\x02", 0, data.rfind(b"m.txt"))
    struct.pack_into("<H", data, cd + 10, 9)
    path.write_bytes(bytes(data))


def _truncated_tgz(path: Path) -> None:
    write_tar(path, [(tinfo("a.bin"), os.urandom(300000)), (tinfo("b.bin"), os.urandom(300000))])
    path.write_bytes(path.read_bytes()[:350000])


HOSTILE = {
    "absolute path": (lambda p: write_zip(p, [("ok.txt", b"x"), ("/etc/evil.txt", b"x")]), "/etc/evil.txt", "absolute"),
    "drive letter": (lambda p: write_zip(p, [("C:/Windows/evil.dll", b"x")]), "C:/Windows/evil.dll", "absolute"),
    "dotdot traversal": (lambda p: write_zip(p, [("ok.txt", b"x"), ("lib/../../evil.txt", b"x")]), "lib/../../evil.txt", "traversal"),
    "backslash traversal": (lambda p: write_zip(p, [("..\\..\\evil.txt", b"x")]), "..\\..\\evil.txt", "traversal"),
    "zip symlink outside": (lambda p: write_zip(p, [("ok.txt", b"x"), link("etc", "../../../etc")]), "etc", "outside"),
    "zip symlink target with NUL": (lambda p: write_zip(p, [("ok.txt", b"x"), link("lib/bad", "a\x00b")]),
                                    "lib/bad", "control character"),
    "zip symlink target with newline": (lambda p: write_zip(p, [link("nl", "a\nb")]), "nl", "control character"),
    "zip absolute symlink": (lambda p: write_zip(p, [link("passwd", "/etc/passwd")]), "passwd", "outside"),
    "zip symlink chain escapes": (lambda p: write_zip(p, [("p/q/keep.txt", b"x"), link("p/q/c", "../.."),
                                                          link("y", "p/q/c/..")]), "y", "outside"),
    "write through a link": (lambda p: write_zip(p, [link("lnk", "sub"), ("sub/a.txt", b"x"), ("lnk/b.txt", b"x")]),
                             "lnk/b.txt", "through the link"),
    "windows device name": (lambda p: write_zip(p, [("logs/nul.txt", b"x")]), "logs/nul.txt", "device name"),
    "windows console device": (lambda p: write_zip(p, [("CONOUT$", b"x")]), "CONOUT$", "device name"),
    "trailing dot Windows strips": (lambda p: write_zip(p, [("a.txt", b"1"), ("a.txt.", b"2")]), "a.txt.",
                                    "dot or a space"),
    "trailing space Windows strips": (lambda p: write_zip(p, [("dir /b.txt", b"1")]), "dir /b.txt", "dot or a space"),
    "zip device file": (lambda p: write_zip(p, [(zinfo("dev/sda", stat.S_IFBLK | 0o644), b"")]), "dev/sda", "device"),
    "zip fifo": (lambda p: write_zip(p, [(zinfo("pipe", stat.S_IFIFO | 0o644), b"")]), "pipe", "FIFO"),
    "duplicate member": (lambda p: write_zip(p, [("a.txt", b"first"), ("a.txt", b"second")]), "a.txt", "duplicate"),
    "duplicate ignoring case": (lambda p: write_zip(p, [("bin/App.exe", b"1"), ("bin/app.exe", b"2")]), "bin/app.exe", "duplicate"),
    "file used as directory": (lambda p: write_zip(p, [("a", b"file"), ("a/b.txt", b"x")]), "a/b.txt", "both a file and a directory"),
    "zip bomb ratio": (lambda p: write_zip(p, [("zeros.bin", bytes(40 << 20))]), "zeros.bin", "ratio"),
    "zip bomb total size": (lambda p: write_zip(p, [("a.bin", os.urandom(600 << 10), zipfile.ZIP_STORED),
                                                     ("b.bin", os.urandom(600 << 10), zipfile.ZIP_STORED)]),
                            "b.bin", "MiB"),
    "crc mismatch": (_crc, "data.bin", "CRC"),
    "size mismatch": (_size, "sized.txt", "size mismatch"),
    "corrupt deflate data": (_corrupt_deflate, "text.txt", "corrupt"),
    "truncated zip": (_truncated_zip, None, "truncated"),
    "encrypted member": (_encrypted, "secret.txt", "encrypted"),
    "not an archive": (lambda p: p.write_bytes(b"this is not a zip"), None, "not a zip"),
    "tar absolute path": (lambda p: write_tar(p, [(tinfo("/tmp/evil"), b"x")]), "/tmp/evil", "absolute"),
    "tar traversal": (lambda p: write_tar(p, [(tinfo("ok"), b"x"), (tinfo("../evil"), b"x")]), "../evil", "traversal"),
    "tar symlink outside": (lambda p: write_tar(p, [(tinfo("s", tarfile.SYMTYPE, "../../../../etc/shadow"), None)]),
                            "s", "outside"),
    "tar hardlink outside": (lambda p: write_tar(p, [(tinfo("h", tarfile.LNKTYPE, "/etc/passwd"), None)]), "h", "hard link"),
    "tar hardlink traversal": (lambda p: write_tar(p, [(tinfo("h", tarfile.LNKTYPE, "../../x"), None)]), "h", "traversal"),
    "tar dot as a file": (lambda p: write_tar(p, [(tinfo("./", tarfile.DIRTYPE), None), (tinfo("."), b"x")]), ".", "empty member name"),
    "tar dot as a link": (lambda p: write_tar(p, [(tinfo(".", tarfile.SYMTYPE, "x"), None)]), ".", "empty member name"),
    "tar device": (lambda p: write_tar(p, [(tinfo("null", tarfile.CHRTYPE), None)]), "null", "device"),
    "tar fifo": (lambda p: write_tar(p, [(tinfo("fifo", tarfile.FIFOTYPE), None)]), "fifo", "FIFO"),
    "tar duplicate": (lambda p: write_tar(p, [(tinfo("a"), b"1"), (tinfo("a"), b"2")]), "a", "duplicate"),
    "tar link then write through it": (lambda p: write_tar(p, [(tinfo("d", tarfile.SYMTYPE, "."), None),
                                                                (tinfo("d/x"), b"x")]), "d/x", "not a directory"),
    "truncated tar.gz": (_truncated_tgz, None, "truncated"),
    "unsupported compression method": (_method9, "m.txt", "compression method 9"),
    "zip name too long": (lambda p: write_zip(p, [("ok.txt", b"x"), ("d" * 300 + "/f.txt", b"x")]),
                          "d" * 300 + "/f.txt", "cannot create"),
    "zip directory name too long": (lambda p: write_zip(p, [(zinfo("e" * 300 + "/", stat.S_IFDIR | 0o755), b"")]),
                                    "e" * 300 + "/", "cannot create"),
    "tar name too long": (lambda p: write_tar(p, [(tinfo("ok"), b"x"), (tinfo("t" * 300 + "/f.txt"), b"x")]),
                          "t" * 300 + "/f.txt", "cannot create"),
    "tar file name too long": (lambda p: write_tar(p, [(tinfo("ok"), b"x"), (tinfo("f" * 300), b"x")]),
                               "f" * 300, "cannot write"),
}


@pytest.fixture
def release(tmp_path):
    """A release directory with one good component; the test adds a bad one."""
    rel = tmp_path / "release"
    rel.mkdir()
    synthetic.write_component_zip(rel / GOOD.artifact, "good", 256 << 10)
    return rel


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_or_broken_artifact_is_rejected_naming_component_and_member(case, tmp_path, release):
    make, member, word = HOSTILE[case]
    artifact = "bad-2.0.tar.gz" if case.startswith(("tar", "truncated tar")) else "bad-2.0.zip"
    make(release / artifact)
    dest = tmp_path / "repo"
    before_outside = snapshot(tmp_path.parent)
    limits = Limits(max_unpacked=1 << 20) if case == "zip bomb total size" else Limits()
    bad = Job("bad", "2.0", artifact)

    result = extract_release([GOOD, bad], str(release), str(dest), ENV, limits=limits, workers=2)

    statuses = {o.component: o.status for o in result.outcomes}
    assert statuses == {"good": "extracted", "bad": "failed"}
    error = result.failures[0].error
    assert isinstance(error, ArtifactError)
    assert error.component == "bad" and "component bad" in str(error)
    if member is not None:
        assert error.member == member and repr(member) in str(error)
    assert word.lower() in str(error).lower(), str(error)
    # no partial output: nothing at all for the failed component, not even a temporary directory
    assert not (dest / ENV / "bad").exists() or list((dest / ENV / "bad").iterdir()) == []
    # the good component stands, and the manifest lists only it
    manifest = json.loads((dest / "manifest.json").read_text())
    assert set(manifest["components"]) == {"good"}
    assert (dest / ENV / "good" / "1.0" / "tree").is_dir()
    # nothing written outside --dest (the release and dest are the only things that changed)
    after_outside = snapshot(tmp_path.parent)
    new = {p for p in after_outside if p not in before_outside and not p.startswith(f"{tmp_path.name}/repo")}
    assert new == set()
    assert not os.path.lexists("/etc/evil.txt") and not os.path.lexists("/tmp/evil")
    # and the failure becomes one error listing the component
    with pytest.raises(ExtractionFailed) as exc:
        result.raise_for_failures()
    assert "component bad" in str(exc.value) and "1 component failed" in str(exc.value)


def test_checksum_mismatch_against_release_sha256sums(tmp_path, release):
    synthetic.write_component_zip(release / "other-1.zip", "other", 64 << 10)
    synthetic.write_sums(release, [GOOD.artifact, "other-1.zip"])
    sums = (release / "SHA256SUMS").read_text().replace(sha(release / "other-1.zip"), "0" * 64)
    (release / "SHA256SUMS").write_text(sums)
    result = extract_release([GOOD, Job("other", "1", "other-1.zip")], str(release), str(tmp_path / "repo"), ENV)
    (fail,) = result.failures
    assert fail.component == "other" and "checksum mismatch" in str(fail.error) and "0" * 64 in str(fail.error)
    assert not (tmp_path / "repo" / ENV / "other").exists() or not any((tmp_path / "repo" / ENV / "other").iterdir())


def test_artifact_missing_from_sha256sums_is_refused(tmp_path, release):
    synthetic.write_sums(release, [])
    result = extract_release([GOOD], str(release), str(tmp_path / "repo"), ENV)
    assert "not listed in the release's SHA256SUMS" in str(result.failures[0].error)


def test_zip_with_safe_links_extracts_them_inside(tmp_path, release):
    write_zip(release / "links-1.zip", [("lib/real.txt", b"real"), link("lib/alias.txt", "real.txt"),
                                        link("current", "lib")])
    result = extract_release([Job("links", "1", "links-1.zip")], str(release), str(tmp_path / "repo"), ENV)
    assert not result.failures
    tree = tmp_path / "repo" / ENV / "links" / "1" / "tree"
    assert os.readlink(tree / "lib" / "alias.txt") == "real.txt" and (tree / "current" / "real.txt").read_bytes() == b"real"


def test_unexpected_error_while_finishing_fails_only_that_component(tmp_path, release, monkeypatch):
    """Anything _finish (links, rename) raises is the component's ArtifactError; the others and the manifest stand."""
    write_zip(release / "links-1.zip", [("lib/real.txt", b"real"), link("lib/alias.txt", "real.txt")])
    real = archive_mod.make_links

    def boom(component, tree, members, done):
        if component == "links":
            raise ValueError("embedded null byte")
        return real(component, tree, members, done)

    monkeypatch.setattr(archive_mod, "make_links", boom)
    dest = tmp_path / "repo"
    result = extract_release([GOOD, Job("links", "1", "links-1.zip")], str(release), str(dest), ENV, workers=2)
    statuses = {o.component: o.status for o in result.outcomes}
    assert statuses == {"good": "extracted", "links": "failed"}
    error = result.failures[0].error
    assert error.component == "links" and "embedded null byte" in str(error)
    assert set(json.loads((dest / "manifest.json").read_text())["components"]) == {"good"}
    assert not (dest / ENV / "links").exists() or list((dest / ENV / "links").iterdir()) == []


def test_link_creation_error_names_the_member(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    tree.mkdir()
    members = [archive_mod.Member("lib/alias", archive_mod.SYMLINK, target="x", raw_name="lib/alias")]
    with pytest.raises(ArtifactError) as exc:  # lib/ does not exist: the OSError names the member
        archive_mod.make_links("c", str(tree), members, archive_mod.Extracted())
    assert exc.value.member == "lib/alias" and exc.value.component == "c"


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_made_from_a_directory_with_dot_root_extracts(mode, tmp_path, release):
    """`tar -C dir -cf x.tar .` starts with a './' directory member: it is the tree itself."""
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app.exe").write_bytes(b"binary")
    (src / "readme.txt").write_bytes(b"hello")
    artifact = "dot-1.tar.gz" if mode == "w:gz" else "dot-1.tar"
    subprocess.run(["tar", "-C", str(src), "-c" + ("z" if mode == "w:gz" else "") + "f", str(release / artifact), "."],
                   check=True)
    with tarfile.open(release / artifact) as tf:
        assert tf.getnames()[0] in (".", "./")
    dest = tmp_path / "repo"
    result = extract_release([Job("dot", "1", artifact)], str(release), str(dest), ENV)
    assert not result.failures, [str(o.error) for o in result.failures]
    tree = dest / ENV / "dot" / "1" / "tree"
    assert (tree / "bin" / "app.exe").read_bytes() == b"binary" and (tree / "readme.txt").read_bytes() == b"hello"
    assert set(json.loads((dest / "manifest.json").read_text())["components"]["dot"]["files"]) == {
        "bin/app.exe", "readme.txt"}


def test_zip_with_dot_directory_member_extracts(tmp_path, release):
    write_zip(release / "zdot-1.zip", [(zinfo("./", stat.S_IFDIR | 0o755), b""), ("./a.txt", b"a")])
    result = extract_release([Job("zdot", "1", "zdot-1.zip")], str(release), str(tmp_path / "repo"), ENV)
    assert not result.failures, [str(o.error) for o in result.failures]
    assert (tmp_path / "repo" / ENV / "zdot" / "1" / "tree" / "a.txt").read_bytes() == b"a"


def test_sha256sums_exact_line_wins_over_a_later_subdirectory_line(tmp_path, release):
    from deploy_tasks.artifacts import manifest as manifest_mod

    good = sha(release / GOOD.artifact)
    text = f"{good}  {GOOD.artifact}\n{'0' * 64}  old/{GOOD.artifact}\n"
    assert manifest_mod.parse_sums(text, "SUMS")[GOOD.artifact] == good
    (release / "SHA256SUMS").write_text(text)
    result = extract_release([GOOD], str(release), str(tmp_path / "repo"), ENV)
    assert not result.failures, [str(o.error) for o in result.failures]
    # the exact line wins in either order
    (release / "SHA256SUMS").write_text(f"{'0' * 64}  old/{GOOD.artifact}\n{good}  ./{GOOD.artifact}\n")
    assert manifest_mod.parse_sums((release / "SHA256SUMS").read_text(), "S")[GOOD.artifact] == good


def test_sha256sums_conflicting_subdirectory_lines_fail_the_component_naming_both(tmp_path, release):
    write_zip(release / "other-1.zip", [("o.txt", b"o")])
    good = sha(release / GOOD.artifact)
    (release / "SHA256SUMS").write_text(f"{sha(release / 'other-1.zip')}  other-1.zip\n"
                                        f"{good}  new/{GOOD.artifact}\n{'0' * 64}  old/{GOOD.artifact}\n")
    dest = tmp_path / "repo"
    result = extract_release([GOOD, Job("other", "1", "other-1.zip")], str(release), str(dest), ENV)
    by = {o.component: o for o in result.outcomes}
    assert by["other"].status == "extracted" and by["good"].status == "failed"
    text = str(by["good"].error)
    assert "component good" in text and "line 2" in text and "line 3" in text
    assert f"new/{GOOD.artifact}" in text and f"old/{GOOD.artifact}" in text
    assert set(json.loads((dest / "manifest.json").read_text())["components"]) == {"other"}


def _bundle_with_sums(path: Path, form: str, members) -> Path:
    """members: (name, bytes) written into a zip, tar or tar.gz bundle in that order."""
    if form == "zip":
        return write_zip(path, [(n, d, zipfile.ZIP_STORED) for n, d in members])
    return write_tar(path, [(tinfo(n), d) for n, d in members], "w:gz" if form == "tar.gz" else "w")


@pytest.mark.parametrize("form", ["zip", "tar", "tar.gz"])
def test_bundle_uses_the_sha256sums_nearest_the_root(form, tmp_path, release):
    data = (release / GOOD.artifact).read_bytes()
    good = hashlib.sha256(data).hexdigest()
    bundle = _bundle_with_sums(tmp_path / f"b.{form}", form, [
        ("rel/old/SHA256SUMS", f"{'0' * 64}  {GOOD.artifact}\n".encode()),  # deeper, comes first: ignored
        (f"rel/{GOOD.artifact}", data),
        ("rel/SHA256SUMS", f"{good}  {GOOD.artifact}\n".encode()),
    ])
    result = extract_release([GOOD], str(bundle), str(tmp_path / "repo"), ENV)
    assert [o.status for o in result.outcomes] == ["extracted"], [str(o.error) for o in result.failures]


@pytest.mark.parametrize("form", ["zip", "tar", "tar.gz"])
def test_bundle_with_disagreeing_sha256sums_at_the_same_depth_is_refused(form, tmp_path, release):
    data = (release / GOOD.artifact).read_bytes()
    good = hashlib.sha256(data).hexdigest()
    bundle = _bundle_with_sums(tmp_path / f"b.{form}", form, [
        ("a/SHA256SUMS", f"{'0' * 64}  {GOOD.artifact}\n".encode()),
        (f"a/{GOOD.artifact}", data),
        ("b/SHA256SUMS", f"{good}  {GOOD.artifact}\n".encode()),
    ])
    with pytest.raises(ConfigError) as exc:
        extract_release([GOOD], str(bundle), str(tmp_path / "repo"), ENV)
    assert "a/SHA256SUMS" in str(exc.value) and "b/SHA256SUMS" in str(exc.value)
    assert not (tmp_path / "repo" / ENV).exists()


@pytest.mark.parametrize("form", ["zip", "tar", "tar.gz"])
def test_bundled_artifact_over_the_size_limit_is_not_copied(form, tmp_path, release, monkeypatch):
    """A small bundle holding a huge (compressible) artifact: refused on its size before it is copied or staged."""
    from deploy_tasks.artifacts import extract as extract_mod

    big = Job("big", "1", "big-1.zip")
    bundle = tmp_path / f"b.{form}"
    if form == "zip":
        write_zip(bundle, [(f"rel/{GOOD.artifact}", (release / GOOD.artifact).read_bytes(), zipfile.ZIP_STORED),
                           (f"rel/{big.artifact}", bytes(3 << 20), zipfile.ZIP_DEFLATED)])
    else:
        write_tar(bundle, [(tinfo(f"rel/{GOOD.artifact}"), (release / GOOD.artifact).read_bytes()),
                           (tinfo(f"rel/{big.artifact}"), bytes(3 << 20))], "w:gz" if form == "tar.gz" else "w")
    copied = []
    real_copy = extract_mod._copy_hashing
    monkeypatch.setattr(extract_mod, "_copy_hashing", lambda ref, dest, limit=0: copied.append(ref.name)
                        or real_copy(ref, dest, limit))
    dest = tmp_path / "repo"
    result = extract_release([GOOD, big], str(bundle), str(dest), ENV, limits=Limits(max_unpacked=1 << 20), workers=2)
    by = {o.component: o for o in result.outcomes}
    assert by["good"].status == "extracted" and by["big"].status == "failed"
    assert "component big" in str(by["big"].error) and "size limit" in str(by["big"].error)
    assert big.artifact not in copied
    assert set(json.loads((dest / "manifest.json").read_text())["components"]) == {"good"}
    assert not (dest / ENV / "big").exists() or list((dest / ENV / "big").iterdir()) == []


def test_bundled_artifact_copy_is_bounded_while_copying(tmp_path):
    """Even when the declared size lies, the copy stops at the limit."""
    from deploy_tasks.artifacts import extract as extract_mod

    bundle = write_zip(tmp_path / "b.zip", [("big-1.zip", bytes(3 << 20))])
    ref = source_mod.ArtifactRef("big", "big-1.zip", str(bundle), "big-1.zip", size=10, kind="zip-member")
    out = tmp_path / "copy"
    with pytest.raises(ArtifactError, match="size limit") as exc:
        extract_mod._copy_hashing(ref, str(out), 1 << 20)
    assert exc.value.component == "big"
    assert out.stat().st_size <= 1 << 20


def test_tar_artifact_with_inside_hardlink(tmp_path, release):
    write_tar(release / "t-1.tar.gz", [(tinfo("bin/a.exe"), b"binary"), (tinfo("bin/b.exe", tarfile.LNKTYPE, "bin/a.exe"), None)])
    result = extract_release([Job("t", "1", "t-1.tar.gz")], str(release), str(tmp_path / "repo"), ENV)
    assert not result.failures
    manifest = json.loads((tmp_path / "repo" / "manifest.json").read_text())
    assert manifest["components"]["t"]["files"] == {"bin/a.exe": hashlib.sha256(b"binary").hexdigest(),
                                                    "bin/b.exe": hashlib.sha256(b"binary").hexdigest()}


# -- good releases in every form ------------------------------------------------------

COMPONENTS = [("alpha", "1.0", "alpha-1.0.zip"), ("beta", "2.1", "beta-2.1.zip"), ("gamma", "0.9", "gamma-0.9.zip")]


def _check_repository(dest: Path, release_dir: Path, components) -> None:
    """Verify manifest.json and SHA256SUMS against the files themselves, with hashlib."""
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["environment"] == ENV
    assert set(manifest["components"]) == {c[0] for c in components}
    sums_lines = (dest / "SHA256SUMS").read_text().splitlines()
    assert len(sums_lines) == len(components)
    for name, version, artifact in components:
        entry = manifest["components"][name]
        base = dest / ENV / name / version
        assert entry["path"] == f"{ENV}/{name}/{version}/{artifact}"
        assert entry["version"] == version and entry["artifact"] == artifact
        assert entry["sha256"] == sha(base / artifact) == sha(release_dir / artifact)
        assert entry["size"] == (base / artifact).stat().st_size
        assert f"{entry['sha256']}  {entry['path']}" in sums_lines
        with zipfile.ZipFile(release_dir / artifact) as zf:
            names = {i.filename for i in zf.infolist() if not i.is_dir()}
            assert set(entry["files"]) == names
            for member in names:  # the extracted bytes are the archive's bytes, and the manifest says so
                data = (base / "tree" / member).read_bytes()
                assert data == zf.read(member)
                assert entry["files"][member] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("form", ["dir", "zip", "tar", "tar.gz"])
def test_good_release_in_every_form(form, tmp_path):
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=[300 << 10, 2 << 20, 64 << 10])
    source = rel if form == "dir" else synthetic.write_bundle(rel, tmp_path / f"bundle.{form}", form)
    dest = tmp_path / "repo"
    jobs = [Job(*c) for c in COMPONENTS]
    result = extract_release(jobs, str(source), str(dest), ENV, workers=2, chunk_bytes=256 << 10)
    assert [o.status for o in result.outcomes] == ["extracted"] * 3, [str(o.error) for o in result.failures]
    _check_repository(dest, rel, COMPONENTS)
    assert not [p for p in dest.rglob("*") if ".tmp-" in p.name or ".staging-" in p.name]
    # re-run from the same form: nothing to do, nothing rewritten
    before = snapshot(dest / ENV)
    again = extract_release(jobs, str(source), str(dest), ENV, workers=2)
    assert {o.status for o in again.outcomes} == {"unchanged"}
    assert snapshot(dest / ENV) == before


def test_process_pool_gives_the_same_repository(tmp_path):
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=256 << 10)
    write_zip(rel / "bad-1.zip", [("../x", b"x")])
    resum(rel)
    jobs = [Job(*c) for c in COMPONENTS] + [Job("bad", "1", "bad-1.zip")]
    result = extract_release(jobs, str(rel), str(tmp_path / "repo"), ENV, workers=2, executor="process")
    assert [o.status for o in result.outcomes] == ["extracted"] * 3 + ["failed"]
    assert result.failures[0].error.member == "../x"
    _check_repository(tmp_path / "repo", rel, COMPONENTS)


# -- incremental ----------------------------------------------------------------------------

def test_unchanged_rerun_reads_no_artifact_and_rewrites_nothing(tmp_path, monkeypatch):
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=128 << 10)
    dest = tmp_path / "repo"
    jobs = [Job(*c) for c in COMPONENTS]
    monkeypatch.setattr(source_mod, "RACY_NS", 0)  # the files were written just now; see stat_key
    extract_release(jobs, str(rel), str(dest), ENV)
    before = snapshot(dest)

    def refuse(*a, **k):
        raise AssertionError("an unchanged artifact was read")

    monkeypatch.setattr(source_mod.ArtifactRef, "open", refuse)
    monkeypatch.setattr(archive_mod, "zip_members", refuse)
    result = extract_release(jobs, str(rel), str(dest), ENV)
    assert {o.status for o in result.outcomes} == {"unchanged"}
    assert not result.manifest_written
    assert snapshot(dest) == before  # not one file of the repository rewritten, manifest included


def test_touched_artifact_is_hashed_not_extracted(tmp_path, monkeypatch):
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=128 << 10)
    dest = tmp_path / "repo"
    jobs = [Job(*c) for c in COMPONENTS]
    monkeypatch.setattr(source_mod, "RACY_NS", 0)
    extract_release(jobs, str(rel), str(dest), ENV)
    before = snapshot(dest / ENV)
    os.utime(rel / "beta-2.1.zip")  # same content, new mtime: the stat key no longer vouches for it

    monkeypatch.setattr(archive_mod, "zip_members", lambda *a, **k: pytest.fail("members were read"))
    result = extract_release(jobs, str(rel), str(dest), ENV)
    by = {o.component: o for o in result.outcomes}
    assert by["beta"].status == "unchanged" and by["beta"].reason == "sha256 unchanged"
    assert by["alpha"].reason == "not modified since hashed"
    assert snapshot(dest / ENV) == before


def test_changed_artifact_or_version_is_extracted_again(tmp_path):
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=128 << 10)
    dest = tmp_path / "repo"
    extract_release([Job(*c) for c in COMPONENTS], str(rel), str(dest), ENV)
    old_alpha = snapshot(dest / ENV / "alpha")
    # beta: same version, new content; gamma: a new version
    synthetic.write_component_zip(rel / "beta-2.1.zip", "beta", 200 << 10, seed=7)
    synthetic.write_component_zip(rel / "gamma-1.0.zip", "gamma", 100 << 10)
    resum(rel)
    jobs = [Job("alpha", "1.0", "alpha-1.0.zip"), Job("beta", "2.1", "beta-2.1.zip"), Job("gamma", "1.0", "gamma-1.0.zip")]
    result = extract_release(jobs, str(rel), str(dest), ENV)
    by = {o.component: o for o in result.outcomes}
    assert (by["alpha"].status, by["beta"].status, by["gamma"].status) == ("unchanged", "extracted", "extracted")
    assert by["beta"].reason == "artifact changed" and by["gamma"].reason == "new version"
    assert snapshot(dest / ENV / "alpha") == old_alpha
    _check_repository(dest, rel, [(j.component, j.version, j.artifact) for j in jobs])
    assert not [p for p in (dest / ENV / "beta").iterdir() if p.name.startswith(".")]


def test_failed_component_keeps_its_previous_good_version(tmp_path):
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=64 << 10)
    dest = tmp_path / "repo"
    extract_release([Job(*c) for c in COMPONENTS], str(rel), str(dest), ENV)
    write_zip(rel / "alpha-1.1.zip", [("../../escape", b"x")])
    write_zip(rel / "beta-2.1.zip", [("a", b"1"), ("A", b"2")])  # same version, now broken
    resum(rel)
    jobs = [Job("alpha", "1.1", "alpha-1.1.zip"), Job("beta", "2.1", "beta-2.1.zip"), Job("gamma", "0.9", "gamma-0.9.zip")]
    result = extract_release(jobs, str(rel), str(dest), ENV)
    assert sorted(o.component for o in result.failures) == ["alpha", "beta"]
    with pytest.raises(ExtractionFailed) as exc:
        result.raise_for_failures()
    assert "2 components failed" in str(exc.value)
    assert "component alpha" in str(exc.value) and "component beta" in str(exc.value)
    manifest = json.loads((dest / "manifest.json").read_text())
    # alpha 1.0 and beta's previous good extraction still stand and are still listed
    assert manifest["components"]["alpha"]["version"] == "1.0"
    assert (dest / ENV / "alpha" / "1.0" / "tree").is_dir() and not (dest / ENV / "alpha" / "1.1").exists()
    assert manifest["components"]["beta"]["sha256"] == sha(dest / ENV / "beta" / "2.1" / "beta-2.1.zip")


def test_missing_artifact_names_component_and_file(tmp_path, release):
    result = extract_release([GOOD, Job("absent", "3", "absent-3.zip"), Job("spare", "1", "spare-1.zip", required=False)],
                             str(release), str(tmp_path / "repo"), ENV)
    by = {o.component: o for o in result.outcomes}
    assert by["absent"].status == "failed"
    assert "component absent" in str(by["absent"].error) and str(release / "absent-3.zip") in str(by["absent"].error)
    assert by["spare"].status == "not-mapped" and by["good"].status == "extracted"


def test_dry_run_writes_nothing(tmp_path, release):
    result = extract_release([GOOD], str(release), str(tmp_path / "repo"), ENV, dry_run=True)
    assert [o.status for o in result.outcomes] == ["would-extract"]
    assert not (tmp_path / "repo").exists()


def test_second_writer_is_refused(tmp_path, release):
    dest = tmp_path / "repo"
    dest.mkdir()
    from deploy_tasks.artifacts.extract import _lock

    held = _lock(str(dest))
    try:
        with pytest.raises(ConfigError, match="another extract-artifacts"):
            extract_release([GOOD], str(release), str(dest), ENV)
    finally:
        held.close()


# -- the task, as a user runs it ---------------------------------------------------------------

def run_inv(*args, cwd=ROOT, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(INV + list(args), cwd=cwd, capture_output=True, text=True, env=full_env, timeout=300)


def test_task_on_the_example_inventory(tmp_path):
    rel, dest = tmp_path / "release", tmp_path / "repo"
    made = run_inv("make-release", "--dest", str(rel), "--size-mb", "1")
    assert made.returncode == 0, made.stderr
    first = run_inv("extract-artifacts", "--source", str(rel), "--dest", str(dest), "--workers", "2")
    assert first.returncode == 0, first.stderr
    lines = [l for l in first.stdout.splitlines() if l.startswith("extracted")]
    assert len(lines) == 34  # one plain line per component when not a terminal
    assert "34 components: 34 extracted" in first.stdout
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["components"]["zeo_server"]["version"] == "5.4.0"
    assert manifest["components"]["zeo_server"]["sha256"] == sha(rel / "zeo_server-5.4.0.zip")
    again = run_inv("extract-artifacts", "--source", str(rel), "--dest", str(dest))
    assert again.returncode == 0 and "34 components: 34 unchanged" in again.stdout
    # a refusal to overwrite artifacts that are there
    refused = run_inv("make-release", "--dest", str(rel))
    assert refused.returncode == 1 and "--force" in refused.stderr


def test_task_exits_nonzero_listing_every_failed_component(tmp_path):
    rel, dest = tmp_path / "release", tmp_path / "repo"
    assert run_inv("make-release", "--dest", str(rel), "--size-mb", "1").returncode == 0
    write_zip(rel / "zeo_server-5.4.0.zip", [("/abs/path", b"x")])
    (rel / "catalog-4.8.11.zip").unlink()
    resum(rel)
    out = run_inv("extract-artifacts", "--source", str(rel), "--dest", str(dest))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "2 components failed (32 done" in out.stderr
    assert "component zeo_server, member '/abs/path': absolute path" in out.stderr
    assert "component catalog: artifact catalog-4.8.11.zip is missing" in out.stderr
    assert len(json.loads((dest / "manifest.json").read_text())["components"]) == 32


def test_task_dry_run_and_missing_release(tmp_path):
    missing = run_inv("extract-artifacts", "--source", str(tmp_path / "nope"), "--dest", str(tmp_path / "repo"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    rel = tmp_path / "release"
    assert run_inv("make-release", "--dest", str(rel), "--size-mb", "1").returncode == 0
    dry = run_inv("extract-artifacts", "--source", str(rel), "--dest", str(tmp_path / "repo"), "--dry-run")
    assert dry.returncode == 0 and "34 would-extract" in dry.stdout
    assert not (tmp_path / "repo").exists()


def test_progress_bar_when_interactive_and_lines_otherwise():
    from deploy_tasks.artifacts import Outcome
    from deploy_tasks.report.progress import ComponentProgress

    done = Outcome("zeo_server", "5.4.0", "extracted", files=12, size=3 << 20, artifact_size=1 << 20, seconds=0.5,
                   reason="new")
    same = Outcome("catalog", "4.8.11", "unchanged", reason="sha256 unchanged")
    plain = io.StringIO()
    p = ComponentProgress(stream=plain, interactive=False)
    p.begin(2, 10)
    p.finished(done)
    p.finished(same)
    p.close()
    assert plain.getvalue().splitlines() == [
        "extracted     zeo_server 5.4.0: 12 files, 3.0 MiB from 1.0 MiB in 0.5s (new)",
        "unchanged     catalog 4.8.11: sha256 unchanged",
    ]
    tty = io.StringIO()
    bar = ComponentProgress(stream=tty, interactive=True)
    bar.begin(2, 10)
    bar.advance(5)
    bar.finished(done)
    bar.finished(same)
    bar.close()
    assert "zeo_server 5.4.0: 12 files" in tty.getvalue() and "catalog" not in tty.getvalue()


def test_release_sums_disagreeing_with_the_manifest_force_a_hash(tmp_path, monkeypatch):
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=64 << 10)
    dest = tmp_path / "repo"
    monkeypatch.setattr(source_mod, "RACY_NS", 0)
    extract_release([Job(*c) for c in COMPONENTS], str(rel), str(dest), ENV)
    sums = (rel / "SHA256SUMS").read_text().replace(sha(rel / "alpha-1.0.zip"), "f" * 64)
    (rel / "SHA256SUMS").write_text(sums)  # the release now claims another alpha than the one extracted
    result = extract_release([Job(*c) for c in COMPONENTS], str(rel), str(dest), ENV)
    (fail,) = result.failures
    assert fail.component == "alpha" and "checksum mismatch" in str(fail.error)


def test_dry_run_on_a_tar_gz_bundle_writes_nothing(tmp_path):
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=64 << 10)
    bundle = synthetic.write_bundle(rel, tmp_path / "release.tar.gz", "tar.gz")
    result = extract_release([Job(*c) for c in COMPONENTS], str(bundle), str(tmp_path / "repo"), ENV, dry_run=True)
    assert [o.status for o in result.outcomes] == ["would-extract"] * 3
    assert not (tmp_path / "repo").exists()


def test_too_many_members_is_refused(tmp_path, release):
    write_zip(release / "many-1.zip", [(f"f{i}.txt", b"x") for i in range(5)])
    result = extract_release([Job("many", "1", "many-1.zip")], str(release), str(tmp_path / "repo"), ENV,
                             limits=Limits(max_members=4))
    assert "5 members, more than the limit of 4" in str(result.failures[0].error)
    assert "artifact_max_members" in str(result.failures[0].error)


def test_without_copy_file_range_the_copies_fall_back_to_reads(tmp_path, monkeypatch):
    def unsupported(*a, **k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=[300 << 10, 2 << 20, 64 << 10])
    result = extract_release([Job(*c) for c in COMPONENTS], str(rel), str(tmp_path / "repo"), ENV, executor="thread")
    assert not result.failures
    _check_repository(tmp_path / "repo", rel, COMPONENTS)


@pytest.mark.parametrize("case", ["corrupt deflate data", "size mismatch", "zip bomb ratio"])
def test_without_isal_zipfile_inflates_and_the_checks_hold(case, tmp_path, release, monkeypatch):
    monkeypatch.setattr(archive_mod, "_inflate_lib", None)
    make, member, word = HOSTILE[case]
    make(release / "bad-2.0.zip")
    result = extract_release([GOOD, Job("bad", "2.0", "bad-2.0.zip")], str(release), str(tmp_path / "repo"), ENV)
    assert [o.status for o in result.outcomes] == ["extracted", "failed"]
    error = result.failures[0].error
    assert error.member == member and word.lower() in str(error).lower()
    _check_repository(tmp_path / "repo", release, [("good", "1.0", "good-1.0.zip")])


def test_artifact_linked_from_outside_the_release_is_refused(tmp_path, release):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    synthetic.write_component_zip(elsewhere / "secret.zip", "secret", 64 << 10)
    os.symlink(elsewhere / "secret.zip", release / "bad-2.0.zip")
    result = extract_release([GOOD, Job("bad", "2.0", "bad-2.0.zip")], str(release), str(tmp_path / "repo"), ENV)
    assert {o.component: o.status for o in result.outcomes} == {"good": "extracted", "bad": "failed"}
    assert "outside the release" in str(result.failures[0].error)


def test_sha256sums_with_a_byte_order_mark(tmp_path, release):
    import hashlib

    digest = hashlib.sha256((release / GOOD.artifact).read_bytes()).hexdigest()
    (release / "SHA256SUMS").write_text("\ufeff" + f"{digest}  {GOOD.artifact}\n", encoding="utf-8")
    result = extract_release([GOOD], str(release), str(tmp_path / "repo"), ENV)
    assert [o.status for o in result.outcomes] == ["extracted"]
