"""live_sub.py ENDPOINT N OUTFILE: a libzmq (pyzmq) subscriber of a router's live lane.

Subscribes to the "live." topic at ENDPOINT, receives N two-frame messages, checks that the
first frame is exactly b"live.", writes the second frame (a serialized telemetry.PublishBatch)
as hex, one message per line, to OUTFILE, and prints each message's size on stdout. Used by
router's TestLiveLaneLibzmq; run with Debian's /usr/bin/python3 (python3-zmq).
"""
import sys

import zmq


def main():
    endpoint, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVTIMEO, 20000)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"live.")
    sub.connect(endpoint)
    lines = []
    try:
        for _ in range(n):
            frames = sub.recv_multipart()
            if len(frames) != 2 or frames[0] != b"live.":
                print("unexpected message: %d frames, topic %r" % (len(frames), frames[0][:16]), file=sys.stderr)
                return 1
            lines.append(frames[1].hex())
            print(len(frames[1]), flush=True)
    except zmq.Again:
        print("timed out after %d of %d messages" % (len(lines), n), file=sys.stderr)
        return 1
    finally:
        sub.close()
        ctx.term()
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
