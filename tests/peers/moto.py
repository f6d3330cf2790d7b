"""moto's server: S3 (with Object Lock) and KMS on a free loopback port.

The store and key provider talk to it over real HTTP, exactly as they talk
to AWS, MinIO or Ceph RGW: nothing is patched inside the test process.  The
server runs as its own process (``python -m moto.server``), so its state
lives and dies with it.

Every client a test builds points at the server explicitly, and the
environment the fixture sets leaves botocore nothing else to reach: dummy
credentials, no shared config or credentials files, no instance metadata
service, no proxy for loopback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any, Self

import pytest

from tests.conftest import require
from tests.harness import free_port

REGION = "us-east-1"
START_TIMEOUT = 30
STOP_GRACE = 5

# botocore reads these before anything a client is given; a developer's
# shell must not point a test at a real account, profile or endpoint.
AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
AWS_UNSET = (
    "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_KMS", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
)

_LOOPBACK_ONLY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MotoServer:
    """One moto server process listening on 127.0.0.1 only."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()
        self._final_output: str | None = None
        self._session: Any = None

    def start(self) -> Self:
        """Start the server and return once it answers HTTP."""
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server",
             "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**_without_aws(os.environ), **AWS_ENVIRONMENT},
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                output = self.output()
                self.stop()
                raise RuntimeError(f"moto server did not start:\n{output}")
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        try:
            with _LOOPBACK_ONLY.open(f"{self.endpoint}/moto-api/data.json",
                                     timeout=1):
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def output(self) -> str:
        """Return what the server has printed so far."""
        if self._final_output is not None:
            return self._final_output
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """Stop the server and wait for it to exit."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._final_output is None:
            self._final_output = self.output()
            self._log.close()

    def client(self, service: str, **options: Any) -> Any:
        """Return a boto3 client for ``service`` pointed at this server."""
        import boto3

        # One session: loading botocore's service models is the slow part.
        if self._session is None:
            self._session = boto3.session.Session()
        return self._session.client(
            service, endpoint_url=self.endpoint, region_name=REGION, **options
        )


def _without_aws(environ: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in environ.items()
            if name not in AWS_UNSET and not name.startswith("AWS_CONFIG")}


def require_moto() -> None:
    """Skip the test (fail it under CI=true) when moto's server is missing."""
    for module in ("moto", "moto.server", "flask_cors"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        require(found, f"{module} is not installed (pip install 'moto[server]')")


@contextlib.contextmanager
def aws_environment(scratch: str) -> Iterator[None]:
    """Set the dummy AWS environment for clients built inside the block."""
    with pytest.MonkeyPatch.context() as patch:
        for name in AWS_UNSET:
            patch.delenv(name, raising=False)
        for name, value in AWS_ENVIRONMENT.items():
            patch.setenv(name, value)
        patch.setenv("AWS_CONFIG_FILE", os.path.join(scratch, "absent-config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE",
                     os.path.join(scratch, "absent-credentials"))
        yield


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto server on loopback, shared by one test module."""
    require_moto()
    with aws_environment(str(tmp_path_factory.mktemp("aws"))):
        try:
            server = MotoServer().start()
        except RuntimeError as err:
            require(False, str(err))
        try:
            yield server
        finally:
            server.stop()
