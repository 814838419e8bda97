"""HTTPS webhooks connect to the checked address yet verify TLS against the hostname."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from channels.base import TransientProviderError, WebhookContent
from channels.webhook import WebhookAdapter, with_secrets
from core.types import Channel
from tests.channels.test_webhook import SECRET, Resolver

NAME = "hooks.test"


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Receiver:
    """An HTTPS receiver on 127.0.0.1 that records the SNI name and Host of each request."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.sni: list[str | None] = []
        self.hosts: list[str] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.sni_callback = lambda sock, name, ctx: self.sni.append(name)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.hosts.append(self.headers["host"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Receiver, Path]]:
    cert, key = self_signed(tmp_path, NAME)
    server = Receiver(cert, key)
    yield server, cert
    server.close()


def _message(make_message: Any, url: str) -> Any:
    content = WebhookContent(payload={"type": "tls.check"})
    return with_secrets(make_message(Channel.WEBHOOK, (url,), content), (SECRET,))


def test_sni_and_certificate_use_the_hostname(receiver, make_settings, make_message, monkeypatch):
    server, cert = receiver
    resolver = Resolver(monkeypatch, {NAME: ["127.0.0.1"]})
    trust = ssl.create_default_context(cafile=str(cert))
    adapter = WebhookAdapter(make_settings(webhook_allowed_networks=["127.0.0.1/32"]), verify=trust)

    result = adapter.send(_message(make_message, f"https://{NAME}:{server.port}/hook"))
    adapter.close()

    assert result.delivered
    assert server.sni == [NAME]
    assert server.hosts == [f"{NAME}:{server.port}"]
    assert resolver.asked == [NAME]


def test_a_certificate_for_another_name_is_refused(
    receiver, make_settings, make_message, monkeypatch
):
    """Connecting by address must not weaken verification: the certificate (trusted, but
    for hooks.test) has to match the URL's name, here other.test."""
    server, cert = receiver
    Resolver(monkeypatch, {"other.test": ["127.0.0.1"]})
    trust = ssl.create_default_context(cafile=str(cert))
    adapter = WebhookAdapter(make_settings(webhook_allowed_networks=["127.0.0.1/32"]), verify=trust)

    with pytest.raises(TransientProviderError) as info:
        adapter.send(_message(make_message, f"https://other.test:{server.port}/hook"))
    adapter.close()

    assert "CERTIFICATE_VERIFY_FAILED" in info.value.message
    assert "other.test" in info.value.message
    assert server.hosts == []
