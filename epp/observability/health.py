"""gRPC health with the reference semantics (gie-epp.md §7).

Without leader election every service name is SERVING once the datastore is synced. With it,
`readiness`, `""` and the ext_proc service need leadership too, `liveness` is always SERVING,
and unknown names are SERVICE_UNKNOWN.
"""

from __future__ import annotations

from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
READY_SERVICES = frozenset({"", "readiness", "inference-extension", EXT_PROC_SERVICE})

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthState:
    def __init__(self, is_synced: Callable[[], bool], leader_election: bool = False) -> None:
        self.is_synced = is_synced
        self.leader_election = leader_election
        self.is_leader = not leader_election

    def status(self, service: str) -> int:
        live = self.is_synced()
        if not self.leader_election:
            return SERVING if live else NOT_SERVING
        if service == "liveness":
            return SERVING
        if service in READY_SERVICES:
            return SERVING if live and self.is_leader else NOT_SERVING
        return UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, state: HealthState) -> None:
        self.state = state

    async def Check(self, request, context):  # noqa: N802
        return health_pb2.HealthCheckResponse(status=self.state.status(request.service))

    async def List(self, request, context):  # noqa: N802
        names = sorted(READY_SERVICES | {"liveness"})
        return health_pb2.HealthListResponse(
            statuses={n: health_pb2.HealthCheckResponse(status=self.state.status(n)) for n in names})

    async def Watch(self, request, context):  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Watch is not implemented")
