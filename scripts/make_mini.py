"""Make fastopt/data/fashion-mnist-mini.npz, the subset shipped in the package, from the full
Fashion-MNIST IDX files (Debian's dataset-fashion-mnist, or a folder given as the argument).

Reproducible: 500 training and 100 test images per class, chosen with numpy's default_rng(0),
kept in their original order. Run: python scripts/make_mini.py [FOLDER]
"""

import sys
from pathlib import Path

import numpy as np

from fastopt.datasets import FASHION_MNIST_SYSTEM_DIR, IDX_FILES, MINI_FILE, _find_file, read_idx

PER_CLASS = {"train": 500, "test": 100}


def choose(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picked = [rng.choice(np.flatnonzero(labels == label), per_class, replace=False) for label in range(10)]
    return np.sort(np.concatenate(picked))


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else FASHION_MNIST_SYSTEM_DIR
    rng = np.random.default_rng(0)
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "test")):
        images = read_idx(_find_file(folder, IDX_FILES[f"{prefix}_images"]))
        labels = read_idx(_find_file(folder, IDX_FILES[f"{prefix}_labels"]))
        rows = choose(labels, PER_CLASS[split], rng)
        arrays[f"X_{split}"] = images[rows].reshape(len(rows), -1)
        arrays[f"y_{split}"] = labels[rows]
    target = Path(__file__).resolve().parent.parent / "fastopt" / "data" / MINI_FILE
    np.savez_compressed(target, **arrays)
    print(f"wrote {target} ({target.stat().st_size} bytes): " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
