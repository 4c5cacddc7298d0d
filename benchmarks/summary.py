"""Print the short table of a result file of python -m benchmarks.
Usage: python -m benchmarks.summary bench.json"""
import json
import sys

from .run import print_summary

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        print_summary(json.load(f))
