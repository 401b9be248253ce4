"""Debian packages and rendered config files: the machine-level pieces every service needs."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from string import Template

from carbonflow.config import REPO_ROOT
from carbonflow.errors import StackError
from carbonflow.stack.process import is_root, run

logger = logging.getLogger(__name__)

INFRA_DIR = REPO_ROOT / "infra"
APT_LISTS = Path("/var/lib/apt/lists")


def apt_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")
    return env


def package_installed(name: str) -> bool:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", name],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise StackError("dpkg-query not found: the local stack needs Debian or Ubuntu") from exc
    return out.returncode == 0 and out.stdout.startswith("ii")


def ensure_packages(packages: list[str], *, why: str) -> None:
    """apt-get install the packages that are missing (root only; otherwise say what to run)."""
    missing = [name for name in packages if not package_installed(name)]
    if not missing:
        return
    if not is_root():
        raise StackError(
            f"{why} needs the Debian packages {' '.join(missing)}; install them with "
            f"`sudo apt-get install -y {' '.join(missing)}` and run this again"
        )
    logger.info(
        "installing Debian packages for %s: %s (apt-get, may take a minute)…",
        why,
        " ".join(missing),
    )
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    # Refresh the package lists only when they are missing or the install fails.
    if not any(APT_LISTS.glob("*_Packages*")):
        _apt_update()
    code, _ = run(install, what=f"apt-get install {' '.join(missing)}", env=apt_env(), check=False)
    if code != 0:
        logger.info("apt-get install failed; refreshing package lists and retrying")
        _apt_update()
        run(install, what=f"apt-get install {' '.join(missing)}", env=apt_env())


def _apt_update() -> None:
    logger.info("refreshing Debian package lists (apt-get update)…")
    run(["apt-get", "update"], what="apt-get update", env=apt_env())


def require_binary(path: Path, package: str, *, why: str) -> Path:
    if not path.exists():
        ensure_packages([package], why=why)
    if not path.exists():
        raise StackError(f"{path} is still missing after installing {package}")
    return path


def which_or_install(binary: str, package: str, *, why: str) -> Path:
    found = shutil.which(binary)
    if found is None:
        ensure_packages([package], why=why)
        found = shutil.which(binary)
    if found is None:
        raise StackError(f"`{binary}` is still missing after installing {package}")
    return Path(found)


def render(template: str, target: Path, **values: object) -> bool:
    """Render infra/<template> to target; True if the file changed."""
    source = INFRA_DIR / template
    try:
        text = Template(source.read_text()).substitute({k: str(v) for k, v in values.items()})
    except FileNotFoundError as exc:
        raise StackError(f"config template {source} is missing") from exc
    except (KeyError, ValueError) as exc:
        raise StackError(f"config template {source} has an unknown placeholder: {exc}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and target.read_text() == text:
        return False
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(target)
    return True
