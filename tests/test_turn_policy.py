"""Turn policy pieces that need no model: backchannel words and scenario files."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.harness import ScenarioError, load_scenario
from worker.turns import BackchannelPolicy

SCENARIOS = Path(__file__).parent / "scenarios"


@pytest.mark.parametrize(
    "text", ["Uh-huh.", "Mm-hmm", "yeah, okay", "Okay.", "Right.", "all right all right", ""]
)
def test_backchannels_and_silence_do_not_interrupt(text: str) -> None:
    assert BackchannelPolicy().is_backchannel(text)


@pytest.mark.parametrize(
    "text", ["No wait, stop, cancel that.", "Stop.", "Yeah, but I want three.", "right now please"]
)
def test_other_words_interrupt(text: str) -> None:
    assert not BackchannelPolicy().is_backchannel(text)


def test_backchannel_list_is_configurable() -> None:
    policy = BackchannelPolicy(["d'accord", "oui"])
    assert policy.is_backchannel("Oui, d'accord.")
    assert not policy.is_backchannel("uh-huh")


def test_every_shipped_scenario_parses() -> None:
    files = [
        *SCENARIOS.glob("*.yaml"),
        *(SCENARIOS.parent.parent / "benchmarks/scenarios").glob("*.yaml"),
    ]
    assert len(files) >= 5
    for f in files:
        sc = load_scenario(f)
        assert sc.steps, f


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("steps: 3", "'steps' list"),
        ("steps:\n  - say: ''", "needs text"),
        ("steps:\n  - pause: -1", "positive number"),
        ("steps:\n  - wait_for: lunch", "wait_for must be"),
        ("steps:\n  - say: hi\n    noise: 1", "exactly one"),
        ("steps:\n  - after: soon\n    say: hi", "'after' must be"),
        ("steps: [", "not valid YAML"),
    ],
)
def test_bad_scenarios_are_clear_errors(tmp_path: Path, body: str, error: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(ScenarioError, match=error):
        load_scenario(f)


@pytest.mark.parametrize(
    ("text", "seconds", "confidence", "resumes"),
    [
        ("And then them.", 0.8, 0.35, True),  # a misheard "mm-hmm": short, unsure, no cue
        ("M", 0.6, 0.2, True),
        ("And then them.", 2.0, 0.35, False),  # too long for a backchannel
        ("Wait.", 0.7, 0.3, False),  # a cue word always cuts
        ("No.", 0.5, 0.4, False),
        ("Saturday.", 0.8, 0.95, False),  # short but clearly said: the words decide
        ("And then them.", None, None, False),  # no audio signals (another STT): words only
        ("And then them.", 0.8, None, False),  # no confidence: that signal is not used
        ("uh-huh", None, None, True),
    ],
)
def test_a_short_unsure_sound_resumes_however_it_was_spelt(
    text: str, seconds: float | None, confidence: float | None, resumes: bool
) -> None:
    policy = BackchannelPolicy(max_seconds=1.0, max_confidence=0.6, max_distance=0.0)
    assert policy.is_backchannel(text, seconds=seconds, confidence=confidence) is resumes


@pytest.mark.parametrize(
    ("text", "resumes"),
    [
        # Whisper's spellings of backchannels in benchmarks/backchannel_signals.py
        ("Mm-hums.", True), ("Uh-hi.", True), ("Righte.", True), ("Yepo.", True),
        ("I see you.", True), ("Shura.", True),
        # short answers: a rhyme is not enough ("Eight", "right"), nor a digit
        ("Eight.", False), ("Noon.", False), ("Two.", False), ("2", False), ("Tomorrow.", False),
        ("Four people.", False), ("Sunday.", False),
        ("Yeah, stop.", False),  # a cue word still cuts, however close the rest is
    ],
)  # fmt: skip
def test_a_short_sound_that_sounds_like_a_backchannel_resumes(text: str, resumes: bool) -> None:
    """The default rule: near a listed phrase, from the same first letter, short; the
    confidence path is off, so a clearly said and an unsure answer are judged alike."""
    policy = BackchannelPolicy()
    for confidence in (0.1, 0.95):
        assert policy.is_backchannel(text, seconds=1.0, confidence=confidence) is resumes, (
            text,
            policy.distance(text),
        )
    assert not policy.is_backchannel(text, seconds=2.0, confidence=0.1) or policy._listed(text)


class _Handle:
    """Just the public face of a ``SpeechHandle`` the tracker reads: a fake, because what is
    checked here is the bookkeeping, not the framework (the real handles go through it in
    test_turn_taking.py)."""

    def __init__(self, scheduled: bool, interrupted: bool, heard: str | None) -> None:
        from livekit.agents import llm

        self.id = f"h{id(self)}"
        self.scheduled = scheduled
        self.interrupted = interrupted
        said = [llm.ChatMessage(role="assistant", content=[heard])] if heard else []
        self.chat_items = said

    def done(self) -> bool:
        return True

    def add_done_callback(self, _cb: object) -> None:
        pass


@pytest.mark.parametrize(
    ("scheduled", "interrupted", "heard", "outcome"),
    [
        (True, False, "Sure, we open at noon.", "used"),
        (True, True, "Sure, we", "used"),  # cut by the caller after some of it was heard
        (True, True, None, "dropped_after_commit"),  # committed in a pause, cut unheard
        (False, False, None, "cancelled"),  # never committed
    ],
)
def test_speculation_counts_a_reply_cut_before_a_word_of_it_played_as_waste(
    scheduled: bool, interrupted: bool, heard: str | None, outcome: str
) -> None:
    from worker.turns import SpeculationTracker

    tracker = SpeculationTracker()
    tracker._started(_Handle(scheduled, interrupted, heard))
    tracker.note_tokens(next(iter(tracker._work)), 7)
    stats = tracker.settle().as_dict()
    wasted = outcome != "used"
    assert stats["used"] == (0 if wasted else 1)
    assert stats["cancelled"] == (1 if wasted else 0)
    assert stats["dropped_after_commit"] == (1 if outcome == "dropped_after_commit" else 0)
    assert stats["wasted_tokens"] == (7 if wasted else 0)
