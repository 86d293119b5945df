"""Command line: ``python -m lfssd_tutorial {demo,train,forget,report,sweep,importance}``.

A thin layer over :mod:`lfssd_tutorial.demo` and :mod:`lfssd_tutorial.experiments`: each
command parses its flags, calls one function there and prints what it returns.
"""

from __future__ import annotations

import argparse
import sys


def _demo(argv: list[str]) -> int:
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
        if r.get("selected") == 0 and r.get("max_ratio") is not None:
            print(f"note: {r['method']} selected no weight: alpha={r['alpha']:g} is above the largest ratio "
                  f"Imp_Df/Imp_D = {r['max_ratio']:.2f}, so the model is returned unchanged.")
    print(f"wrote {args.out}/results.json and {args.out}/results.csv")
    return 0


def _common(parser, *, config: bool = True) -> None:
    if config:
        parser.add_argument("--config", required=True, help="experiment config file (YAML or JSON), see configs/")
        parser.add_argument("--data-root", default=None, help="data folder (overrides data.root of the config)")
        parser.add_argument("--out", default=None, help="output folder (default runs/<config name>)")
        parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the config's)")
    parser.add_argument("--device", default=None, help="torch device; default CUDA when present, else CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _setup(args):
    import torch

    from .experiments import ConfigError, load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = load_config(args.config, data={"root": args.data_root} if args.data_root else None)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    out = args.out or f"runs/{config.name}"
    return config, out


def _train(argv: list[str]) -> int:
    from .experiments import run_train

    parser = argparse.ArgumentParser(prog="python -m lfssd_tutorial train",
                                     description="Train (or load) the original and retrained models of a config; checkpoints are plain state_dicts with a JSON sidecar.")
    _common(parser)
    parser.add_argument("--no-retrain", action="store_true", help="train only the original models")
    args = parser.parse_args(argv)
    config, out = _setup(args)
    infos = run_train(config, out_dir=out, device=args.device, progress=not args.no_progress, seeds=args.seeds, retrain=not args.no_retrain)
    for info in infos:
        accs = ", ".join(f"{k}={info[k]:.2f}" for k in ("test_accuracy", "acc_retain", "acc_forget") if k in info)
        print(f"{info['kind']:<8} seed={info['seed']} target={info.get('target')}: {accs} ({info['wall_seconds']:.1f} s, peak RSS {info['peak_rss_mb']:.0f} MiB)")
    print(f"checkpoints in {out}/checkpoints")
    return 0


def _forget(argv: list[str]) -> int:
    from .experiments import run_forget

    parser = argparse.ArgumentParser(prog="python -m lfssd_tutorial forget",
                                     description="Run every method of a config on its scenario; each cell is appended to <out>/results.jsonl as it finishes, and finished cells are skipped on restart.")
    _common(parser)
    parser.add_argument("--max-cells", type=int, default=None, help="stop after this many new cells")
    parser.add_argument("--methods", nargs="+", default=None, metavar="PATTERN",
                        help="run only the rows whose label matches one of these shell patterns, e.g. 'LFSSD*' Retrain")
    parser.add_argument("--report", action="store_true", help="write the report when done")
    args = parser.parse_args(argv)
    config, out = _setup(args)

    def show(r):
        extra = f" selected={r['selected']} max_ratio={r['max_ratio'] if r['max_ratio'] is None else round(r['max_ratio'], 2)}" if "selected" in r else ""
        print(f"seed={r['seed']} {r['target']:<16} {r['label']:<28} Acc(D_r)={r['acc_retain']:6.2f} Acc(D_f)={r['acc_forget']:6.2f} MIA={r['mia']:6.2f}{extra}", flush=True)

    records = run_forget(config, out_dir=out, device=args.device, progress=not args.no_progress, seeds=args.seeds, max_cells=args.max_cells,
                         methods=args.methods, on_cell=show)
    print(f"{len(records)} cells in {out}/results.jsonl")
    if args.report:
        from .experiments import write_report

        print(write_report(out)["markdown"])
    return 0


def _report(argv: list[str]) -> int:
    from .experiments import write_report

    parser = argparse.ArgumentParser(prog="python -m lfssd_tutorial report", description="Markdown/CSV tables (mean ± sd over seeds) and plots of a results file.")
    parser.add_argument("results", help="results.jsonl or the folder holding it")
    parser.add_argument("--out", default=None, help="folder for report.md, summary.csv and plots (default: beside the results)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    try:
        rep = write_report(args.results, args.out, plots=not args.no_plots)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(rep["markdown"])
    print("wrote " + ", ".join(rep["files"]))
    return 0


def _sweep(argv: list[str]) -> int:
    from .experiments import run_sweep

    parser = argparse.ArgumentParser(prog="python -m lfssd_tutorial sweep", description="Acc(D_r) and Acc(D_f) over an alpha x lambda grid, with a heatmap.")
    _common(parser)
    parser.add_argument("--method", choices=("ssd", "lfssd", "ssd_true_fisher"), default="lfssd")
    parser.add_argument("--granularity", choices=("batch", "sample"), default="batch")
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.5, 2, 3, 5, 7, 10])
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.5, 1, 2])
    parser.add_argument("--target", default=None, help="forget target (default: the config's first)")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: the config's first)")
    args = parser.parse_args(argv)
    config, out = _setup(args)
    records = run_sweep(config, out_dir=out, method=args.method, alphas=args.alphas, lambdas=args.lambdas, granularity=args.granularity,
                        target=args.target, seed=args.seed, device=args.device, progress=not args.no_progress)
    print(f"{'alpha':>6} {'lambda':>6} {'Acc(D_r)':>9} {'Acc(D_f)':>9} {'selected':>9}")
    for r in sorted(records, key=lambda r: (r["alpha"], r["lambda"])):
        print(f"{r['alpha']:>6g} {r['lambda']:>6g} {r['acc_retain']:>9.2f} {r['acc_forget']:>9.2f} {r['selected']:>9,}")
    print(f"wrote {out}/sweep-{args.method}-*.jsonl and .png")
    return 0


def _importance(argv: list[str]) -> int:
    from .experiments import run_importance

    parser = argparse.ArgumentParser(
        prog="python -m lfssd_tutorial importance",
        description="Imp_D of a config's trained original model over its whole training set, saved with save_importance. "
                    "Runs in one process, or in many under torchrun: each process takes every W-th batch and the "
                    "processes' sums are added, so the file is the one a single process would write (rank 0 writes it). "
                    "On 8 GPUs: torchrun --nproc-per-node=8 -m lfssd_tutorial importance --config C --file imp_d.safetensors "
                    "(backend nccl by default on GPUs).")
    _common(parser)
    parser.add_argument("--file", required=True, help="the importance file to write")
    parser.add_argument("--method", choices=("lfssd", "ssd", "ssd_true_fisher"), default="lfssd", help="its importance objective")
    parser.add_argument("--granularity", choices=("batch", "sample"), default="sample")
    parser.add_argument("--label-samples", type=int, default=None, help="ssd_true_fisher: label draws per input (default: exact)")
    parser.add_argument("--checkpoint", default=None, help="the model's state_dict (default: the original model of the seed "
                                                           "that `train` wrote in --out)")
    parser.add_argument("--backend", choices=("nccl", "gloo"), default=None,
                        help="process group backend under torchrun (default: nccl with CUDA, else gloo)")
    args = parser.parse_args(argv)
    if args.seeds is not None and len(args.seeds) != 1:
        parser.error("importance computes Imp_D of one model: give one training seed (--seeds S)")
    config, out = _setup(args)
    try:
        info = run_importance(config, path=args.file, out_dir=out, seed=args.seeds[0] if args.seeds else None, method=args.method,
                              granularity=args.granularity, label_samples=args.label_samples, checkpoint=args.checkpoint,
                              device=args.device, backend=args.backend, progress=not args.no_progress)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if info["rank"] == 0:
        print(f"Imp_D ({info['method']}, {info['granularity']}, seed {info['seed']}) over {info['processes']} process(es) "
              f"in {info['seconds']:.1f} s: wrote {info['path']}")
    return 0


USAGE = """usage: python -m lfssd_tutorial {demo,train,forget,report,sweep,importance} [options]
  demo     forget one class of the bundled data with SSD and LFSSD
  train    train (or load) the original and retrained models of a config
  forget   run every method of a config; results appended to <out>/results.jsonl, resumable
  report   markdown/CSV tables (mean ± sd over seeds) and plots of a results file
  sweep    an alpha x lambda grid for one scenario, with a heatmap
  importance  Imp_D of a trained model, in one process or many (torchrun --nproc-per-node=N -m lfssd_tutorial importance ...)
Run a command with --help for its options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"demo": _demo, "train": _train, "forget": _forget, "report": _report, "sweep": _sweep, "importance": _importance}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(USAGE)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
