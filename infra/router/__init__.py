"""Route voices and sessions to GPU nodes: a consistent-hash ring in Redis."""

from .registry import NodeInfo, NodeRegistration, NoNodeError, Router, session_resolver
from .ring import HashRing, simulate

__all__ = [
    "HashRing", "NoNodeError", "NodeInfo", "NodeRegistration", "Router", "session_resolver",
    "simulate",
]  # fmt: skip
