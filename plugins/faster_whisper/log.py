import logging

logger = logging.getLogger("plugins.faster_whisper")
