"""Herald's Temporal connection really speaks TLS, mTLS and API-key auth when configured.

A local TLS-terminating proxy (127.0.0.1) stands in for a secured Temporal: it checks the
client certificate against a CA made here, reads the gRPC headers the client sends, and
forwards the decrypted stream to the test dev server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from core.settings import Settings
from core.temporal import connect, connect_options

# --- a throwaway PKI ------------------------------------------------------------------


@dataclass
class Issued:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Issued(cert_path, key_path)


def make_pki(tmp_path: Path) -> tuple[Issued, Issued, Issued]:
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("herald test CA"))
        .issuer_name(_name("herald test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> Any:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server_cert, server_key = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_cert, client_key = leaf("herald-worker", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return (
        _write(tmp_path / "ca", ca_cert, ca_key),
        _write(tmp_path / "server", server_cert, server_key),
        _write(tmp_path / "client", client_cert, client_key),
    )


# --- the proxy ------------------------------------------------------------------------


@dataclass
class TlsProxy:
    upstream: str
    context: ssl.SSLContext
    port: int = 0
    # Per TLS connection: the client certificate's subject CN (None without one).
    clients: list[str | None] = field(default_factory=list)
    # gRPC request headers the clients sent, decoded from the decrypted HTTP/2 stream.
    headers: list[dict[str, str]] = field(default_factory=list)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        self.clients.append(subject.get("commonName"))
        host, port = self.upstream.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        parser = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        parser.initiate_connection()

        def read_headers(chunk: bytes) -> None:
            for event in parser.receive_data(chunk):
                if isinstance(event, h2.events.RequestReceived):
                    self.headers.append(dict(event.headers))  # type: ignore[arg-type]
                elif isinstance(event, h2.events.DataReceived):
                    parser.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

        await asyncio.gather(
            _pipe(reader, up_writer, read_headers),
            _pipe(up_reader, writer, None),
            return_exceptions=True,
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[TlsProxy]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield self
            server.close()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tap: Any | None
) -> None:
    try:
        while chunk := await reader.read(65536):
            if tap is not None:
                with contextlib.suppress(Exception):  # the tap only reads; never break the pipe
                    tap(chunk)
            writer.write(chunk)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def server_context(server: Issued, ca: Issued, require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server.cert, server.key)
    ctx.set_alpn_protocols(["h2"])
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca.cert)
    return ctx


def settings_for(proxy: TlsProxy, **values: Any) -> Settings:
    return Settings.model_validate({"temporal_address": f"127.0.0.1:{proxy.port}", **values})


async def refused(settings: Settings) -> BaseException:
    """One connection attempt (no waiting for readiness), which must fail."""
    with pytest.raises(Exception) as failed:
        client = await asyncio.wait_for(
            Client.connect(settings.temporal_target, **connect_options(settings)), 20
        )
        await client.workflow_service.get_system_info(_system_info_request())
    return failed.value


def _system_info_request() -> Any:
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    return GetSystemInfoRequest()


# --- tests ----------------------------------------------------------------------------


async def test_mtls_connects_with_the_client_certificate_and_not_without(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    ca, server, client = make_pki(tmp_path)
    upstream = temporal_env.client.service_client.config.target_host
    proxy = TlsProxy(upstream, server_context(server, ca, require_client_cert=True))
    async with proxy.running():
        good = settings_for(
            proxy,
            temporal_tls_cert=client.cert,
            temporal_tls_key=client.key,
            temporal_tls_ca=ca.cert,
        )
        connected = await asyncio.wait_for(connect(good), 30)
        info = await connected.workflow_service.get_system_info(_system_info_request())
        assert info.server_version  # a real answer from the dev server, through the proxy
        assert "herald-worker" in proxy.clients  # the client certificate was presented

        # Without the client certificate the proxy refuses the handshake; without TLS the
        # plaintext never reaches the server as gRPC; without the CA the proxy's
        # certificate is not trusted (the system roots do not know it).
        for values in ({"temporal_tls_ca": ca.cert}, {}):
            assert isinstance(await refused(settings_for(proxy, **values)), RuntimeError)
        untrusted = await refused(
            settings_for(proxy, temporal_tls_cert=client.cert, temporal_tls_key=client.key)
        )
        assert "UnknownIssuer" in str(untrusted)
        assert proxy.headers, "the proxy read the gRPC requests"
        assert all(h.get(":scheme") == "https" for h in proxy.headers)


async def test_an_api_key_is_sent_over_tls(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    ca, server, _ = make_pki(tmp_path)
    upstream = temporal_env.client.service_client.config.target_host
    proxy = TlsProxy(upstream, server_context(server, ca, require_client_cert=False))
    async with proxy.running():
        # No TLS setting but the CA: the API key alone switches TLS on.
        settings = settings_for(proxy, temporal_api_key="tcld-test-key", temporal_tls_ca=ca.cert)
        connected = await asyncio.wait_for(connect(settings), 30)
        await connected.workflow_service.get_system_info(_system_info_request())
        assert proxy.clients == [None]  # TLS, without a client certificate
        sent = [h.get("authorization") for h in proxy.headers]
        assert "Bearer tcld-test-key" in sent
