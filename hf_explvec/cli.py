"""Command line: argument parsing only; the work is done by the library modules."""

import argparse
import logging


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="hf-explvec", description="Explainability vectors for CLIP classifiers.")
    commands = parser.add_subparsers(dest="command", required=True)
    quick = commands.add_parser("quickstart", help="the vector life cycle on tiny models built in code (offline)")
    quick.add_argument("--output-dir", default="outputs/quickstart")
    quick.add_argument("--steps", type=int, default=60, help="training steps of the self-explaining twin")
    quick.add_argument("--lam", type=float, default=0.8, help="scaling of the vector when applied")
    quick.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "quickstart":
        from .quickstart import format_report, run

        print(format_report(run(args.output_dir, steps=args.steps, lam=args.lam, seed=args.seed), args.lam))


if __name__ == "__main__":
    main()
