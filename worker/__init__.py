"""The voice agent worker: CLI, agent, session factory, settings and local transport."""
