"""Default prompts for steering demos and sweeps (one list each, used by the main job, the
``emolens steer`` command and tutorials)."""
from __future__ import annotations

OPEN_PROMPTS: tuple[str, ...] = (
    "Tell me about your morning.", "Describe the room you are in.",
    "What should I cook tonight?", "Write one sentence about the weather.",
    "How was your weekend?", "Tell me about the street where you live.",
    "What did you do at work today?", "Describe your last train journey.",
    "What are you planning for tomorrow?", "Tell me about a meal you had recently.",
    "What is on your desk right now?", "Describe a walk in the park.")
"""Open, emotionally neutral requests whose replies can take any tone (valence sweeps)."""

NEUTRAL_STATEMENTS: tuple[str, ...] = (
    "The meeting is on Tuesday at ten.", "Water boils at one hundred degrees.",
    "The train leaves from platform four.", "She put the book back on the shelf.")
"""Plain statements with no emotional content (the word test's default contexts)."""


def as_chats(prompts: tuple[str, ...] | list[str]) -> list[list[dict[str, str]]]:
    """Each prompt as a one-turn user conversation."""
    return [[{"role": "user", "content": p}] for p in prompts]
