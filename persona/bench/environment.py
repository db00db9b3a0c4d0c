"""What a benchmark run records about where it ran: the machine, the git commit, the
reference tools (found on ``PATH`` or installed from Debian when missing).

Every figure of the report is a ratio measured on one machine in one run; these records
say which machine, which tool versions and which commit, so two reports can be compared.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Tool:
    """A reference tool: the command the benchmarks run and the Debian package that has it."""

    name: str
    command: str
    package: str
    purpose: str


#: the reference tools the benchmarks compare against or use to make inputs (ARCHITECTURE.md)
TOOLS: tuple[Tool, ...] = (
    Tool("snap-aligner", "snap-aligner", "snap-aligner", "aligner (the thesis' SNAP)"),
    Tool("bwa", "bwa", "bwa", "aligner"),
    Tool("minimap2", "minimap2", "minimap2", "aligner; makes the sort/markdup inputs"),
    Tool("samtools", "samtools", "samtools", "sort, markdup, BAM/CRAM sizes"),
    Tool("sambamba", "sambamba", "sambamba", "sort, markdup"),
    Tool("biobambam2", "bamsormadup", "biobambam2", "sort + markdup"),
    Tool("samblaster", "samblaster", "samblaster", "markdup"),
    Tool("picard", "PicardCommandLine", "picard-tools", "MarkDuplicates, SortSam"),
    Tool("wgsim", "wgsim", "wgsim", "read simulator (truth for accuracy)"),
    Tool("art", "art_illumina", "art-nextgen-simulation-tools", "read simulator (realistic qualities)"),
    Tool("zcat", "zcat", "gzip", "decompression baseline for import"),
    Tool("pigz", "pigz", "pigz", "parallel decompression baseline for import"),
)

Progress = Callable[[str], None]


def _out(cmd: list[str], timeout: float = 20) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def package_version(package: str) -> str:
    """The installed Debian version of ``package`` ('' when dpkg does not know it)."""
    return _out(["dpkg-query", "-W", "-f=${Version}", package])


def find_tools(install: bool, progress: Progress) -> dict[str, dict[str, Any]]:
    """Each reference tool's path and version; with ``install``, missing ones are installed
    with apt-get first (as root, or through sudo when it needs no password)."""
    missing = [t for t in TOOLS if shutil.which(t.command) is None]
    if missing and install:
        _apt_install([t.package for t in missing], progress)
    tools: dict[str, dict[str, Any]] = {}
    for t in TOOLS:
        path = shutil.which(t.command)
        if path is None:
            tools[t.name] = {"command": t.command, "package": t.package, "purpose": t.purpose,
                             "missing": f"{t.command} not found (apt-get install {t.package})"}
        else:
            tools[t.name] = {"command": t.command, "package": t.package, "purpose": t.purpose, "path": path,
                             "version": package_version(t.package) or "unknown (not a Debian package)"}
    return tools


def _apt_install(packages: list[str], progress: Progress) -> None:
    if shutil.which("apt-get") is None:
        progress(f"reference tools missing and no apt-get here: {' '.join(packages)}")
        return
    sudo: list[str] = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and shutil.which("sudo") is None:
        progress(f"reference tools missing ({' '.join(packages)}); not root and no sudo: not installing")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    progress(f"installing reference tools: {' '.join(packages)}")
    for attempt in range(3):
        # another apt may hold the lock (a shared machine); the package lists may be stale
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if r.returncode == 0:
            return
        if attempt == 0:
            subprocess.run([*sudo, "apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        else:
            time.sleep(15)
    progress(f"apt-get install failed; the benchmarks needing them report it: {r.stderr.strip()[-300:]}")


def machine() -> dict[str, Any]:
    """CPU model, cores (all, and those this process may use), memory, OS, Python."""
    info: dict[str, Any] = {"hostname": platform.node(), "kernel": platform.release(),
                            "python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        info["cpus_usable"] = os.cpu_count()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info.setdefault("cpu_model", platform.processor() or platform.machine())
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def git_state(repo: Path) -> dict[str, Any]:
    """The commit the benchmarks ran at, and whether tracked files differed from it."""
    commit = _out(["git", "-C", str(repo), "rev-parse", "HEAD"])
    if not commit:
        return {"commit": "unknown (not a git checkout)"}
    dirty = bool(_out(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"]))
    return {"commit": commit, "subject": _out(["git", "-C", str(repo), "log", "-1", "--format=%s"]),
            "dirty": dirty}
