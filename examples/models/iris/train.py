"""Train the iris classifier: softmax regression with NumPy, on the Iris data set (data/iris.csv, as shipped with
scikit-learn: 150 flowers, 4 measurements, 3 species). Writes artifacts/model.npz.

    python3 train.py          # deterministic: fixed seed, fixed split; prints train/test accuracy
"""

import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def main() -> None:
    with (HERE / "data" / "iris.csv").open() as handle:
        rows = list(csv.reader(handle))
    species = rows[0][2:5]
    data = np.array([[float(v) for v in row[:4]] for row in rows[1:]])
    labels = np.array([int(row[4]) for row in rows[1:]])
    rng = np.random.default_rng(7)
    order = rng.permutation(len(data))
    train, test = order[:120], order[120:]
    mean, std = data[train].mean(axis=0), data[train].std(axis=0)
    x = (data - mean) / std
    weights, bias = np.zeros((4, 3)), np.zeros(3)
    onehot = np.eye(3)[labels]
    for _ in range(3000):
        logits = x[train] @ weights + bias
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        grad = probs - onehot[train]
        weights -= 0.1 * (x[train].T @ grad / len(train) + 1e-3 * weights)
        bias -= 0.1 * grad.mean(axis=0)

    def accuracy(idx):
        return float(((x[idx] @ weights + bias).argmax(axis=1) == labels[idx]).mean())

    np.savez(HERE / "artifacts" / "model.npz", weights=weights, bias=bias, mean=mean, std=std, species=species)
    print(f"train accuracy {accuracy(train):.3f}, test accuracy {accuracy(test):.3f}")


if __name__ == "__main__":
    main()
