"""Record microgpt.py's own per-step losses (the scalar transcription) as the parity fixture.

    python scripts/microgpt_losses.py [NAMES_FILE] [--steps 1000] [--seed 42] [--out FILE]

(with the package installed, `pip install -e .`, or PYTHONPATH=. from the repo root).

Writes tests/data/microgpt_seed42.json by default and prints the wall time and ms/step.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from microgpt import scalar
from microgpt.dataset import NAMES_URL, load_names
from microgpt.download import sha256_of

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="?", type=Path, default=ROOT.parent / "shared/data/names.txt")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=ROOT / "tests/data/microgpt_seed42.json")
    args = parser.parse_args()

    docs = load_names(args.names)
    losses = []
    start = time.perf_counter()
    for step, loss in enumerate(scalar.train_steps(docs, args.steps, args.seed), 1):
        losses.append(loss)
        if step % 50 == 0 or step == 1:
            print(f"step {step:4d} / {args.steps} | loss {loss:.4f}", file=sys.stderr)
    seconds = time.perf_counter() - start

    record = {
        "seed": args.seed,
        "steps": args.steps,
        "losses": losses,
        "source": "microgpt.scalar (transcription of karpathy's microgpt.py, gist 8627fe009c40f57531cb18360106ce95), "
                  f"names from {NAMES_URL}",
        "sha256_of_names": sha256_of(args.names),
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{args.steps} steps in {seconds:.1f} s ({1000 * seconds / args.steps:.1f} ms/step); "
          f"first loss {losses[0]:.4f}, mean of last 100 {sum(losses[-100:]) / len(losses[-100:]):.4f}; wrote {args.out}")


if __name__ == "__main__":
    main()
