import logging

logger = logging.getLogger("plugins.orpheus")
