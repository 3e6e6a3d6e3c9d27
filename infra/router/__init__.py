"""Route voices and sessions to GPU nodes: a consistent-hash ring in Redis, node agents beside
each vLLM server, and a pool simulation for sizing."""

from .pool import PoolConfig, simulate_pool
from .registry import (
    NodeInfo,
    NodeRegistration,
    NoNodeError,
    Route,
    Router,
    SessionRoute,
)
from .ring import HashRing, simulate

__all__ = [
    "HashRing", "NoNodeError", "NodeInfo", "NodeRegistration", "PoolConfig", "Route", "Router",
    "SessionRoute", "simulate", "simulate_pool",
]  # fmt: skip
