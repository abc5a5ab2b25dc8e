"""Helpers for the disk_io tests."""

from __future__ import annotations

from pathlib import Path


def make_disk(
    ds_dir: Path,
    name: str,
    capacity: int,
    data: list[tuple[int, bytes]] = (),  # type: ignore[assignment]
    descriptor: str = "",
) -> Path:
    """A sparse `<name>-flat.vmdk` of `capacity` bytes with `data` written at offsets."""
    vm_dir = ds_dir / name
    vm_dir.mkdir(parents=True, exist_ok=True)
    (vm_dir / f"{name}.vmdk").write_text(descriptor)
    flat = vm_dir / f"{name}-flat.vmdk"
    with open(flat, "wb") as f:
        f.truncate(capacity)
        for off, blob in data:
            f.seek(off)
            f.write(blob)
    return flat


class TlsServer:
    """A loopback TLS server with a fresh self-signed certificate that accepts and closes
    connections: enough for the certificate checks before VDDK connects. Stop with close()."""

    def __init__(self, tmp: Path) -> None:
        import datetime
        import socket
        import ssl
        import threading

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vc.test")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.der = cert.public_bytes(serialization.Encoding.DER)
        pem = tmp / "tls.pem"
        pem.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pem)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._ctx = ctx
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            try:
                with self._ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except OSError:
                pass

    def close(self) -> None:
        self._sock.close()
