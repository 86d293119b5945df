"""Command line: ``python -m lfssd_tutorial demo``."""

from __future__ import annotations

import sys


def _demo(argv: list[str]) -> int:
    import argparse

    from .demo import DemoConfig, format_table, run_demo

    parser = argparse.ArgumentParser(prog="python -m lfssd_tutorial demo", description="Forget one class of the bundled digits data with SSD and LFSSD.")
    parser.add_argument("--forget-class", type=int, default=DemoConfig.forget_class, help="digit to forget (0-9)")
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    parser.add_argument("--out", default="runs/demo", help="folder for results.json and results.csv")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not 0 <= args.forget_class <= 9:
        parser.error(f"--forget-class must be a digit 0-9, got {args.forget_class}")
    rows = run_demo(DemoConfig(forget_class=args.forget_class, seed=args.seed), out_dir=args.out, progress=not args.no_progress)
    print(f"Forgetting digit {args.forget_class} of the bundled digits data (small CNN, CPU)")
    print(format_table(rows))
    for r in rows:
        if r.get("selected") == 0:
            print(f"note: {r['method']} selected no weight: alpha={r['alpha']:g} is above the largest ratio "
                  f"Imp_Df/Imp_D = {r['max_ratio']:.2f}, so the model is returned unchanged.")
    print(f"wrote {args.out}/results.json and {args.out}/results.csv")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"demo": _demo}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: python -m lfssd_tutorial {demo} [options]\n  demo   forget one class of the bundled data with SSD and LFSSD")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
