import logging

logger = logging.getLogger("plugins.kokoro")
