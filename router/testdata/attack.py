"""attack.py INGEST STORE LIVE SECONDS BATCH SUBSCRIBE...: a libzmq (pyzmq) outsider attacking a router.

For SECONDS it
  - sends BATCH (a drover batch message: frames as hex, comma-separated) to INGEST from a DEALER,
    every 100 ms: readings injected for any device id;
  - sends each SUBSCRIBE (a drover subscribe message, frames as hex, comma-separated) to STORE
    from a DEALER, every 100 ms: registering as a durable subscriber, or posing as one;
  - subscribes to everything on LIVE with a SUB: reading the live stream;
and prints, as JSON, what came back on each: {"ingest": n, "store": n, "live": n}. Used by router's
TestLinksRefuseOutsiders; run with Debian's /usr/bin/python3 (python3-zmq).
"""
import json
import sys
import time

import zmq


def frames(arg):
    return [bytes.fromhex(f) for f in arg.split(",")]


def main():
    ingest, store, live, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    batch = frames(sys.argv[5])
    subscribes = [frames(a) for a in sys.argv[6:]]
    ctx = zmq.Context()
    socks = {}
    for name, typ, ep in (("ingest", zmq.DEALER, ingest), ("store", zmq.DEALER, store), ("live", zmq.SUB, live)):
        s = ctx.socket(typ)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 10)
        if typ == zmq.SUB:
            s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(ep)
        socks[name] = s
    poller = zmq.Poller()
    for s in socks.values():
        poller.register(s, zmq.POLLIN)
    got = {name: 0 for name in socks}
    end = time.monotonic() + seconds
    next_send = 0.0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_send:
            for s, msgs in ((socks["ingest"], [batch]), (socks["store"], subscribes)):
                for m in msgs:
                    try:
                        s.send_multipart(m, flags=zmq.NOBLOCK)
                    except zmq.Again:
                        pass  # not connected: queued up to the HWM
            next_send = now + 0.1
        for s, _ in poller.poll(50):
            for name, sock in socks.items():
                if sock is s:
                    sock.recv_multipart()
                    got[name] += 1
    for s in socks.values():
        s.close()
    ctx.term()
    print(json.dumps(got))
    return 0


if __name__ == "__main__":
    sys.exit(main())
