import logging

logger = logging.getLogger("plugins.vllm")
