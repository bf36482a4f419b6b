"""Fixtures shared by every test: a trustme CA and a server certificate on disk."""

from __future__ import annotations

import gc
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
import trustme
from hypothesis import settings

from tests.helpers.gateway import GatewayCertificates

# Sessions running in background threads log through structlog's defaults; tests assert on
# logs with `structlog.testing.capture_logs()`, which works whatever the factory.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())

settings.register_profile("fast", max_examples=50, deadline=None)
settings.register_profile("deep", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


@dataclass(frozen=True)
class CertFiles:
    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path

    def gateway_files(self) -> GatewayCertificates:
        return {"cert_file": self.cert_file, "key_file": self.key_file, "ca_file": self.ca_file}

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return context


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    directory = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1", "mail.example.test")
    ca_file = directory / "ca.pem"
    cert_file = directory / "cert.pem"
    key_file = directory / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    with cert_file.open("wb") as out:
        for blob in server.cert_chain_pems:
            out.write(blob.bytes())
    return CertFiles(ca, ca_file, cert_file, key_file)


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """The cyclic garbage collector off for the test, after one full collection: what the
    test frees, reference counting alone freed."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
