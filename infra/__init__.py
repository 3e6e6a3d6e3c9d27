"""Deployment: compose files and configs for LiveKit, LiveKit SIP, Redis, vLLM and the worker."""
