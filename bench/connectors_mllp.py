"""MLLP throughput: HL7 v2 ORU^R01 messages acknowledged (AA, i.e. after the broker acked) per second.

    python bench/connectors_mllp.py [--messages 2000] [--connections 1 4] [--bootstrap HOST:PORT]

Starts an embedded broker unless --bootstrap is given, an MLLPServer on a free port, and for each connection
count sends --messages messages in total (split across the connections), each waiting for its ACK.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from connectors_common import broker, fresh_topics

from connectors.hl7v2 import MLLPClient, MLLPServer, ServerThread
from screener.connector.kafka import KafkaSink

MSG = (
    "MSH|^~\\&|LAB|RR8|SCREENER|RR8|20260501100000||ORU^R01|C{c}-{n}|P|2.5\r"
    "PID|1||H{n}^^^RR8^MR~9434765919^^^NHS^NH||Smith^Jane||19610302|F\r"
    "OBR|1|PL{n}|FIL{c}-{n}|U&E|||20260501083000\r"
    "OBX|1|NM|EGFR^eGFR^L||41|mL/min/1.73m2|>60|L|||F|||20260501090000\r"
    "OBX|2|NM|K^Potassium^L||4.1|mmol/L|||||F|||20260501090000\r"
)


def client(port: int, conn: int, count: int, failures: list[int]) -> None:
    with MLLPClient("127.0.0.1", port, timeout=60) as mllp:
        for n in range(count):
            if "MSA|AA|" not in mllp.send(MSG.format(c=conn, n=n)):
                failures.append(n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    with broker(args.bootstrap) as bootstrap:
        events, dlq = fresh_topics(bootstrap)
        sink = KafkaSink(
            bootstrap, connector="hl7v2", events_topic=events, dlq_topic=dlq, idempotent=args.bootstrap is not None
        )
        harness = ServerThread(MLLPServer(sink, host="127.0.0.1", port=0))
        server = harness.start()
        client(server.port, 999, 50, [])  # warm-up (metadata, connections)
        for conns in args.connections:
            per = args.messages // conns
            failures: list[int] = []
            threads = [threading.Thread(target=client, args=(server.port, c, per, failures)) for c in range(conns)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
            total = per * conns
            print(
                f"mllp connections={conns} messages={total} acked_AA={total - len(failures)} "
                f"seconds={elapsed:.2f} rate={total / elapsed:,.0f} msg/s"
            )
        harness.stop()
        sink.close()


if __name__ == "__main__":
    main()
