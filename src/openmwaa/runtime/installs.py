"""Airflow installs: one uv-built venv per (Airflow version, requirements.txt).

Installs live in ``<data-dir>/runtimes/<key>/`` and are shared by every
environment with the same key. Each is built in a temporary folder and renamed
into place, under a file lock, so concurrent environments (or the CLI's
pre-build and a running server) never build the same install twice nor see a
half-built one. A migrated SQLite metadata DB is built with the install once,
so a new environment copies it instead of running ``airflow db migrate``.

uv runs with an allow-listed environment (:func:`uv_env`): what installing needs
(``UV_*`` settings, proxies, CA bundles) and nothing else of the server's, since a
requirement's build step runs the user's code. Every uv run is a helper in its own
process group, which :func:`cancel_all` kills when the server stops; the folders a
killed build leaves behind are removed by :func:`clean_partial`, which the first
``ensure_install`` of a data dir in a process calls.

Constraints follow MWAA: our tested pins always apply to the base install, and
to the user's requirements.txt unless it names its own (``-c``/``--constraint``).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from openmwaa.core.files import chown_tree, open_tree
from openmwaa.runtime import interpreter
from openmwaa.runtime.base import Progress, RuntimeFailure
from openmwaa.runtime.children import HELPERS, inherited_env
from openmwaa.runtime.tenancy import SERVER, Tenant, placement

SUPPORTED_VERSIONS = ["3.3.2", "3.0.6"]
"""Newest first; the first is the default."""

DEFAULT_VERSION = SUPPORTED_VERSIONS[0]
BASE_EXTRAS = "celery,postgres,redis,amazon,http"
EXTRA_PACKAGES = ["apache-airflow-providers-standard"]
TEMPLATE_DB = "openmwaa-template.db"
_READY = ".openmwaa-ready"
_CONSTRAINT_LINE = re.compile(r"^\s*(-c|--constraint)(\s|=)", re.MULTILINE)
_PARTIAL_PREFIXES = (".build-", ".check-")
_UV_PASSED = frozenset(
    {
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "XDG_CACHE_HOME",
        "XDG_CONFIG_HOME",
        "NETRC",
    }
)
"""Server variables uv needs to reach the package index: proxies, CA bundles, and where
its cache, config (``uv.toml``) and ``.netrc`` are. uv reads no ``PIP_*`` variable nor
pip.conf: an index or mirror is configured with ``UV_*`` variables or ``uv.toml``."""
_cleaned: set[Path] = set()
_cleaned_lock = threading.Lock()


def constraints_file(version: str) -> Path:
    path = Path(__file__).parent / "constraints" / f"constraints-{version}.txt"
    if not path.is_file():
        raise RuntimeFailure(
            "UNSUPPORTED_AIRFLOW_VERSION",
            f"Airflow {version} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})",
        )
    return path


def normalize_requirements(text: str | None) -> str:
    """The requirements as they matter for the key: no comments, blank lines or CRs."""
    if not text:
        return ""
    lines = []
    for raw in text.replace("\r", "").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return "\n".join(lines)


def install_key(version: str, requirements_text: str | None) -> str:
    """``airflow-<version>-<pins digest>[-<requirements digest>]``.

    The pins are part of the key so a release with new constraints builds new
    installs instead of reusing ones resolved differently.
    """
    pins_and_python = constraints_file(version).read_bytes() + base_python().encode()
    pins = hashlib.sha256(pins_and_python).hexdigest()[:8]
    reqs = normalize_requirements(requirements_text)
    if not reqs:
        return f"airflow-{version}-{pins}"
    digest = hashlib.sha256(reqs.encode()).hexdigest()[:12]
    return f"airflow-{version}-{pins}-{digest}"


def uv_binary() -> str:
    here = Path(sys.executable).parent / "uv"
    if here.is_file():
        return str(here)
    found = shutil.which("uv")
    if not found:
        raise RuntimeFailure("INSTALL_FAILED", "uv is not installed (pip install uv)")
    return found


@functools.cache
def base_python() -> str:
    """The interpreter installs are made from: the base of the control plane's venv, or,
    when the server runs as root and that one sits where environments' users cannot run
    it (a Python under /root), a copy of it open to them (runtime/interpreter.py)."""
    own = getattr(sys, "_base_executable", None) or sys.executable
    if os.geteuid() != 0 or interpreter.runnable_by_all(own):
        return own
    return str(interpreter.shared_copy(own, placement.tenant_base()))


def is_ready(path: Path) -> bool:
    return (path / _READY).is_file() and (path / "bin" / "python").exists()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """The key's build lock; waiting for it ends with Interrupted when the server stops."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        while True:
            HELPERS.check()
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                HELPERS.wait(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cancel_all() -> None:
    """The server is stopping: kill every running uv (and other helper, e.g. a startup
    script) with its process group; running and waiting ``ensure_install`` calls, and
    any later one, raise ``Interrupted``. The install folders they leave are removed
    by ``clean_partial`` at the next start."""
    HELPERS.cancel_all()


def resume() -> None:
    """Allow helpers again after ``cancel_all`` (a new server in the same process)."""
    HELPERS.resume()


def _partial_key(name: str) -> str | None:
    """The install key a partial folder (``.build-<key>-<random suffix>``) was made for."""
    for prefix in _PARTIAL_PREFIXES:
        if name.startswith(prefix) and name.count("-") >= 2:
            return name[len(prefix) :].rsplit("-", 1)[0]
    return None


def clean_partial(data_dir: Path, key: str | None = None) -> list[str]:
    """Remove the folders builds killed mid-way left in ``<data_dir>/runtimes``: temp
    build and check folders, and installs without their ready mark. Only folders of keys
    whose build lock is free (nobody builds them now) are touched; ``key``: that key only.
    Returns the removed names."""
    runtimes = data_dir / "runtimes"
    removed: list[str] = []
    if not runtimes.is_dir():
        return removed
    for path in sorted(runtimes.iterdir()):
        if path.is_symlink():
            continue  # an install shared from elsewhere (tests); not ours to judge
        owner = _partial_key(path.name)
        if owner is None and not path.name.startswith(".") and path.is_dir():
            owner = path.name if not is_ready(path) else None
        if owner is None or (key is not None and owner != key):
            continue
        with open(runtimes / f".{owner}.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being built right now
            try:
                if path.exists() and (owner != path.name or not is_ready(path)):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path.name)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    return removed


def _clean_once(data_dir: Path) -> None:
    with _cleaned_lock:
        if data_dir in _cleaned:
            return
        _cleaned.add(data_dir)
    clean_partial(data_dir)


def ensure_install(
    data_dir: Path,
    version: str,
    requirements_text: str | None = None,
    progress: Progress | None = None,
    *,
    builder: Tenant | None = None,
    cache: Path | None = None,
) -> Path:
    """The ready install for (version, requirements), building it if needed.

    ``builder``: the environment whose requirements.txt this is, when environments have
    users of their own: resolving and installing its requirements (whose build steps
    run the user's code) runs as that user, with its own uv ``cache`` folder, and the
    install is that environment's alone (another environment with the same file gets
    its own, so no environment can slip code into another's). Airflow itself is always
    installed by the server from the shipped pins, and every install ends read-only
    for everyone, the server's own.

    Raises RuntimeFailure("INCORRECT_REQUIREMENTS", <uv's useful line>) when
    the requirements cannot be installed, Interrupted when ``cancel_all`` was called.
    """
    HELPERS.check()
    say = progress or (lambda _line: None)
    constraints = constraints_file(version)
    runtimes = data_dir / "runtimes"
    reqs = normalize_requirements(requirements_text)
    if not reqs or (builder is not None and not builder.isolated):
        builder = None
    key = install_key(version, requirements_text)
    if builder is not None:
        key = f"{key}-{builder.user}"
    final = runtimes / key
    _clean_once(data_dir)
    if is_ready(final):
        _readable_once(final)
        return final.resolve()
    with _locked(runtimes / f".{key}.lock"):
        if is_ready(final):
            _readable_once(final)
            return final.resolve()
        runtimes.mkdir(parents=True, exist_ok=True)
        runtimes = runtimes.resolve()  # builders may not pass through the data dir
        os.chmod(runtimes, 0o711)  # noqa: S103 - passable by environments, not listable
        work = _Work(builder, cache)
        if reqs:
            _check_requirements(runtimes, key, reqs, constraints, say, work)
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=runtimes))
        try:
            _build(tmp, version, constraints, reqs, say, work)
            open_tree(tmp)
            if final.exists():
                shutil.rmtree(final)  # an unfinished install from an interrupted build
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    say(f"Airflow {version} install ready")
    # Its real path: environments' users may not pass through the data dir's parents.
    return final.resolve()


def uv_env() -> dict[str, str]:
    """The environment uv runs with: the allow-listed basics, the server user's ``HOME``
    (uv's cache, ``uv.toml`` and ``.netrc`` live there), ``UV_*`` settings (index URLs
    and their credentials included; publishing ones excluded) and :data:`_UV_PASSED`."""
    env = inherited_env(Path(os.environ.get("HOME") or Path.home()))
    for name, value in os.environ.items():
        if name in _UV_PASSED or (name.startswith("UV_") and not name.startswith("UV_PUBLISH")):
            env[name] = value
    env.setdefault("UV_HTTP_TIMEOUT", "120")
    return env


@dataclass(frozen=True)
class _Work:
    """Who installs an environment's requirements (None: the server) and uv's cache then."""

    builder: Tenant | None = None
    cache: Path | None = None

    def env(self) -> dict[str, str]:
        env = uv_env()
        if self.builder is not None:
            # The user's own cache and home: the server's cache is not theirs to fill.
            env.pop("XDG_CACHE_HOME", None)
            if self.cache is not None:
                env["UV_CACHE_DIR"] = str(self.cache)
                env["HOME"] = str(self.cache.parent)
        return env


_SERVER_WORK = _Work()


def _uv(args: list[str], code: str, what: str, cwd: Path, work: _Work = _SERVER_WORK) -> None:
    env = work.env()
    returncode, out, err = HELPERS.run(
        [uv_binary(), *args],
        env=env,
        cwd=cwd,
        keep=set(env),
        tenant=work.builder or SERVER,
    )
    if returncode != 0:
        raise RuntimeFailure(code, f"{what}: {useful_uv_line(err or out)}")


def useful_uv_line(output: str) -> str:
    """The line of uv's error output a user needs: the error and its first cause."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    error = next((ln for ln in lines if ln.startswith(("error:", "×"))), None)
    cause = next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(("cause:", "Caused by:"))),
        None,
    )
    if cause is None:
        cause = next((ln.removeprefix("╰─▶").strip() for ln in lines if "╰─▶" in ln), None)
    if error is None:
        return lines[-1] if lines else "uv failed without output"
    error = error.removeprefix("error:").lstrip("× ").strip()
    return f"{error}: {cause}" if cause else error


def _requirements_args(req_file: Path, reqs: str, constraints: Path) -> list[str]:
    """``-r`` the user's file, with our constraints unless it brings its own (as MWAA).
    The constraints are copied beside it: an environment's user may not reach the
    server's own copy."""
    args = ["-r", req_file.name]
    if not _CONSTRAINT_LINE.search(reqs):
        local = req_file.with_name("constraints.txt")
        shutil.copyfile(constraints, local)
        args += ["--constraint", str(local)]
    return args


def _check_requirements(
    runtimes: Path, key: str, reqs: str, constraints: Path, say: Progress, work: _Work
) -> None:
    """Resolve requirements.txt alone first: a bad one fails in a second, not after a build."""
    say("checking requirements.txt")
    with tempfile.TemporaryDirectory(prefix=f".check-{key}-", dir=runtimes) as tmp:
        req_file = Path(tmp) / "requirements.txt"
        req_file.write_text(reqs + "\n")
        args = ["pip", "compile", "--python", base_python(), "--no-header"]
        args += _requirements_args(req_file, reqs, constraints)[1:]  # compile: file positional
        _give(Path(tmp), work)
        _uv(args, "INCORRECT_REQUIREMENTS", "requirements.txt", cwd=Path(tmp), work=work)


def _build(
    tmp: Path, version: str, constraints: Path, reqs: str, say: Progress, work: _Work
) -> None:
    started = time.monotonic()
    say(f"installing Airflow {version}")
    _uv(
        ["venv", "--quiet", "--relocatable", "--python", base_python(), str(tmp)],
        "INSTALL_FAILED",
        "creating the virtualenv failed",
        cwd=tmp,
    )
    python = str(tmp / "bin" / "python")
    _uv(
        [
            "pip",
            "install",
            "--compile-bytecode",
            "--python",
            python,
            "--constraint",
            str(constraints),
            f"apache-airflow[{BASE_EXTRAS}]=={version}",
            *EXTRA_PACKAGES,
        ],
        "INSTALL_FAILED",
        f"installing Airflow {version} failed",
        cwd=tmp,
    )
    if work.builder is not None:
        # The template from Airflow alone, before any of the user's code is installed:
        # the server never runs an interpreter that has it.
        say("preparing the metadata database template")
        _migrate_template(tmp)
    if reqs:
        say("installing requirements.txt")
        req_file = tmp / "requirements.txt"
        req_file.write_text(reqs + "\n")
        args = ["pip", "install", "--compile-bytecode", "--python", python]
        args += _requirements_args(req_file, reqs, constraints)
        _give(tmp, work)
        try:
            _uv(args, "INCORRECT_REQUIREMENTS", "requirements.txt", cwd=tmp, work=work)
        finally:
            _take_back(tmp, work)
    if work.builder is None:
        say("preparing the metadata database template")
        _migrate_template(tmp)
    (tmp / _READY).write_text(f"{version} {time.monotonic() - started:.1f}s\n")


def _give(folder: Path, work: _Work) -> None:
    """Hand a build folder to the environment's user for its requirements' install."""
    owner = work.builder.owner() if work.builder else None
    if owner is None:
        return
    chown_tree(folder, *owner)


def _take_back(folder: Path, work: _Work) -> None:
    """The built install becomes the server's again (its user can change it no more)."""
    if work.builder is not None:
        chown_tree(folder, os.geteuid(), os.getegid())


_readable: set[Path] = set()


def _readable_once(install: Path) -> None:
    """Installs built before environments had users of their own were the server's alone."""
    with _cleaned_lock:
        if install in _readable:
            return
        _readable.add(install)
    if os.stat(install).st_mode & 0o005 != 0o005:
        open_tree(install)


def _migrate_template(install: Path) -> None:
    home = install / ".template-home"
    home.mkdir()
    db = install / TEMPLATE_DB
    env = inherited_env(home)
    env.update(
        {
            "PATH": f"{install / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}",
            "AIRFLOW__DATABASE__LOAD_DEFAULT_CONNECTIONS": "False",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        }
    )
    try:
        returncode, _out, err = HELPERS.run(
            [str(install / "bin" / "airflow"), "db", "migrate"], env=env, cwd=home
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if returncode != 0:
        raise RuntimeFailure(
            "INSTALL_FAILED", f"airflow db migrate failed: {useful_error_line(err)}"
        )


def useful_error_line(output: str) -> str:
    """The last exception-looking line of a Python program's output."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Exit)\b", line) or line.startswith("ERROR"):
            return line[:500]
    return (lines[-1] if lines else "no output")[:500]


def remove_unused(data_dir: Path, keep: set[str]) -> list[str]:
    """Delete installs whose key is not in ``keep``; returns the removed keys."""
    removed: list[str] = []
    runtimes = data_dir / "runtimes"
    if not runtimes.is_dir():
        return removed
    for path in runtimes.iterdir():
        if path.name.startswith(".") or path.name in keep or not path.is_dir():
            continue
        with _locked(runtimes / f".{path.name}.lock"):
            shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed
