"""A tiny pure-Python sentiment scorer: counts words from a list (artifacts/words.json). No dependencies."""

import json
import re
from pathlib import Path

from modelswarm_model import RefusedInput  # the platform's refusal: its text is what the caller reads (422)

WORDS = {}


def load():
    WORDS.update(json.loads((Path(__file__).parent / "artifacts" / "words.json").read_text()))


def predict(data):
    """{"text": "..."} -> {"label": positive|negative|neutral, "score": -1..1}"""
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise RefusedInput('send {"text": "..."}')
    tokens = re.findall(r"[a-z']+", data["text"].lower())
    positive = sum(t in WORDS["positive"] for t in tokens)
    negative = sum(t in WORDS["negative"] for t in tokens)
    score = 0.0 if positive + negative == 0 else (positive - negative) / (positive + negative)
    label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
    return {"label": label, "score": round(score, 3)}
