"""Phone and browser transports behind one call interface, and their audio I/O."""

from .audio_io import PacedAudioOutput, QueueAudioInput
from .call import Call

__all__ = ["Call", "PacedAudioOutput", "QueueAudioInput"]
