#!/usr/bin/env python3
"""A minimal OTLP/gRPC metrics receiver for the system tests: no collector is packaged for these machines.

Listens on 127.0.0.1 (port 0 = a free one), prints `otlp sink listening on 127.0.0.1:PORT`, then one JSON line per
data point of every export it receives:
  {"resource": {attr: value}, "name": "...", "kind": "sum|gauge|histogram", "attributes": {...}, "value": N}
(a histogram's value is its count). Needs grpcio and opentelemetry-proto (scripts/setup.sh puts them in .venv).
"""
import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc


def attrs(kvs):
    out = {}
    for kv in kvs:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return out


class Sink(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        for rm in request.resource_metrics:
            resource = attrs(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    points = getattr(m, kind).data_points if kind else []
                    for p in points:
                        if kind == "histogram":
                            value = p.count
                        else:
                            value = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                        print(json.dumps({"resource": resource, "name": m.name, "kind": kind,
                                          "attributes": attrs(p.attributes), "value": value}), flush=True)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Sink(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"otlp sink listening on 127.0.0.1:{bound}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
