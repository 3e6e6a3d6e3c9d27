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
