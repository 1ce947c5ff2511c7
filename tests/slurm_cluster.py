"""A real one-node SLURM cluster for the tests: munge, slurmctld and slurmd started from a private
configuration in a temporary folder, and shut down afterwards.

The configuration is also linked at SLURM's default path, /etc/slurm/slurm.conf (and the link removed
at the end): Snakemake's SLURM job-step plugin runs each job through a nested ``srun`` with every
``SLURM_*`` variable but the job's identity removed, ``SLURM_CONF`` included, so a configuration
anywhere else is invisible to it. A machine that already has /etc/slurm/slurm.conf (a real cluster)
is never touched: ``why_not()`` says so and the test skips.

Needs root and Debian's ``slurm-wlm`` and ``munge`` packages (``apt-get install slurm-wlm munge``),
as on the project's development machines; ``why_not()`` says in one line what is missing, for the
test's skip reason. Also usable by hand::

    python tests/slurm_cluster.py up /tmp/slurm      # prints the SLURM_CONF to export
    python tests/slurm_cluster.py down /tmp/slurm
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )


def why_not() -> str:
    """'' when a local cluster can be started here, else the reason (one line)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmctld/slurmd run as SlurmUser=root)"
    missing = [d for d in DAEMONS if _which(d) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
    if DEFAULT_CONF.exists() and not DEFAULT_CONF.is_symlink():
        return f"{DEFAULT_CONF} exists (a real cluster's configuration?); the local test cluster does not replace it"
    return ""


def _config(folder: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    memory_mb = int(next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")) / 1024)
    for sub in ("spool/ctld", "spool/d", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(
        f"""ClusterName=puppettest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation={folder}/spool/ctld
SlurmdSpoolDir={folder}/spool/d
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
NodeName={host} CPUs={os.cpu_count()} RealMemory={int(memory_mb * 0.8)} State=UNKNOWN
PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def _munge() -> None:
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run([_which("mungekey") or "/usr/sbin/mungekey", "--create"], check=True, capture_output=True)
    subprocess.run(["chown", "-R", "munge:munge", "/etc/munge", "/run/munge"], check=False, capture_output=True)
    key.chmod(0o400)
    subprocess.run([_which("munged"), "--force"], check=True, capture_output=True)


def up(folder: Path, timeout: float = 60.0) -> dict[str, str]:
    """Start the cluster; return the environment (``SLURM_CONF``) its clients need."""
    folder = Path(folder)
    conf = _config(folder)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
    if DEFAULT_CONF.is_symlink():
        DEFAULT_CONF.unlink()  # a link left by an earlier test run
    DEFAULT_CONF.symlink_to(conf)
    _munge()
    subprocess.run([_which("slurmctld"), "-f", str(conf)], check=True, env=env, capture_output=True)
    subprocess.run([_which("slurmd"), "-f", str(conf)], check=True, env=env, capture_output=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run([_which("sinfo"), "-h", "-o", "%t"], env=env, capture_output=True, text=True)
        if state.returncode == 0 and state.stdout.strip() in ("idle", "mix", "alloc"):
            return {"SLURM_CONF": str(conf)}
        time.sleep(0.5)
    log = (folder / "log" / "slurmctld.log").read_text()[-400:] if (folder / "log" / "slurmctld.log").exists() else ""
    down(folder)
    raise RuntimeError(f"the local SLURM cluster did not come up in {timeout:.0f} s: {log}")


def down(folder: Path) -> None:
    """Stop slurmctld and slurmd (munged is left: it may serve others)."""
    env = {**os.environ, "SLURM_CONF": str(Path(folder) / "slurm.conf")}
    subprocess.run([_which("scontrol"), "shutdown"], env=env, capture_output=True)
    for pid_file in ("slurmctld.pid", "slurmd.pid"):
        path = Path(folder) / pid_file
        if path.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(path.read_text().strip()), 15)
    if DEFAULT_CONF.is_symlink() and DEFAULT_CONF.resolve() == (Path(folder) / "slurm.conf").resolve():
        DEFAULT_CONF.unlink()


@contextlib.contextmanager
def local_cluster(folder: Path):
    env = up(folder)
    try:
        yield env
    finally:
        down(folder)


if __name__ == "__main__":
    action, where = sys.argv[1], Path(sys.argv[2])
    if action == "up":
        print(f"export SLURM_CONF={up(where)['SLURM_CONF']}")
    else:
        down(where)
