"""Raw HTTP/1.1 exchanges for the hardening tests: bytes exactly as a hostile client would send them."""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int
    """0 when the server closed the connection without answering."""
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def head(method: str, path: str, *headers: str, length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gpuguard", "Content-Type: application/json", *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path: str, body: bytes, *headers: str) -> bytes:
    return head("POST", path, "Connection: close", *headers, length=len(body)) + body


def connect(port: int, *, context: ssl.SSLContext | None = None, timeout: float = 20) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return context.wrap_socket(raw, server_hostname="localhost") if context else raw


def read_reply(connection: socket.socket) -> Reply:
    """One reply (by its Content-Length), or status 0 if the server closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(connection)
        if not chunk:
            return Reply(0, {}, data)
        data += chunk
    top, body = data.split(b"\r\n\r\n", 1)
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = _recv(connection)
        if not chunk:
            break
        body += chunk
    return Reply(int(lines[0].split(" ")[1]), headers, body)


def _recv(connection: socket.socket) -> bytes:
    try:
        return connection.recv(65536)
    except (ConnectionResetError, ssl.SSLError):
        return b""


def exchange(port: int, raw: bytes, *, context: ssl.SSLContext | None = None, timeout: float = 20) -> Reply:
    with connect(port, context=context, timeout=timeout) as connection:
        connection.sendall(raw)
        return read_reply(connection)


def closed_by_server(connection: socket.socket) -> bool:
    """True once the server has closed (a read returns EOF or the connection is reset)."""
    try:
        return connection.recv(65536) == b""
    except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError):
        return True
