"""Smart Turn v3.2 (pipecat-ai's open end-of-turn model) as a plain audio scorer.

The ONNX file ships inside the ``pipecat-ai`` wheel; ``python -m worker download-files
--with smart-turn`` takes it out without installing pipecat. Only onnxruntime and numpy run it.
"""

from plugins.smart_turn.model import SAMPLE_RATE, WINDOW_SECONDS, SmartTurn, log_mel

__all__ = ["SAMPLE_RATE", "WINDOW_SECONDS", "SmartTurn", "log_mel"]
