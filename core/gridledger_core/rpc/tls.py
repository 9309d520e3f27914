"""mTLS credentials from a consortium directory. Servers require a client certificate from one
of the consortium's TLS CAs; clients verify servers against the same bundle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class TlsFiles:
    ca_bundle: Path
    certificate: Path
    key: Path

    @classmethod
    def for_node(cls, consortium_dir: Path, name: str) -> TlsFiles:
        node = consortium_dir / "nodes" / name
        return cls(consortium_dir / "tls-ca-bundle.pem", node / "tls.pem", node / "tls.key")

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.certificate.read_bytes())],
            root_certificates=self.ca_bundle.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_bundle.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.certificate.read_bytes(),
        )


CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]


# Servers accept the clients' keepalive pings (every 20 s, also on idle connections such as
# Deliver and SubscribeCommits streams) instead of answering GOAWAY "too_many_pings".
SERVER_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]


# What a server accepts in one message is what its role legitimately receives, not the
# channels' 64 MiB: gRPC refuses anything larger with RESOURCE_EXHAUSTED before it is read
# into memory or parsed, so a hostile member's oversized calls cannot pin gigabytes or hold up
# a server's event loop. Room for the message's own framing on top of its payload limit.
FRAMING_BYTES = 64 << 10
QUERY_RECEIVE_BYTES = 1 << 20  # committers' and meter agents' requests: ids, keys, pages


def receive_limit(payload_bytes: int) -> tuple[str, int]:
    """The server option that refuses messages over `payload_bytes` (plus framing)."""
    return ("grpc.max_receive_message_length", payload_bytes + FRAMING_BYTES)


def secure_channel(address: str, tls: TlsFiles) -> grpc.Channel:
    return grpc.secure_channel(address, tls.channel_credentials(), options=CHANNEL_OPTIONS)
