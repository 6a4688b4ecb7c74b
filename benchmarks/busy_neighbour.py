"""A busy neighbour: a PyTorch process doing matrix products at default threads, as a notebook
kernel, another job on a shared node or a second training run would.

    python -m benchmarks.busy_neighbour --seconds 1800 &   # beside `make test` or a benchmark
    make test-busy                                          # the suite with this running beside it

It stops by itself after ``--seconds`` (or when killed) and prints how many products it made.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    parser.add_argument("--size", type=int, default=1024, help="matrix side")
    args = parser.parse_args()
    a, b = torch.randn(args.size, args.size), torch.randn(args.size, args.size)
    end, count = time.monotonic() + args.seconds, 0
    while time.monotonic() < end:
        a = torch.tanh(a @ b)
        count += 1
    print(f"busy neighbour: {count} products of {args.size}x{args.size} in {args.seconds:.0f} s "
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
