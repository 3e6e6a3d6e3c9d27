"""Turn-taking policy as small named strategies: backchannels, barge-in, speculation."""

from .backchannel import BackchannelPolicy
from .speculation import SpeculationStats, SpeculationTracker

__all__ = ["BackchannelPolicy", "SpeculationStats", "SpeculationTracker"]
