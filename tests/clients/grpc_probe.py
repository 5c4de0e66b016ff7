"""Asks a node's gRPC port what the standard services say, for tests/observe.rs.

    grpc_probe.py HOST:PORT

Uses the official gRPC Python clients: the health-checking client (PyPI
`grpcio-health-checking`) for the whole server ("") and the client API, and the server
reflection client (PyPI `grpcio-reflection`) for the list of services. Prints
{"health": {service: status}, "services": [names]}.
"""

import json
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main():
    channel = grpc.insecure_channel(sys.argv[1])
    health = health_pb2_grpc.HealthStub(channel)
    statuses = {}
    for service in ["", "mcpfleet.v1.Registry"]:
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        statuses[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    services = sorted(ProtoReflectionDescriptorDatabase(channel).get_services())
    print(json.dumps({"health": statuses, "services": services}))


main()
