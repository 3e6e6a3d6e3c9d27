"""LiveKit Agents plugins for local models, one folder per model family."""
