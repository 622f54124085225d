"""Debian tools the component tests check rendered files with (cloud-init, systemd-analyze, shellcheck).

A fresh machine may lack them, and its package lists may be stale: install on demand, refreshing
the lists once when the first attempt fails. Never skip: a missing checker fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["apt_install"]


def apt_install(command: str, package: str) -> str:
    """The path of ``command``, installing its Debian package first when it is missing."""
    found = shutil.which(command)
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], check=False, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    if not shutil.which(command):  # a stale package list: refresh it once
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], check=True, env=env,
                       stdout=subprocess.DEVNULL, timeout=600)
    found = shutil.which(command)
    assert found, f"{package} installed but {command} not on PATH"
    return found
