"""FHIR throughput: resources per second through the HTTP endpoint into the broker (acked before the reply).

    python bench/connectors_fhir.py [--bundles 50] [--per-bundle 200] [--singles 500] [--bootstrap HOST:PORT]

Posts --bundles batch Bundles of --per-bundle Observations each, then --singles single Observations.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import httpx
import uvicorn
from connectors_common import broker, fresh_topics

from connectors.fhir import build_app
from screener.bus import free_port
from screener.connector.kafka import KafkaSink


def observation(i: int) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{i}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "62238-1"}]},
        "subject": {"reference": f"Patient/P{i % 5000}"},
        "effectiveDateTime": "2026-04-01T09:00:00Z",
        "valueQuantity": {"value": 30 + i % 60, "unit": "mL/min/1.73m2"},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", type=int, default=50)
    ap.add_argument("--per-bundle", type=int, default=200)
    ap.add_argument("--singles", type=int, default=500)
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    with broker(args.bootstrap) as bootstrap:
        events, dlq = fresh_topics(bootstrap)
        sink = KafkaSink(
            bootstrap, connector="fhir", events_topic=events, dlq_topic=dlq, idempotent=args.bootstrap is not None
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(build_app(sink), host="127.0.0.1", port=port, log_level="warning", access_log=False)
        )
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            bundles = [
                {
                    "resourceType": "Bundle",
                    "type": "batch",
                    "entry": [{"resource": observation(b * args.per_bundle + i)} for i in range(args.per_bundle)],
                }
                for b in range(args.bundles)
            ]
            http.post("/", json=bundles[0])  # warm-up
            start = time.perf_counter()
            for bundle in bundles:
                assert http.post("/", json=bundle).status_code == 200
            elapsed = time.perf_counter() - start
            n = args.bundles * args.per_bundle
            print(
                f"fhir bundles={args.bundles}x{args.per_bundle} resources={n} seconds={elapsed:.2f} "
                f"rate={n / elapsed:,.0f} resources/s"
            )
            start = time.perf_counter()
            for i in range(args.singles):
                assert http.post("/Observation", json=observation(10**7 + i)).status_code == 200
            elapsed = time.perf_counter() - start
            print(
                f"fhir single-resource posts={args.singles} seconds={elapsed:.2f} "
                f"rate={args.singles / elapsed:,.0f} resources/s"
            )
        server.should_exit = True
        sink.close()


if __name__ == "__main__":
    main()
