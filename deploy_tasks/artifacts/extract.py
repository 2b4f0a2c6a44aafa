"""Extract a release into the package repository: concurrent, verified, incremental.

For each component (in a pool of workers, largest artifact first):

Workers are threads by default (setting extract_executor): inflate (ISA-L),
sha256, CRC, copy_file_range and file writes all run without the GIL, and on
this 2-core machine a thread pool measured 12-20% faster than a process pool
(6 alternating runs of each); see bench/extract.py.

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
4. rename the temporary directory into place when everything is there.

A component that fails leaves nothing behind (its temporary directory is
removed, a previous good version is untouched); the others finish. The
manifest and SHA256SUMS are rewritten at the end, only if they changed.
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

from ..errors import ArtifactError, ConfigError, ExtractionFailed
from . import archive as archive_mod
from . import manifest as manifest_mod
from .archive import BLOCK, Extracted
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


def _intact(dest: str, env: str, job: Job, entry: Optional[dict]) -> bool:
    """The manifest's entry is this version and its files are still in place (checked by stat only)."""
    if not entry or entry.get("version") != job.version or entry.get("artifact") != job.artifact:
        return False
    target = _target(dest, env, job)
    try:
        return (os.path.getsize(os.path.join(target, job.artifact)) == entry.get("size")
                and os.path.isdir(os.path.join(target, "tree")))
    except OSError:
        return False


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
            dest: str, env: str, limits: Limits, dry_run: bool, chunk_bytes: int = CHUNK_BYTES) -> Prepared:
    """Decide, and when there is work: copy + hash the artifact into a fresh directory and check its members."""
    started = time.monotonic()
    try:
        prepared = _prepare(job, ref, entry, expected, sums_given, dest, env, limits, dry_run, chunk_bytes)
        prepared.started = started
        return prepared
    except ArtifactError:
        raise
    except Exception as exc:  # disk full, permissions...: still this component's failure only
        raise ArtifactError(job.component, f"{type(exc).__name__}: {exc}") from None


def _prepare(job, ref, entry, expected, sums_given, dest, env, limits, dry_run, chunk_bytes) -> Prepared:
    _check_bundled_size(ref, limits)
    intact = _intact(dest, env, job, entry)
    if intact or dry_run:
        sha = _hash_stream(ref)
        _check_expected(job, sha, expected, sums_given)
        if intact and sha == entry["sha256"]:
            new = dict(entry, source=ref.record())
            return Prepared(job.component, "unchanged", entry=new, reason="sha256 unchanged")
        if dry_run:
            reason = "artifact changed" if intact else ("new version" if entry else "not in the repository")
            return Prepared(job.component, "would-extract", reason=reason, sha256=sha, artifact_size=ref.size)
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
                            reason="artifact changed" if intact else ("new version" if entry else "new"))
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


def _component_errors(component: str, work, *args) -> Extracted:
    """Run a worker's extraction; anything unexpected becomes that component's ArtifactError."""
    try:
        return work(component, *args)
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(component, f"{type(exc).__name__}: {exc}") from None


def extract_chunk(component: str, archive: str, tree: str, indices: List[int]) -> Extracted:
    return _component_errors(component, archive_mod.extract_zip_chunk, archive, tree, indices)


def extract_stream(component: str, archive: str, tree: str, limits: Limits) -> Extracted:
    return _component_errors(component, archive_mod.extract_tar, archive, tree, limits)


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


class Progress:
    """Receives events; the task layer renders them (rich bar or one line per component)."""

    def begin(self, components: int, total_bytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def finished(self, outcome: Outcome) -> None: ...


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def extract_release(jobs: Iterable[Job], source: str, dest: str, environment: str, *, limits: Limits = Limits(),
                    workers: int = 0, dry_run: bool = False, executor: str = "thread",
                    progress: Optional[Progress] = None, chunk_bytes: int = CHUNK_BYTES) -> Result:
    """Put every job's artifact and extracted tree into ``dest``; see the module docstring."""
    started = time.monotonic()
    progress = progress or Progress()
    jobs = list(jobs)
    workers = workers or default_workers()
    release = Release(source)
    if not dry_run:
        os.makedirs(dest, exist_ok=True)
    lock = _lock(dest) if not dry_run else None
    try:
        old = manifest_mod.load(dest)
        previous = old["components"] if old.get("environment") == environment else {}
        outcomes: Dict[str, Outcome] = {}
        entries: Dict[str, dict] = {}
        todo: List[Job] = []
        early_sums = release.sums() if release.kind != "tar.gz" else None  # tar.gz: known once streamed
        for job in jobs:
            entry = previous.get(job.component)
            key = release.fast_key(job.artifact)
            src = (entry or {}).get("source") or {}
            if (key is not None and _intact(dest, environment, job, entry) and src.get("stat") == list(key)
                    and src.get("path") == release.origin_of(job.artifact)
                    and (early_sums is None or early_sums.get(job.artifact) == entry.get("sha256"))):
                outcomes[job.component] = Outcome(job.component, job.version, "unchanged", len(entry.get("files", {})),
                                                  artifact_size=entry.get("size", 0), reason="not modified since hashed")
                entries[job.component] = entry
                continue
            if not job.required and release.kind != "tar.gz" and not release.has(job.artifact):
                outcomes[job.component] = Outcome(job.component, job.version, "not-mapped",
                                                  reason=f"no host runs it and {job.artifact} is not in the release")
                continue
            todo.append(job)
        if dry_run:
            staging = tempfile.mkdtemp(prefix="extract-dry-run-")
        else:
            for name in os.listdir(dest):  # left by a killed run (we hold the lock)
                if name.startswith(".staging-"):
                    shutil.rmtree(os.path.join(dest, name), ignore_errors=True)
            staging = os.path.join(dest, f".staging-{os.getpid()}")
        states: Dict[str, _State] = {}
        try:
            if todo and release.needs_prepare:
                release.prepare([j.artifact for j in todo], staging, limits.max_unpacked)
            sums = release.sums()
            refs = []
            for job in todo:
                try:
                    refs.append((job, release.find(job.component, job.artifact)))
                except ArtifactError as exc:
                    if not job.required:
                        outcomes[job.component] = Outcome(job.component, job.version, "not-mapped",
                                                          reason=f"no host runs it and {job.artifact} is not in the release")
                    else:
                        outcomes[job.component] = Outcome(job.component, job.version, "failed", reason=exc.reason,
                                                          error=exc)
            refs.sort(key=lambda jr: jr[1].size, reverse=True)  # largest first: the pool ends together
            progress.begin(len(jobs), sum(r.size for _, r in refs))
            for outcome in outcomes.values():
                progress.finished(outcome)
            _run(refs, states, outcomes, entries, previous, sums, dest, environment, limits, workers, dry_run,
                 executor, progress, chunk_bytes)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        written = False
        if not dry_run:
            for job in jobs:  # a failed component keeps its previous (still intact) entry
                if job.component not in entries and job.component in previous and \
                        outcomes.get(job.component, Outcome("", "", "")).status == "failed":
                    if _intact(dest, environment, Job(job.component, previous[job.component]["version"],
                                                      previous[job.component]["artifact"]), previous[job.component]):
                        entries[job.component] = previous[job.component]
            new_manifest = {"format": manifest_mod.FORMAT, "environment": environment,
                            "components": {name: entries[name] for name in sorted(entries)}}
            written = manifest_mod.write(dest, new_manifest)
        ordered = [outcomes[j.component] for j in jobs if j.component in outcomes]
        return Result(dest, ordered, written, time.monotonic() - started)
    finally:
        if lock is not None:
            lock.close()


def _lock(dest: str):
    fh = open(os.path.join(dest, LOCK), "a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ConfigError(f"{dest}: another extract-artifacts is writing this repository; wait for it to finish") from None
    return fh


def _run(refs, states, outcomes, entries, previous, sums, dest, env, limits, workers, dry_run, executor,
         progress, chunk_bytes) -> None:
    if not refs:
        return
    if executor == "process":
        import multiprocessing

        # fork: the workers need nothing but this module (spawn/forkserver would re-import __main__)
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    else:
        pool = cf.ThreadPoolExecutor(max_workers=workers)
    futures: Dict[cf.Future, tuple] = {}
    try:
        for job, ref in refs:
            conflict = getattr(sums, "conflicts", {}).get(job.artifact) if sums is not None else None
            if conflict:
                error = ArtifactError(job.component, conflict,
                                      hint="fix the release's SHA256SUMS: one sha256 per artifact")
                outcome = Outcome(job.component, job.version, "failed", reason=error.reason, error=error)
                outcomes[job.component] = outcome
                progress.finished(outcome)
                continue
            state = states[job.component] = _State(job, ref, time.monotonic())
            state.pending = 1
            expected = None if sums is None else sums.get(job.artifact)
            fut = pool.submit(prepare, job, ref, previous.get(job.component), expected, sums is not None,
                              dest, env, limits, dry_run, chunk_bytes)
            futures[fut] = ("prepare", state, 0)
        while futures:
            done, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                what, state, nbytes = futures.pop(fut)
                state.pending -= 1
                try:
                    value = fut.result()
                except ArtifactError as exc:
                    _fail(state, exc)
                except Exception as exc:  # a bug or a dead worker process: still one component's failure
                    _fail(state, ArtifactError(state.job.component, f"{type(exc).__name__}: {exc}"))
                else:
                    if state.error is None:
                        try:
                            if what == "prepare":
                                _after_prepare(pool, futures, state, value, limits, outcomes, entries, progress)
                            else:
                                state.done.merge(value)
                                progress.advance(nbytes)
                        except ArtifactError as exc:
                            _fail(state, exc)
                        except Exception as exc:  # still this component's failure only
                            _fail(state, ArtifactError(state.job.component, f"{type(exc).__name__}: {exc}"))
                if state.error is None and state.prepared is not None and state.prepared.status == "work" \
                        and state.pending == 0:
                    try:
                        entries[state.job.component] = _finish(state, dest, env)
                        outcome = Outcome(state.job.component, state.job.version, "extracted", len(state.done.files),
                                          state.done.size, state.prepared.artifact_size,
                                          time.monotonic() - state.started, state.prepared.reason)
                    except ArtifactError as exc:
                        _fail(state, exc)
                    except Exception as exc:  # _finish wraps its own; anything else is still one component's
                        _fail(state, ArtifactError(state.job.component, f"{type(exc).__name__}: {exc}"))
                    else:
                        outcomes[state.job.component] = outcome
                        progress.finished(outcome)
                        state.prepared = None
                if state.error is not None and state.pending == 0 and not state.reported:
                    _discard(state)
                    outcome = Outcome(state.job.component, state.job.version, "failed", reason=state.error.reason,
                                      seconds=time.monotonic() - state.started, error=state.error)
                    outcomes[state.job.component] = outcome
                    state.reported = True
                    progress.finished(outcome)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        for state in states.values():
            _discard(state)
        raise
    pool.shutdown(wait=True)


def _fail(state: _State, exc: ArtifactError) -> None:
    if state.error is None:
        state.error = exc


def _discard(state: _State) -> None:
    if state.prepared is not None and state.prepared.tmp:
        shutil.rmtree(state.prepared.tmp, ignore_errors=True)


def _after_prepare(pool, futures, state: _State, prepared: Prepared, limits, outcomes, entries, progress) -> None:
    job = state.job
    state.started = prepared.started or state.started
    if prepared.status != "work":
        outcome = Outcome(job.component, job.version, prepared.status,
                          len((prepared.entry or {}).get("files", {})), artifact_size=state.ref.size,
                          seconds=time.monotonic() - state.started, reason=prepared.reason)
        if prepared.entry is not None:
            entries[job.component] = prepared.entry
        outcomes[job.component] = outcome
        progress.advance(state.ref.size)
        progress.finished(outcome)
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
        fut = pool.submit(extract_stream, job.component, archive, tree, limits)
        futures[fut] = ("stream", state, state.ref.size)
        state.pending += 1


def _finish(state: _State, dest: str, env: str) -> dict:
    """Links last, then the rename into place; returns the manifest entry."""
    job, prepared = state.job, state.prepared
    tree = os.path.join(prepared.tmp, "tree")
    try:
        if prepared.kind == "zip":
            archive_mod.make_links(job.component, tree, prepared.members, state.done)
            wanted = sum(1 for m in prepared.members if m.kind == FILE)
            if len(state.done.files) != wanted:
                raise ArtifactError(job.component, f"extracted {len(state.done.files)} files of {wanted}")
        target = _target(dest, env, job)
        if os.path.lexists(target):
            old = os.path.join(os.path.dirname(target), f".{job.version}.old-{os.getpid()}")
            os.rename(target, old)
            try:
                os.rename(prepared.tmp, target)
            except OSError:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(prepared.tmp, target)
    except ArtifactError:
        raise
    except OSError as exc:
        raise ArtifactError(job.component, f"cannot move the extracted tree into place: {exc}") from None
    except Exception as exc:  # a bug or an unforeseen input: still this component's failure only
        raise ArtifactError(job.component, f"{type(exc).__name__}: {exc}") from None
    entry = {
        "version": job.version,
        "artifact": job.artifact,
        "path": f"{env}/{job.component}/{job.version}/{job.artifact}",
        "size": prepared.artifact_size,
        "sha256": prepared.sha256,
        "files": dict(sorted(state.done.files.items())),
        "source": state.ref.record(),
    }
    if state.done.links:
        entry["links"] = dict(sorted(state.done.links.items()))
    return entry
