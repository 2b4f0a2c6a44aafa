"""Extract a release into the package repository: concurrent, verified, incremental.

For each component (in a pool of workers, largest artifact first):

Workers are threads by default (setting extract_executor): inflate (ISA-L),
sha256, CRC, copy_file_range and file writes all run without the GIL, and on
this 2-core machine a thread pool measured 12-20% faster than a process pool
(6 alternating runs of each); see bench/extract.py.

0. reconcile: every manifest entry whose files on disk no longer have the
   size and modification time it recorded (damage, a killed run) is withdrawn
   and its component extracted again (``--verify``: re-hashed instead);
1. decide: an artifact whose version matches the manifest and whose stat key
   (see ``source.stat_key``) is unchanged is skipped without being read; one
   whose key changed is hashed (one streaming sha256) and skipped if its
   sha256 still matches;
2. copy the artifact into a temporary directory beside its target, hashing as
   it goes, and check that sha256 against the release's SHA256SUMS;
3. check the archive's member list (``safety``), then extract it from that
   copy (so what is extracted is exactly what was hashed): a zip in chunks,
   each chunk through its own ``ZipFile`` handle and a worker of its own, a
   tar or tar.gz streamed in one pass;
4. swap the temporary directory into place when everything is there, and
   record the component in the manifest (see ``_Ledger``).

A component that fails leaves nothing behind (its temporary directory is
removed, a previous good version is untouched); the others finish. The
manifest and SHA256SUMS are rewritten (atomically) as each component
completes, so a kill or Ctrl-C keeps what finished and never leaves the
manifest describing bytes the tree does not hold.
"""

from __future__ import annotations

import concurrent.futures as cf
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

from .. import atomic
from ..errors import ArtifactError, ConfigError, ExtractionFailed
from . import archive as archive_mod
from . import manifest as manifest_mod
from .archive import BLOCK, Extracted
from .failure import component_errors
from .safety import FILE, Limits, Member
from .source import ArtifactRef, Release

CHUNK_BYTES = 32 << 20  # a zip is split into work units of about this many unpacked bytes
LOCK = ".extract.lock"


@dataclass(frozen=True)
class Job:
    """One component to put into the repository."""

    component: str
    version: str
    artifact: str
    required: bool = True  # mapped to a host: a missing artifact is an error


@dataclass
class Outcome:
    """What happened to one component."""

    component: str
    version: str
    status: str  # extracted, unchanged, would-extract, not-mapped, failed
    files: int = 0
    size: int = 0  # unpacked bytes
    artifact_size: int = 0
    seconds: float = 0.0
    reason: str = ""
    error: Optional[ArtifactError] = None


@dataclass
class Result:
    dest: str
    outcomes: List[Outcome]
    manifest_written: bool = False
    seconds: float = 0.0

    @property
    def failures(self) -> List[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def by_status(self, status: str) -> List[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def raise_for_failures(self) -> None:
        failed = self.failures
        if failed:
            raise ExtractionFailed([o.error for o in failed], done=len(self.outcomes) - len(failed))


def jobs_from_inventory(inventory) -> List[Job]:
    """One job per component of the Components sheet; required when the Mapping places it on a host."""
    return [Job(c.name, c.version, c.artifact, bool(inventory.hosts_for(c.name))) for c in inventory.components]


# -- work units (top-level functions: they also run in a process pool) ----------

@dataclass
class Prepared:
    component: str
    status: str  # unchanged, would-extract, work
    entry: Optional[dict] = None
    reason: str = ""
    tmp: str = ""
    kind: str = ""  # zip, tar, tar.gz
    members: List[Member] = field(default_factory=list)
    chunks: List[List[int]] = field(default_factory=list)
    sha256: str = ""
    artifact_size: int = 0
    started: float = 0.0  # time.monotonic() when a worker took it up


def _target(dest: str, env: str, job: Job) -> str:
    return os.path.join(dest, env, job.component, job.version)


def _damage(dest: str, env: str, job: Job, entry: Optional[dict], rehash: bool = False) -> Optional[str]:
    """None when the manifest's entry is this version and its files are on disk as recorded, else what differs.

    Every file is compared by size and modification time (``disk`` in the
    entry: a stat per file, no read); ``rehash`` (--verify) also hashes every
    file and compares it with the sha256 the manifest holds.
    """
    if not entry or entry.get("version") != job.version or entry.get("artifact") != job.artifact:
        return "not in the repository"
    return disk_damage(_target(dest, env, job), entry, rehash)


def disk_damage(version_dir: str, entry: dict, rehash: bool = False) -> Optional[str]:
    """What in ``version_dir`` (``<env>/<component>/<version>``) differs from its manifest entry, or None."""
    recorded = entry.get("disk")
    if not isinstance(recorded, dict):
        return "recorded before file sizes and times were kept"
    prefix = version_dir + os.sep  # one lstat per file, and no more than that: a re-run's whole cost
    lstat = os.lstat
    try:
        for rel, (size, mtime_ns) in recorded.items():
            st = lstat(prefix + rel)
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                return f"{rel} was modified"
    except OSError:
        return f"{rel} is missing"
    except (TypeError, ValueError):
        return "its recorded sizes and times are unreadable"
    if not rehash:
        return None
    expected = {entry["artifact"]: entry.get("sha256")}
    expected.update({f"tree/{rel}": sha for rel, sha in entry.get("files", {}).items()})
    for rel, sha in expected.items():
        path = os.path.join(version_dir, rel)
        try:
            with open(path, "rb") as fh:
                if hashlib.file_digest(fh, "sha256").hexdigest() != sha:
                    return f"{rel} does not match its sha256"
        except OSError:
            return f"{rel} cannot be read"
    for rel, target in entry.get("links", {}).items():
        try:
            if os.readlink(os.path.join(version_dir, "tree", rel)) != target.replace("\\", "/"):
                return f"tree/{rel} points elsewhere"
        except OSError:
            return f"tree/{rel} is missing"
    return None


def _disk_record(version_dir: str, artifact: str, done: Extracted) -> Dict[str, list]:
    """[size, mtime_ns] of the artifact and of every extracted file and link, by path inside the version dir."""
    record = {}
    for rel in [artifact] + [f"tree/{name}" for name in sorted(set(done.files) | set(done.links))]:
        st = os.lstat(os.path.join(version_dir, rel))
        record[rel] = [st.st_size, st.st_mtime_ns]
    return record


def _why(entry: Optional[dict], job: Job, damage: Optional[str], intact: bool, dry_run: bool = False) -> str:
    """The reason a component is (or would be) extracted."""
    if intact:
        return "artifact changed"
    if not entry:
        return "not in the repository" if dry_run else "new"
    if entry.get("version") != job.version or entry.get("artifact") != job.artifact:
        return "new version"
    return f"repaired: {damage}"


def _hash_stream(ref: ArtifactRef) -> str:
    digest = hashlib.sha256()
    with ref.open() as src:
        while True:
            buf = src.read(BLOCK)
            if not buf:
                break
            digest.update(buf)
    return digest.hexdigest()


#: artifacts held in a bundle: copying one out of it may write far more than the bundle's size
BUNDLED = ("zip-member", "tar-member", "staged", "too-large")


def _too_large(ref: ArtifactRef, size: int, limit: int) -> ArtifactError:
    return ArtifactError(ref.component, f"{ref.name} in the release bundle is {size} bytes or more, above the "
                         f"{limit >> 20} MiB artifact size limit; it was not copied (zip bomb guard)",
                         hint="setting artifact_max_unpacked_mb")


def _check_bundled_size(ref: ArtifactRef, limits: Limits) -> None:
    """A bundle's member is refused before a byte of it is copied when its declared size is over the limit."""
    if ref.kind in BUNDLED and (ref.kind == "too-large" or ref.size > limits.max_unpacked):
        raise _too_large(ref, ref.size, limits.max_unpacked)


def _copy_hashing(ref: ArtifactRef, dest: str, limit: int = 0) -> tuple:
    if ref.kind == "staged":
        os.rename(ref.origin, dest)  # staged beside the repository: a rename, then one read to hash
        with open(dest, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256")
        return digest.hexdigest(), os.path.getsize(dest)
    if ref.kind == "file":
        # copied inside the kernel (copy_file_range: several times faster than write() here), then the
        # copy is hashed: what is hashed is exactly what gets extracted, whatever happens to the source
        with open(ref.origin, "rb") as src:
            out = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                archive_mod.copy_range(src.fileno(), out, 0, os.fstat(src.fileno()).st_size)
                sha, _crc, size = archive_mod.hash_fd(out)
            finally:
                os.close(out)
        return sha, size
    digest = hashlib.sha256()
    size = 0
    with ref.open() as src, open(dest, "wb") as out:
        while True:
            buf = src.read(BLOCK)
            if not buf:
                break
            if limit and size + len(buf) > limit:  # bounded while copying, whatever the bundle declared
                raise _too_large(ref, size + len(buf), limit)
            digest.update(buf)
            out.write(buf)
            size += len(buf)
    return digest.hexdigest(), size


def _check_expected(job: Job, sha: str, expected: Optional[str], sums_given: bool) -> None:
    if not sums_given:
        return
    if expected is None:
        raise ArtifactError(job.component, f"{job.artifact} is not listed in the release's SHA256SUMS",
                            hint="list every artifact there (sha256sum *.zip > SHA256SUMS) or remove the file")
    if sha != expected:
        raise ArtifactError(job.component, f"checksum mismatch for {job.artifact}: sha256 {sha}, the release's "
                            f"SHA256SUMS says {expected}", hint="the artifact is corrupt or not the one released")


def _clean_stale(comp_dir: str) -> None:
    """Remove temporary directories a killed run left (we hold the repository lock)."""
    try:
        names = os.listdir(comp_dir)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(".") and (".tmp-" in name or ".old-" in name):
            shutil.rmtree(os.path.join(comp_dir, name), ignore_errors=True)


def prepare(job: Job, ref: ArtifactRef, entry: Optional[dict], expected: Optional[str], sums_given: bool,
            dest: str, env: str, limits: Limits, dry_run: bool, chunk_bytes: int = CHUNK_BYTES,
            verify: bool = False) -> Prepared:
    """Decide, and when there is work: copy + hash the artifact into a fresh directory and check its members."""
    started = time.monotonic()
    with component_errors(job.component):  # disk full, permissions...: still this component's failure only
        prepared = _prepare(job, ref, entry, expected, sums_given, dest, env, limits, dry_run, chunk_bytes, verify)
    prepared.started = started
    return prepared


def _prepare(job, ref, entry, expected, sums_given, dest, env, limits, dry_run, chunk_bytes, verify) -> Prepared:
    _check_bundled_size(ref, limits)
    damage = _damage(dest, env, job, entry, rehash=verify)
    intact = damage is None
    if intact or dry_run:
        sha = _hash_stream(ref)
        _check_expected(job, sha, expected, sums_given)
        if intact and sha == entry["sha256"]:
            new = dict(entry, source=ref.record())
            return Prepared(job.component, "unchanged", entry=new, reason="sha256 unchanged")
        if dry_run:
            return Prepared(job.component, "would-extract", reason=_why(entry, job, damage, intact, dry_run=True),
                            sha256=sha, artifact_size=ref.size)
    comp_dir = os.path.join(dest, env, job.component)
    os.makedirs(comp_dir, exist_ok=True)
    _clean_stale(comp_dir)
    tmp = os.path.join(comp_dir, f".{job.version}.tmp-{os.getpid()}-{os.urandom(3).hex()}")
    os.mkdir(tmp, 0o755)
    try:
        artifact_path = os.path.join(tmp, job.artifact)
        sha, size = _copy_hashing(ref, artifact_path, limits.max_unpacked if ref.kind in BUNDLED else 0)
        _check_expected(job, sha, expected, sums_given)
        kind = archive_mod.archive_kind(artifact_path)
        tree = os.path.join(tmp, "tree")
        os.mkdir(tree, 0o755)
        prepared = Prepared(job.component, "work", tmp=tmp, kind=kind, sha256=sha, artifact_size=size,
                            reason=_why(entry, job, damage, intact))
        if kind == "zip":
            prepared.members = archive_mod.zip_members(job.component, artifact_path, limits)
            archive_mod.make_dirs(tree, prepared.members, job.component)
            prepared.chunks = archive_mod.plan_chunks(prepared.members, chunk_bytes)
        elif kind not in ("tar", "tar.gz"):
            raise ArtifactError(job.component, f"{job.artifact} is not a zip, tar or tar.gz archive "
                                "(or it is truncated to nothing)", hint="rebuild or re-download the artifact")
        return prepared
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def extract_chunk(component: str, archive: str, tree: str, indices: List[int]) -> Extracted:
    with component_errors(component):
        return archive_mod.extract_zip_chunk(component, archive, tree, indices)


def extract_stream(component: str, archive: str, tree: str, limits: Limits) -> Extracted:
    with component_errors(component):
        return archive_mod.extract_tar(component, archive, tree, limits)


# -- the manifest, kept true while the run goes ----------------------------------------

class _Ledger:
    """manifest.json as the repository is now, rewritten (atomically) as each component completes.

    A component whose tree is about to be replaced is withdrawn first, and
    recorded again once its new tree is in place: killed at any moment, the
    manifest never describes bytes the tree does not hold.
    """

    def __init__(self, dest: str, environment: str, components: Dict[str, dict], dry_run: bool):
        self.dest, self.environment, self.dry_run = dest, environment, dry_run
        self.components = dict(components)
        self.loaded = dict(components)  # what manifest.json held when the run started
        self.written = False

    def _write(self, sums_only: bool = False) -> None:
        if self.dry_run:
            return
        manifest = {"format": manifest_mod.FORMAT, "environment": self.environment,
                    "components": {name: self.components[name] for name in sorted(self.components)}}
        self.written = manifest_mod.write(self.dest, manifest, sums_only) or self.written

    def withdraw(self, names: Iterable[str]) -> None:
        gone = [name for name in names if self.components.pop(name, None) is not None]
        if gone:
            self._write()

    def record(self, name: str, entry: dict) -> None:
        if self.components.get(name) != entry:
            self.components[name] = entry
            self._write()

    def settle(self, components: Dict[str, dict]) -> None:
        """The run's final word: exactly these entries (components no longer in the workbook go)."""
        self.components = dict(components)
        # writes only what differs from the files on disk; an unchanged manifest is not even rendered (a
        # re-run's main cost), and SHA256SUMS is made to match it (a run killed between the two)
        unchanged = not self.written and components == self.loaded and \
            os.path.exists(os.path.join(self.dest, manifest_mod.MANIFEST))
        self._write(sums_only=unchanged)


# -- the run ------------------------------------------------------------------------

class _State:
    """A component in flight: its prepared directory and the units still running."""

    def __init__(self, job: Job, ref: ArtifactRef, started: float):
        self.job = job
        self.ref = ref
        self.started = started
        self.prepared: Optional[Prepared] = None
        self.done = Extracted()
        self.pending = 0
        self.error: Optional[ArtifactError] = None
        self.reported = False

    def fail(self, exc: ArtifactError) -> None:
        if self.error is None:
            self.error = exc

    def attempt(self, work, *args):
        """Run ``work``; any failure becomes this component's error (returns None then)."""
        try:
            with component_errors(self.job.component):  # a bug or a dead worker process: still one component's
                return work(*args)
        except ArtifactError as exc:
            self.fail(exc)
            return None

    def discard(self) -> None:
        if self.prepared is not None and self.prepared.tmp:
            shutil.rmtree(self.prepared.tmp, ignore_errors=True)

    @property
    def ready(self) -> bool:
        """Every unit of a component with work has finished, without error."""
        return (self.error is None and self.prepared is not None and self.prepared.status == "work"
                and self.pending == 0)


class Progress:
    """Receives events; the task layer renders them (rich bar or one line per component)."""

    def begin(self, components: int, total_bytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def finished(self, outcome: Outcome) -> None: ...


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def check_paths(source: str, dest: str) -> None:
    """Refuse a repository that overlaps the release: writing it would rewrite the release's own files."""
    src, dst = os.path.realpath(source), os.path.realpath(dest)
    if os.path.commonpath([src, dst]) in (src, dst):
        how = "is" if src == dst else ("is inside" if os.path.commonpath([src, dst]) == src else "holds")
        raise ConfigError(f"--dest {dest} {how} the release --source {source}: the repository would overwrite the "
                          "release's own files (its SHA256SUMS); choose a repository outside the release")


def extract_release(jobs: Iterable[Job], source: str, dest: str, environment: str, *, limits: Limits = Limits(),
                    workers: int = 0, dry_run: bool = False, executor: str = "thread",
                    progress: Optional[Progress] = None, chunk_bytes: int = CHUNK_BYTES,
                    verify: bool = False) -> Result:
    """Put every job's artifact and extracted tree into ``dest``; see the module docstring.

    ``verify`` re-hashes every file already in the repository instead of trusting sizes and times.
    """
    started = time.monotonic()
    jobs = list(jobs)
    release = Release(source)
    check_paths(source, dest)
    if not dry_run:
        atomic.output_dir(dest, "--dest")
    lock = _lock(dest) if not dry_run else None
    try:
        run = _Extraction(release, dest, environment, limits, workers or default_workers(), dry_run, executor,
                          progress or Progress(), chunk_bytes, verify)
        run.reconcile()
        todo = run.skip_unchanged(jobs)
        run.extract(todo)
        run.settle(jobs)
        ordered = [run.outcomes[j.component] for j in jobs if j.component in run.outcomes]
        return Result(dest, ordered, run.ledger.written, time.monotonic() - started)
    finally:
        if lock is not None:
            lock.close()


def _lock(dest: str):
    path = os.path.join(dest, LOCK)
    try:
        fh = open(path, "a")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the repository's lock file ({exc.strerror}); run as the user who "
                          "owns the repository, or choose another --dest") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ConfigError(f"{dest}: another extract-artifacts is writing this repository; wait for it to finish") from None
    return fh


@dataclass
class _Extraction:
    """One extract-artifacts run: what it was asked, what it found, and what it has done so far."""

    release: Release
    dest: str
    env: str
    limits: Limits
    workers: int
    dry_run: bool
    executor: str
    progress: Progress
    chunk_bytes: int
    verify: bool
    previous: Dict[str, dict] = field(default_factory=dict)  # the manifest's entries when the run started
    damage: Dict[str, Optional[str]] = field(default_factory=dict)  # component -> what differs on disk, or None
    outcomes: Dict[str, Outcome] = field(default_factory=dict)
    entries: Dict[str, dict] = field(default_factory=dict)  # the manifest entries of this run
    states: Dict[str, _State] = field(default_factory=dict)
    ledger: Optional[_Ledger] = None
    total: int = 0  # components asked for

    # -- before any work: trust only what is on disk ---------------------------------
    def reconcile(self) -> None:
        """Load the manifest and withdraw every entry whose files are not on disk as recorded."""
        if not self.dry_run:
            for name in os.listdir(self.dest):  # a killed run's half-written manifest or sums (we hold the lock)
                if name.startswith((manifest_mod.MANIFEST + ".tmp-", manifest_mod.SUMS + ".tmp-")):
                    os.unlink(os.path.join(self.dest, name))
        old = manifest_mod.load(self.dest)
        self.previous = old["components"] if old.get("environment") == self.env else {}
        for name, entry in self.previous.items():
            version_dir = os.path.join(self.dest, os.path.dirname(str(entry.get("path", ""))))
            self.damage[name] = disk_damage(version_dir, entry)
        self.ledger = _Ledger(self.dest, self.env, self.previous, self.dry_run)
        if old.get("environment") == self.env:
            self.ledger.withdraw([name for name, damage in self.damage.items() if damage])

    def skip_unchanged(self, jobs: List[Job]) -> List[Job]:
        """Components whose artifact and tree are as recorded are done; the rest are returned to work on."""
        release, todo = self.release, []
        self.total = len(jobs)
        early_sums = release.sums() if release.kind != "tar.gz" else None  # tar.gz: known once streamed
        for job in jobs:
            entry = self.previous.get(job.component)
            if not self.verify and self._unchanged(job, entry, early_sums):
                self.outcomes[job.component] = Outcome(job.component, job.version, "unchanged",
                                                       len(entry.get("files", {})), artifact_size=entry.get("size", 0),
                                                       reason="not modified since hashed")
                self.entries[job.component] = entry
            elif not job.required and release.kind != "tar.gz" and not release.has(job.artifact):
                self._not_mapped(job)
            else:
                todo.append(job)
        return todo

    def _unchanged(self, job: Job, entry: Optional[dict], early_sums) -> bool:
        """Same version, same artifact file (stat key), files on disk as recorded: nothing to read."""
        key = self.release.fast_key(job.artifact)
        if key is None or not entry or entry.get("version") != job.version or entry.get("artifact") != job.artifact:
            return False
        if entry.get("path") != f"{self.env}/{job.component}/{job.version}/{job.artifact}":
            return False
        src = entry.get("source") or {}
        return (self.damage.get(job.component, "") is None and src.get("stat") == list(key)
                and src.get("path") == self.release.origin_of(job.artifact)
                and (early_sums is None or early_sums.get(job.artifact) == entry.get("sha256")))

    def _not_mapped(self, job: Job) -> None:
        self.outcomes[job.component] = Outcome(job.component, job.version, "not-mapped",
                                               reason=f"no host runs it and {job.artifact} is not in the release")

    def _report(self, outcome: Outcome) -> None:
        self.outcomes[outcome.component] = outcome
        self.progress.finished(outcome)

    # -- the work ---------------------------------------------------------------------
    def extract(self, todo: List[Job]) -> None:
        if self.dry_run:
            staging = tempfile.mkdtemp(prefix="extract-dry-run-")
        else:
            for name in os.listdir(self.dest):  # left by a killed run (we hold the lock)
                if name.startswith(".staging-"):
                    shutil.rmtree(os.path.join(self.dest, name), ignore_errors=True)
            staging = os.path.join(self.dest, f".staging-{os.getpid()}")
        try:
            if todo and self.release.needs_prepare:
                self.release.prepare([j.artifact for j in todo], staging, self.limits.max_unpacked)
            sums = self.release.sums()
            refs = self._locate(todo)
            refs.sort(key=lambda jr: jr[1].size, reverse=True)  # largest first: the pool ends together
            self.progress.begin(self.total, sum(r.size for _, r in refs))
            for outcome in self.outcomes.values():
                self.progress.finished(outcome)
            if refs:
                self._run(refs, sums)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _locate(self, todo: List[Job]) -> List[tuple]:
        refs = []
        for job in todo:
            try:
                refs.append((job, self.release.find(job.component, job.artifact)))
            except ArtifactError as exc:
                if not job.required:
                    self._not_mapped(job)
                else:
                    self.outcomes[job.component] = Outcome(job.component, job.version, "failed", reason=exc.reason,
                                                           error=exc)
        return refs

    def _pool(self) -> cf.Executor:
        if self.executor == "process":
            import multiprocessing

            # fork: the workers need nothing but this module (spawn/forkserver would re-import __main__)
            return cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("fork"))
        return cf.ThreadPoolExecutor(max_workers=self.workers)

    def _run(self, refs: List[tuple], sums) -> None:
        pool = self._pool()
        futures: Dict[cf.Future, tuple] = {}
        try:
            for job, ref in refs:
                conflict = getattr(sums, "conflicts", {}).get(job.artifact) if sums is not None else None
                if conflict:
                    error = ArtifactError(job.component, conflict,
                                          hint="fix the release's SHA256SUMS: one sha256 per artifact")
                    self._report(Outcome(job.component, job.version, "failed", reason=error.reason, error=error))
                    continue
                state = self.states[job.component] = _State(job, ref, time.monotonic())
                state.pending = 1
                expected = None if sums is None else sums.get(job.artifact)
                fut = pool.submit(prepare, job, ref, self.previous.get(job.component), expected, sums is not None,
                                  self.dest, self.env, self.limits, self.dry_run, self.chunk_bytes, self.verify)
                futures[fut] = ("prepare", state, 0)
            while futures:
                done, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    self._unit_done(pool, futures, fut)
        except BaseException:
            # Ctrl-C included: what completed is already in the manifest; what was in flight leaves nothing
            pool.shutdown(wait=True, cancel_futures=True)
            for state in self.states.values():
                state.discard()
            raise
        pool.shutdown(wait=True)

    def _unit_done(self, pool, futures: dict, fut: cf.Future) -> None:
        what, state, nbytes = futures.pop(fut)
        state.pending -= 1
        value = state.attempt(fut.result)
        if state.error is None:
            if what == "prepare":
                state.attempt(self._after_prepare, pool, futures, state, value)
            else:
                state.done.merge(value)
                self.progress.advance(nbytes)
        if state.ready:
            self._complete(state)
        if state.error is not None and state.pending == 0 and not state.reported:
            state.discard()
            state.reported = True
            self._report(Outcome(state.job.component, state.job.version, "failed", reason=state.error.reason,
                                 seconds=time.monotonic() - state.started, error=state.error))

    def _after_prepare(self, pool, futures: dict, state: _State, prepared: Prepared) -> None:
        job = state.job
        state.started = prepared.started or state.started
        if prepared.status != "work":
            if prepared.entry is not None:
                self.entries[job.component] = prepared.entry
                self.ledger.record(job.component, prepared.entry)
            self.progress.advance(state.ref.size)
            self._report(Outcome(job.component, job.version, prepared.status,
                                 len((prepared.entry or {}).get("files", {})), artifact_size=state.ref.size,
                                 seconds=time.monotonic() - state.started, reason=prepared.reason))
            return
        state.prepared = prepared
        archive = os.path.join(prepared.tmp, job.artifact)
        tree = os.path.join(prepared.tmp, "tree")
        if prepared.kind == "zip":
            sizes = {m.index: m.size for m in prepared.members if m.kind == FILE}
            unpacked = max(1, sum(sizes.values()))
            for indices in prepared.chunks:
                fut = pool.submit(extract_chunk, job.component, archive, tree, indices)
                # progress counts artifact bytes: each chunk its share of the artifact
                futures[fut] = ("chunk", state, state.ref.size * sum(sizes[i] for i in indices) // unpacked)
                state.pending += 1
        else:
            fut = pool.submit(extract_stream, job.component, archive, tree, self.limits)
            futures[fut] = ("stream", state, state.ref.size)
            state.pending += 1

    def _complete(self, state: _State) -> None:
        entry = state.attempt(self._finish, state)
        if entry is None:
            return
        self.entries[state.job.component] = entry
        self._report(Outcome(state.job.component, state.job.version, "extracted", len(state.done.files),
                             state.done.size, state.prepared.artifact_size, time.monotonic() - state.started,
                             state.prepared.reason))
        state.prepared = None

    def _finish(self, state: _State) -> dict:
        """Links last, then the tree into place (the manifest withdrawn around the swap); returns the entry."""
        job, prepared = state.job, state.prepared
        tree = os.path.join(prepared.tmp, "tree")
        if prepared.kind == "zip":
            archive_mod.make_links(job.component, tree, prepared.members, state.done)
            wanted = sum(1 for m in prepared.members if m.kind == FILE)
            if len(state.done.files) != wanted:
                raise ArtifactError(job.component, f"extracted {len(state.done.files)} files of {wanted}")
        entry = {
            "version": job.version,
            "artifact": job.artifact,
            "path": f"{self.env}/{job.component}/{job.version}/{job.artifact}",
            "size": prepared.artifact_size,
            "sha256": prepared.sha256,
            "files": dict(sorted(state.done.files.items())),
            "source": state.ref.record(),
            "disk": _disk_record(prepared.tmp, job.artifact, state.done),  # renames keep sizes and times
        }
        if state.done.links:
            entry["links"] = dict(sorted(state.done.links.items()))
        target = _target(self.dest, self.env, job)
        current = self.ledger.components.get(job.component)
        if current is not None and current.get("path") == entry["path"]:
            self.ledger.withdraw([job.component])  # its bytes are about to change
        try:
            atomic.swap_in(prepared.tmp, target, os.path.join(os.path.dirname(target),
                                                              f".{job.version}.old-{os.getpid()}"))
        except OSError as exc:
            raise ArtifactError(job.component, f"cannot move the extracted tree into place: {exc}") from None
        self.ledger.record(job.component, entry)
        return entry

    # -- the end --------------------------------------------------------------------------
    def settle(self, jobs: List[Job]) -> None:
        """The final manifest: this run's entries, and a failed component's previous entry while still intact."""
        if self.dry_run:
            return
        for job in jobs:
            old = self.previous.get(job.component)
            if job.component in self.entries or old is None or \
                    self.outcomes.get(job.component, Outcome("", "", "")).status != "failed":
                continue
            if _damage(self.dest, self.env, Job(job.component, old["version"], old["artifact"]), old) is None:
                self.entries[job.component] = old
        self.ledger.settle(self.entries)
