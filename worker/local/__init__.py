"""Embedded local mode: the browser page and its WebRTC transport."""
