"""Certificates for a stack with TLS everywhere (tests, and anyone trying the TLS settings locally): a throwaway CA
(trustme, a development dependency) issues one server certificate for 127.0.0.1 and localhost, used by the services,
nats-server and PostgreSQL alike, and one client certificate presented by the services and the tests (mutual TLS).
Production certificates come from the deployment's own CA; the services only read PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

SERVER_NAMES = ("127.0.0.1", "localhost")
CLIENT_NAME = "coinstream-client"


@dataclass(frozen=True)
class StackTls:
    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path

    @classmethod
    def generate(cls, directory: Path) -> StackTls:
        import trustme  # a development dependency: `make run` and production never get here

        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert(*SERVER_NAMES)
        client = ca.issue_cert(CLIENT_NAME)
        files = cls(
            ca_file=directory / "ca.pem",
            server_cert_file=directory / "server.pem",
            server_key_file=directory / "server.key",
            client_cert_file=directory / "client.pem",
            client_key_file=directory / "client.key",
        )
        ca.cert_pem.write_to_path(str(files.ca_file))
        server.private_key_pem.write_to_path(str(files.server_key_file))
        client.private_key_pem.write_to_path(str(files.client_key_file))
        # The whole chain: a leaf and any intermediates, as servers send them.
        files.server_cert_file.write_bytes(b"".join(pem.bytes() for pem in server.cert_chain_pems))
        files.client_cert_file.write_bytes(b"".join(pem.bytes() for pem in client.cert_chain_pems))
        for key in (files.server_key_file, files.client_key_file):
            key.chmod(0o600)  # libpq refuses a client key others can read
        return files

    def service_env(self) -> dict[str, str]:
        """The settings that turn on TLS and mutual TLS for a service's gRPC port, its NATS connection and the gifts
        → wallet channel (the database's is in its URL: database_url_parameters)."""
        return {
            "COINSTREAM_GRPC_TLS_CERT_FILE": str(self.server_cert_file),
            "COINSTREAM_GRPC_TLS_KEY_FILE": str(self.server_key_file),
            "COINSTREAM_GRPC_TLS_CLIENT_CA_FILE": str(self.ca_file),
            "COINSTREAM_NATS_TLS_CA_FILE": str(self.ca_file),
            "COINSTREAM_NATS_TLS_CERT_FILE": str(self.client_cert_file),
            "COINSTREAM_NATS_TLS_KEY_FILE": str(self.client_key_file),
            "COINSTREAM_GIFTS_WALLET_TLS_CA_FILE": str(self.ca_file),
            "COINSTREAM_GIFTS_WALLET_TLS_CERT_FILE": str(self.client_cert_file),
            "COINSTREAM_GIFTS_WALLET_TLS_KEY_FILE": str(self.client_key_file),
        }

    def database_url_parameters(self) -> str:
        """What a database URL carries for TLS: the server verified (CA and host name), a client certificate shown."""
        parameters = {
            "sslmode": "verify-full",
            "sslrootcert": self.ca_file,
            "sslcert": self.client_cert_file,
            "sslkey": self.client_key_file,
        }
        return urlencode(parameters, safe="/")

    def libpq_env(self) -> dict[str, str]:
        """The same for PostgreSQL's own tools (psql, pg_isready)."""
        return {
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": str(self.ca_file),
            "PGSSLCERT": str(self.client_cert_file),
            "PGSSLKEY": str(self.client_key_file),
        }
