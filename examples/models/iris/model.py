"""Iris species from four flower measurements (softmax regression trained by train.py)."""

from pathlib import Path

import numpy as np
from modelswarm_model import RefusedInput  # the platform's refusal: its text is what the caller reads (422)

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
_model = {}


def load():
    with np.load(Path(__file__).parent / "artifacts" / "model.npz") as saved:
        _model.update({key: saved[key] for key in saved.files})


def predict(data):
    """{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2} -> species + probabilities.

    A list of such objects gives a list of answers.
    """
    rows = data if isinstance(data, list) else [data]
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise RefusedInput("send an object (or a list of objects) with " + ", ".join(FEATURES))
    missing = sorted({f for r in rows for f in FEATURES if f not in r})
    if missing:
        raise RefusedInput(f"missing measurement(s): {', '.join(missing)}")
    if not all(isinstance(r[f], int | float) and not isinstance(r[f], bool) for r in rows for f in FEATURES):
        raise RefusedInput("measurements are numbers (centimetres)")
    x = np.array([[float(r[f]) for f in FEATURES] for r in rows])
    logits = ((x - _model["mean"]) / _model["std"]) @ _model["weights"] + _model["bias"]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    species = [str(s) for s in _model["species"]]
    answers = [
        {"species": species[int(p.argmax())], "probabilities": dict(zip(species, map(float, p.round(4)), strict=True))}
        for p in probs
    ]
    return answers if isinstance(data, list) else answers[0]
