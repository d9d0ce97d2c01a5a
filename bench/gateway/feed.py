#!/usr/bin/python3
"""A node locator whose table churns: the feed of bench/gateway/churn.sh.

It serves the locator protocol of docs/protocol.md (sections 1-3 and 7) on
TCP, with one name whose endpoints change RATE times per second among the
non-empty subsets of the given backends, so a router subscribed to it
(`drover gateway --metalocator HOST:PORT`) must follow 100 changes a second
without failing a request.

    feed.py --port PORT --backends HOST:PORT,HOST:PORT,... [--name /bench/web]
            [--host bench.local] [--path /] [--rate 100]

Served: `connect [uuid]` (the whole table, then one `write` per change, each
with the header ["revision", "<n>"]; `ack [revision]` accepted, `close`
answered), `resolve [name]` (the entry, attrs included), `cluster []`, and
`routing [id]` (no groups). Checked against drover's own metalocator
(`drover server` with `peers = feed=127.0.0.1:PORT`): it syncs and acks
every revision.
The entry of the name is [[[host, port]...], version, api, attrs] with
attrs = {"routes": [{"host": HOST, "path": PATH}]}.

On SIGTERM or SIGINT it prints one JSON line of statistics (changes made,
revision, each subscriber's last sent and acked revision) and exits.
Single-threaded (asyncio): a change and its broadcast happen in one step, so
a subscriber sees the full table at revision R and then exactly R+1, R+2...
"""
import argparse
import asyncio
import json
import signal
import sys
import time

import msgpack

WRITE, ERROR, CLOSE = 0, 1, 2  # stream message types (section 3)
ACK = 3  # subscriber -> locator on a connect channel (section 7)
RESOLVE, CONNECT, REFRESH, CLUSTER, PUBLISH, ROUTING = range(6)
MAX_MESSAGE = 64 * 1024  # what the real locator accepts from a client
MAX_BACKLOG = 16 << 20  # output waiting for a subscriber before it is dropped


class Feed:
    def __init__(self, args):
        self.name = args.name
        self.backends = []
        for b in args.backends.split(","):
            host, port = b.rsplit(":", 1)
            self.backends.append((host, int(port)))
        self.attrs = {"routes": [{"host": args.host, "path": args.path}]}
        self.rate = args.rate
        self.port = args.port
        self.revision = 1
        self.mask = 1  # subset of backends in the table now (bit i = backend i)
        self.changes = 0
        self.started = None
        self.subs = {}  # (conn id, channel) -> {"uuid", "peer", "sent", "acked", "writer"}
        self.gone = []  # statistics of subscribers that left
        self.conns = 0

    def entry(self):
        eps = sorted(
            [list(b) for i, b in enumerate(self.backends) if self.mask >> i & 1],
            key=lambda e: (e[0], e[1]),
        )
        return [eps, 1, "service", self.attrs]

    def stream_write(self, writer, channel, table):
        msg = [channel, WRITE, [table], [["revision", str(self.revision)]]]
        writer.write(msgpack.packb(msg, use_bin_type=True))

    def change(self):
        """Next non-empty subset, never the one in place; one write to every
        subscriber, in revision order."""
        n = (1 << len(self.backends)) - 1
        self.mask = self.mask % n + 1
        self.revision += 1
        self.changes += 1
        table = {self.name: self.entry()}
        for sub in self.subs.values():
            if sub["writer"].transport.get_write_buffer_size() > MAX_BACKLOG:
                # Not reading: the real locator disconnects it; so do we.
                sub["writer"].transport.abort()
                continue
            self.stream_write(sub["writer"], sub["channel"], table)
            sub["sent"] = self.revision

    async def ticker(self):
        """RATE changes a second on a fixed schedule (no drift from the time
        each step takes)."""
        period = 1.0 / self.rate
        self.started = time.monotonic()
        nxt = self.started
        while True:
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.change()

    async def serve(self, reader, writer):
        self.conns += 1
        cid = self.conns
        peer = "%s:%s" % writer.get_extra_info("peername")[:2]
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=4 * MAX_MESSAGE)
        last_channel = 0
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                unpacker.feed(data)
                for msg in unpacker:
                    last_channel = self.handle(cid, peer, writer, msg, last_channel)
                    if last_channel < 0:
                        raise ConnectionError("protocol error")
                await writer.drain()
        except Exception as e:  # framing, buffer limit, reset: this connection only
            print("feed: %s: %s" % (peer, e), file=sys.stderr)
        finally:
            for key in [k for k in self.subs if k[0] == cid]:
                self.gone.append(self.sub_stats(self.subs.pop(key)))
            writer.close()

    def handle(self, cid, peer, writer, msg, last_channel):
        """One message; returns the highest channel opened so far, or -1 on a
        protocol error (the connection ends, section 4)."""
        if not isinstance(msg, list) or len(msg) not in (3, 4):
            return -1
        channel, mtype, args = msg[0], msg[1], msg[2]
        if not isinstance(channel, int) or channel < 1 or not isinstance(args, list):
            return -1
        sub = self.subs.get((cid, channel))
        if sub is not None:  # a message on an open connect channel
            if mtype == ACK:
                # An unsigned integer, or its decimal text as str or bin.
                rev = args[0] if len(args) == 1 else None
                if isinstance(rev, bytes):
                    rev = rev.decode("ascii", "replace")
                if isinstance(rev, str):
                    rev = int(rev) if rev.isdigit() else None
                if not isinstance(rev, int) or isinstance(rev, bool) or rev < 0 or rev > sub["sent"]:
                    self.reply_error(writer, channel, 22, "ack: bad or unsent revision %r" % (rev,))
                    self.gone.append(self.sub_stats(self.subs.pop((cid, channel))))
                    return last_channel
                sub["acked"] = max(sub["acked"], rev)
                sub["acks"] += 1
            elif mtype in (CLOSE, ERROR):
                writer.write(msgpack.packb([channel, CLOSE, []]))
                self.gone.append(self.sub_stats(self.subs.pop((cid, channel))))
            else:
                self.reply_error(writer, channel, 71, "connect: unexpected message type %d" % mtype)
                self.gone.append(self.sub_stats(self.subs.pop((cid, channel))))
            return last_channel
        if channel <= last_channel:
            # A finished channel (resolve answered, routing/close): only
            # close on a routing channel is expected; ignore it.
            return last_channel
        if mtype == CONNECT:
            uuid = args[0] if args and isinstance(args[0], str) else "?"
            self.subs[(cid, channel)] = {
                "uuid": uuid,
                "peer": peer,
                "channel": channel,
                "writer": writer,
                "sent": self.revision,
                "acked": 0,
                "acks": 0,
                "since": self.revision,
            }
            self.stream_write(writer, channel, {self.name: self.entry()})
            print("feed: subscriber %s (%s) at revision %d" % (uuid, peer, self.revision),
                  file=sys.stderr)
        elif mtype == RESOLVE:
            name = args[0] if args else None
            if name == self.name:
                writer.write(msgpack.packb([channel, 0, self.entry()]))
            else:
                self.reply_error(writer, channel, 2, "service not found", category=2)
        elif mtype == CLUSTER:
            writer.write(msgpack.packb([channel, 0, [["feed", [["127.0.0.1", self.port]]]]]))
        elif mtype == ROUTING:
            writer.write(msgpack.packb([channel, WRITE, [{}]]))
        else:
            self.reply_error(writer, channel, 38, "unknown method %d" % mtype)
        return channel

    @staticmethod
    def reply_error(writer, channel, code, text, category=1):
        writer.write(msgpack.packb([channel, ERROR, [[category, code], text]]))

    @staticmethod
    def sub_stats(sub):
        return {k: sub[k] for k in ("uuid", "peer", "since", "sent", "acked", "acks")}

    def stats(self):
        secs = time.monotonic() - self.started if self.started else 0.0
        return {
            "changes": self.changes,
            "seconds": round(secs, 3),
            "rate": round(self.changes / secs, 1) if secs else 0.0,
            "revision": self.revision,
            "subscribers": [self.sub_stats(s) for s in self.subs.values()],
            "gone": self.gone,
        }


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--backends", required=True, help="HOST:PORT,HOST:PORT,...")
    ap.add_argument("--name", default="/bench/web")
    ap.add_argument("--host", default="bench.local")
    ap.add_argument("--path", default="/")
    ap.add_argument("--rate", type=float, default=100.0)
    args = ap.parse_args()
    feed = Feed(args)
    server = await asyncio.start_server(feed.serve, "127.0.0.1", args.port)
    done = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: done.done() or done.set_result(0))
    tick = asyncio.ensure_future(feed.ticker())
    print("feed: listening on 127.0.0.1:%d" % args.port, file=sys.stderr, flush=True)
    await done
    tick.cancel()
    server.close()
    print(json.dumps(feed.stats()), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
