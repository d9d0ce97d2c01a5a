#!/usr/bin/env python3
"""A worker written against the raw worker protocol (docs/protocol.md
section 5) with python3-msgpack only, no SDK: the integration tests use it
to check the engine independently of the SDKs.

Events: "crash" prints a few lines and exits with status 3 on invoke;
"headers" answers the invoke's headers as "name=value;..." and closes;
anything else echoes every chunk and closes after the caller's close (or
error)."""
import os
import select
import socket
import sys
import time

import msgpack


def main():
    argv = sys.argv[1:]
    opts = dict(zip(argv[0::2], argv[1::2]))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(opts["--endpoint"])

    def send(*msg):
        sock.sendall(msgpack.packb(list(msg), use_bin_type=True))

    send(1, 0, [opts["--uuid"]])
    unpacker = msgpack.Unpacker(raw=False)
    events = {}
    last_beat = time.monotonic()
    while True:
        ready, _, _ = select.select([sock], [], [], 0.2)
        if time.monotonic() - last_beat > 1.0:
            send(1, 0, [])
            last_beat = time.monotonic()
        if not ready:
            continue
        data = sock.recv(65536)
        if not data:
            return 0
        unpacker.feed(data)
        for msg in unpacker:
            ch, kind, args = msg[0], msg[1], msg[2]
            if ch == 1:
                if kind == 1:  # terminate
                    send(1, 1, [1, "bye"])
                    return 0
                continue
            if ch not in events:
                events[ch] = args[0]
                if args[0] == "headers":
                    # the invoke's headers, "name=value;..." (what the
                    # client's enqueue carried)
                    hdrs = msg[3] if len(msg) > 3 else []
                    text = "".join(f"{n}={v.decode() if isinstance(v, bytes) else v};"
                                   for n, v in hdrs)
                    send(ch, 0, [text.encode()])
                    send(ch, 2, [])
                    continue
                if args[0] == "crash":
                    for i in range(5):
                        print(f"raw_echo crash line {i}", flush=True)
                    print("raw_echo dying on purpose", file=sys.stderr, flush=True)
                    os._exit(3)
                continue
            if kind == 0:
                send(ch, 0, [args[0]])
            else:
                send(ch, 2, [])
                del events[ch]


if __name__ == "__main__":
    sys.exit(main())
