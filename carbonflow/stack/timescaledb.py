"""TimescaleDB (Apache-2 edition) for PostgreSQL 15, built from Debian 13's source package.

Debian 12 ships no TimescaleDB binary package, but Debian 13 ("trixie") ships its source,
which builds against PostgreSQL 15 with cmake in about a minute. The source is fetched with
apt-get against a private sources list and private state/cache folders, so the machine's own
apt configuration is never touched. Debian's patches only adjust the regression tests, so the
upstream (orig) tarball is built as is, with the TSL-licensed code left out (APACHE_ONLY).

Everything lives under <cache_dir>/timescaledb and is kept: a reinstall (say after the
PostgreSQL package was reinstalled) is a `make install` of the existing build.
"""

from __future__ import annotations

import logging
import os
import re
import tarfile
from pathlib import Path

from carbonflow.errors import StackError
from carbonflow.stack.process import is_root, run
from carbonflow.stack.system import apt_env, ensure_packages

logger = logging.getLogger(__name__)

PG_MAJOR = 15
PG_BIN = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
PG_CONFIG = PG_BIN / "pg_config"
DEBIAN_EXTENSION_DIR = Path(f"/usr/share/postgresql/{PG_MAJOR}/extension")
SOURCE_SUITE = "trixie"
SOURCE_LINE = f"deb-src http://deb.debian.org/debian {SOURCE_SUITE} main"
SOURCE_PACKAGE = "timescaledb"
BUILD_PACKAGES = [f"postgresql-server-dev-{PG_MAJOR}", "cmake", "make", "gcc", "libssl-dev"]
BUILT_MARKER = ".carbonflow-built"


def extension_dir() -> Path:
    _, out = run([str(PG_CONFIG), "--sharedir"], what="pg_config --sharedir")
    return Path(out.strip().splitlines()[-1]) / "extension"


def installed_version() -> str | None:
    """The default_version in the installed control file, or None when not installed."""
    # pg_config comes with the -dev package; without it, Debian's fixed layout applies.
    ext_dir = extension_dir() if PG_CONFIG.exists() else DEBIAN_EXTENSION_DIR
    control = ext_dir / f"{SOURCE_PACKAGE}.control"
    try:
        text = control.read_text()
    except FileNotFoundError:
        return None
    match = re.search(r"default_version\s*=\s*'([^']+)'", text)
    return match.group(1) if match else "unknown"


def ensure_timescaledb(cache_dir: Path) -> str:
    """Install TimescaleDB for PostgreSQL 15 unless present; return its version."""
    version = installed_version()
    if version is not None:
        logger.debug("TimescaleDB %s already installed for PostgreSQL %d", version, PG_MAJOR)
        return version
    ensure_packages(BUILD_PACKAGES, why="building TimescaleDB")
    if not is_root():
        raise StackError(
            "TimescaleDB is not installed for PostgreSQL 15 and installing it writes to "
            "/usr/lib/postgresql and /usr/share/postgresql: run `carbonflow stack up` as root once"
        )
    root = cache_dir / "timescaledb"
    tarball = _cached_tarball(root) or _download_source(root)
    source_dir = _unpack(tarball, root / "src")
    upstream = source_dir.name.removeprefix(f"{SOURCE_PACKAGE}-")
    build_dir = root / f"build-{upstream}-pg{PG_MAJOR}"
    if (build_dir / BUILT_MARKER).exists():
        logger.info("installing cached TimescaleDB %s build for PostgreSQL %d…", upstream, PG_MAJOR)
    else:
        _build(source_dir, build_dir, upstream)
    run(["make", "-C", str(build_dir), "install"], what="make install (TimescaleDB)")
    version = installed_version()
    if version is None:
        raise StackError(
            f"TimescaleDB install finished but no control file is in {extension_dir()}"
        )
    logger.info("TimescaleDB %s installed for PostgreSQL %d", version, PG_MAJOR)
    return version


def _cached_tarball(root: Path) -> Path | None:
    tarballs = sorted(
        (root / "download").glob(f"{SOURCE_PACKAGE}_*.orig.tar.*"),
        key=lambda path: path.stat().st_mtime,
    )
    return tarballs[-1] if tarballs else None


def _download_source(root: Path) -> Path:
    apt_dir = root / "apt"
    lists = apt_dir / "lists"
    archives = apt_dir / "cache" / "archives"
    download = root / "download"
    for folder in (lists / "partial", archives / "partial", download):
        folder.mkdir(parents=True, exist_ok=True)
    sources = apt_dir / "sources.list"
    sources.write_text(SOURCE_LINE + "\n")
    options = [
        "-o",
        f"Dir::Etc::SourceList={sources}",
        "-o",
        "Dir::Etc::SourceParts=/dev/null",
        "-o",
        f"Dir::State::Lists={lists}",
        "-o",
        f"Dir::Cache={apt_dir / 'cache'}",
        # apt's download sandbox user may not be able to enter the cache dir.
        "-o",
        "APT::Sandbox::User=root",
    ]
    logger.info(
        "fetching the TimescaleDB source package from Debian %s (private apt lists)…", SOURCE_SUITE
    )
    run(
        ["apt-get", *options, "update"],
        what=f"apt-get update ({SOURCE_SUITE} sources)",
        env=apt_env(),
    )
    run(
        ["apt-get", *options, "source", "--download-only", SOURCE_PACKAGE],
        what=f"apt-get source {SOURCE_PACKAGE}",
        cwd=download,
        env=apt_env(),
    )
    tarball = _cached_tarball(root)
    if tarball is None:
        raise StackError(f"apt-get source left no {SOURCE_PACKAGE} orig tarball in {download}")
    logger.info("downloaded %s", tarball.name)
    return tarball


def _unpack(tarball: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tarball) as archive:
            top = {member.name.split("/", 1)[0] for member in archive.getmembers()}
            if len(top) != 1:
                raise StackError(f"{tarball.name} does not unpack into one directory")
            source_dir = dest / top.pop()
            if not (source_dir / "CMakeLists.txt").exists():
                logger.info("unpacking %s", tarball.name)
                archive.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise StackError(f"cannot unpack {tarball}: {exc}") from exc
    return source_dir


def _build(source_dir: Path, build_dir: Path, upstream: str) -> None:
    logger.info(
        "building TimescaleDB %s (Apache edition) from Debian %s source against "
        "PostgreSQL %d (about a minute)…",
        upstream,
        SOURCE_SUITE,
        PG_MAJOR,
    )
    build_dir.mkdir(parents=True, exist_ok=True)
    run(
        [
            "cmake",
            "-S",
            str(source_dir),
            "-B",
            str(build_dir),
            "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
            f"-DPG_CONFIG={PG_CONFIG}",
            # The TSL sources are stripped from Debian's tarball; build the Apache-2 part only.
            "-DAPACHE_ONLY=1",
            "-DREGRESS_CHECKS=OFF",
            "-DTAP_CHECKS=OFF",
            "-DWARNINGS_AS_ERRORS=OFF",
            "-DSEND_TELEMETRY_DEFAULT=OFF",
        ],
        what="cmake configure (TimescaleDB)",
    )
    run(["make", "-C", str(build_dir), f"-j{os.cpu_count() or 2}"], what="make (TimescaleDB)")
    (build_dir / BUILT_MARKER).write_text(upstream + "\n")
