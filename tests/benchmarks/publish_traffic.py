"""Publisher process for recording benchmarks: synthetic shop traffic, replies included, built
into protocol frames first and written to a raw socket, so the publisher is never what limits
the rate (nats-py publishing is slower than the recorder it feeds).
`PYTHONPATH=tests python tests/benchmarks/publish_traffic.py PORT FLOWS SEED` prints
{"wall_start": ..., "seconds": ...}: when sending began (after building) and how long it took.
"""

from __future__ import annotations

import json
import socket
import sys
import time

from flowgen import Message, traffic


def frame(subject: str, payload: bytes, headers: list[tuple[str, str]], reply: str = "") -> bytes:
    head = f"{subject} {reply}".rstrip().encode()
    if not headers:
        return b"PUB %s %d\r\n%s\r\n" % (head, len(payload), payload)
    hdr = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    hdr_bytes = hdr.encode()
    size = len(hdr_bytes) + len(payload)
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (head, len(hdr_bytes), size, hdr_bytes, payload)


def frames(messages: list[Message]) -> list[bytes]:
    out = []
    for msg in messages:
        out.append(frame(msg.subject, msg.payload, msg.headers, msg.reply or ""))
        if msg.reply:
            out.append(frame(msg.reply, msg.reply_payload, []))  # the header-less reply
    return out


def main(port: int, flows: int, seed: int) -> None:
    built = frames(traffic(flows, noise_every=8, seed=seed, window=200))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.recv(4096)  # INFO
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
    wall_start = time.time()
    start = time.monotonic()
    for i in range(0, len(built), 1000):
        sock.sendall(b"".join(built[i : i + 1000]))
    sock.sendall(b"PING\r\n")
    buf = b""
    while b"PONG" not in buf:
        buf += sock.recv(4096)
    sock.close()
    print(json.dumps({"wall_start": wall_start, "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
