"""Route voices and sessions to GPU nodes: a consistent-hash ring in Redis."""

from .registry import NodeInfo, NodeRegistration, NoNodeError, Router
from .ring import HashRing, simulate

__all__ = ["HashRing", "NoNodeError", "NodeInfo", "NodeRegistration", "Router", "simulate"]
