"""The ``aimc`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aimc.errors import AimcError, ValidationError

#: Help of --data-dir: where CIFAR-10 is looked for when the option is not given (:func:`aimc.data.find_data_dir`).
DATA_DIR_HELP = (
    "folder holding cifar10/ (default: $AIMC_DATA, a shared/data folder in or next to the working directory, "
    "else the user cache, downloaded on first use)"
)


#: The networks ``aimc train`` trains (the chip paper's two and the char-transformer).
TRAINED_HERE = ("resnet9", "char-lstm", "char-transformer")


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValidationError(f"--{name} must be a comma-separated list of numbers, got {text!r}") from None
    if not values:
        raise ValidationError(f"--{name} must list at least one value, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _write_json(path: str, payload: object) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out)  # atomic: a reader never sees half a file


def _save_figure(path: str | None, draw: Callable[[str], None], quiet: bool) -> None:
    """Draw a figure to ``path`` (creating its folder) if one was asked for, and say so unless ``quiet``."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    draw(path)
    if not quiet:
        print(f"wrote {path}")


def cmd_mvm_error(args: argparse.Namespace) -> int:
    """``aimc mvm-error``: the chip paper's MVM characterisation."""
    from aimc._provenance import provenance
    from aimc.experiments import mvm_error as exp

    start = time.perf_counter()
    rows = exp.mvm_error(
        strategies=_names(args.strategies),
        modes=_names(args.modes),
        times=_floats(args.times, "times"),
        device=args.device,
        seed=args.seed,
        cores=args.cores,
        inputs_per_core=args.inputs,
        progress=not (args.quiet or args.json),
    )
    payload = {
        "experiment": "mvm-error",
        "settings": {
            "strategies": args.strategies,
            "modes": args.modes,
            "times": args.times,
            "device": args.device,
            "seed": args.seed,
            "cores": args.cores,
            "inputs_per_core": args.inputs,
            "sparsity": exp.TEST_SPARSITY,
        },
        "provenance": provenance(),
        "rows": exp.rows_as_dicts(rows),
        "elapsed_s": round(time.perf_counter() - start, 3),
    }
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print("MVM error (chip paper Eqs. 2-4), std relative to the output range")
        print(exp.format_table(rows))
        print("HERMES-Core measured: 1.94% MVM error with 8-bit PWM (Khaddam-Aljameh et al., JSSC 2022)")
    if args.json_out:
        _write_json(args.json_out, payload)
        if not args.json:
            print(f"wrote {args.json_out}")
    _save_figure(args.plot, lambda path: exp.plot(rows, path), args.json)
    return 0


def _load_network(spec_name: str, arch: str | None):
    """A model and an example input for ``aimc map``: a reference name, or a safetensors state dict + arch."""
    from aimc.models import available_models, example_input, get_model

    path = Path(spec_name)
    if spec_name in available_models():
        model = get_model(spec_name)
        return model, example_input(spec_name), spec_name
    if not path.is_file():
        raise ValidationError(
            f"MODEL must be one of {', '.join(available_models())} or a path to a .safetensors state dict; got "
            f"{spec_name!r}"
        )
    if path.suffix != ".safetensors":
        raise ValidationError(
            f"{spec_name!r}: only .safetensors state dicts are read (never pickle; TorchScript modules cannot be "
            "captured by torch.export); save model.state_dict() with safetensors and pass --arch"
        )
    from aimc._tensorfile import read_header
    from aimc.weights.io import MAX_WEIGHTS_BYTES, load_weights_file

    _, meta = read_header(path, max_bytes=MAX_WEIGHTS_BYTES, what="weights file")
    name = arch or meta.get("aimc_model")
    if name not in available_models():
        raise ValidationError(
            f"say which architecture {spec_name!r} holds with --arch ({', '.join(available_models())})"
        )
    model = get_model(name)
    load_weights_file(path, model)  # checked: size, header, dtypes, finite values, names and shapes
    return model, example_input(name), path.stem


def cmd_map(args: argparse.Namespace) -> int:
    """``aimc map``: the placement of a network on the chip."""
    import aimc
    from aimc.compiler.draw import draw_core_map

    model, example, name = _load_network(args.model, args.arch)
    mapping = aimc.compile(model, calibration=example, chips=args.chips, name=name)
    if args.json:
        print(json.dumps(mapping.describe(), indent=2))
    else:
        print(mapping.summary())
    _save_figure(args.png, lambda path: draw_core_map(mapping, path), args.json)
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    """``aimc perf``: Table I, a network's latency/energy/throughput, or the scaling study."""
    from aimc.perf import compare_table1, estimate, format_comparison, leave_lstm_out

    if args.model == "table1":
        rows = compare_table1()
        loo = compare_table1(leave_lstm_out())
        if args.json:
            print(
                json.dumps(
                    {
                        "rows": [
                            {
                                **r.ours,
                                "use_case": r.published.use_case,
                                "published": r.published.__dict__,
                                "deviation": {
                                    k: r.deviation(k)
                                    for k in ("tops", "tops_per_w", "tops_per_mm2", "energy_uj", "latency_ns")
                                },
                            }
                            for r in rows
                        ],
                        "leave_lstm_out": [{**r.ours, "use_case": r.published.use_case} for r in loo],
                    },
                    indent=2,
                )
            )
        else:
            print("Table I of the chip paper, from aimc's mappings and model (constants fitted to all six rows)")
            print(format_comparison(rows))
            print("\nLeave-one-out: constants fitted without the two LSTM rows")
            print(format_comparison(loo))
        return 0
    if args.model == "scaling":
        from aimc.perf.scaling import clock_rate_answer, format_rows, plot_scaling, scaling_study

        rows = scaling_study()
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(str(out / "scaling.json"), rows)
        plot_scaling(rows, str(out / "scaling.png"))
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(format_rows(rows))
            print(clock_rate_answer(rows))
            print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")
        return 0
    import aimc

    model, example, name = _load_network(args.model, args.arch)
    mapping = aimc.compile(model, calibration=example, chips=args.chips, name=name)
    modes = ["one-phase", "four-phase"] if args.mode == "both" else [args.mode]
    reports = [estimate(mapping, mode, transport=args.transport) for mode in modes]
    if args.json:
        print(json.dumps([_perf_row(r) for r in reports], indent=2))
    else:
        print("\n\n".join(r.summary() for r in reports))
    from aimc.perf.plots import plot_breakdown

    _save_figure(args.plot, lambda path: plot_breakdown(reports, path), args.json)
    return 0


def _perf_row(report: object) -> dict[str, object]:
    d = report.as_dict()  # type: ignore[attr-defined]
    return {
        "model": d["model"],
        "cores": d["cores"],
        "utilization": d["utilization"],
        "mode": d["mode"],
        "tops": d["tops"],
        "tops_per_w": d["tops_per_w"],
        "tops_per_mm2": d["tops_per_mm2"],
        "energy_uj": d["energy_per_inference_uj"],
        "latency_ns": d["latency_ns"],
        "throughput_per_s": d["throughput_per_s"],
        "bottleneck": d["bottleneck"],
        "energy_breakdown_uj": d["energy_uj"],
        "transport": d["transport"],
        "layers": d["layers"],
        "digital": d["digital"],
        "interchip": d["interchip"],
    }


def _chips_arg(text: str) -> int | str:
    """``--chips``: a positive int or 'auto'."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive int or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int or 'auto', got {text!r}")
    return value


def _task_of(model: str, arch: str | None) -> str:
    """The task of ``aimc eval MODEL``: a task name, or a weights file whose header or --arch names it."""
    from aimc.tasks import available_tasks

    tasks = available_tasks()
    if model in tasks:
        return model
    if not model.endswith(".safetensors"):
        raise ValidationError(f"MODEL must be one of {', '.join(tasks)} or a .safetensors weights file; got {model!r}")
    if arch is not None:
        return arch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(model, framework="pt") as f:
            name = (f.metadata() or {}).get("aimc_model")
    except (SafetensorError, OSError) as err:
        raise ValidationError(f"{model!r} is not a readable safetensors file: {err}") from None
    if name not in tasks:
        raise ValidationError(f"{model!r} does not say which network it holds; pass --arch ({', '.join(tasks)})")
    return name


def cmd_eval(args: argparse.Namespace) -> int:
    """``aimc eval``: a trained network's accuracy (ResNet-9) or BPC (char-LSTM) on the chip over time."""
    from aimc._provenance import provenance
    from aimc.core.config import CoreConfig
    from aimc.experiments import evaluate as ev
    from aimc.experiments.accuracy import points_as_dicts
    from aimc.tasks import get_task

    name = _task_of(args.model, args.arch)
    task = get_task(name)
    weights = args.weights or (args.model if args.model.endswith(".safetensors") else None)
    times = _floats(args.times, "times")
    if args.seeds < 1:
        raise ValidationError(f"--seeds must be at least 1; got {args.seeds}")
    config = CoreConfig(adc_calibration=args.adc_calibration)
    if args.read_voltage is not None:
        from aimc.core.analog import check_read_voltage
        from aimc.spec import ChipSpec

        config = dataclasses.replace(config, read_voltage_V=args.read_voltage)
        check_read_voltage(config, ChipSpec.hermes())
    faults = None
    if args.faults:
        from aimc.faults import parse_faults

        faults = parse_faults(args.faults)
    weights_file = str(task.weights_path(weights))
    model = task.load_model(weights)
    data = task.load_data(args.n, args.data_dir)
    mapping = ev.compile_task(model, data, **(faults.compile_kwargs() if faults is not None else {}))
    software = task.software(model, data)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    settings["read_voltage"] = config.read_voltage_V  # the voltage used, also where the default was taken
    result: dict[str, Any] = {
        "task": name,
        "metric": task.metric,
        "weights": weights_file,
        "test_size": data.size,
        "software": software,
        "settings": settings,
        "provenance": provenance(),
        "runs": [],
    }
    for strategy in _names(args.strategy):
        device = args.device or ("hermes-1dev" if strategy == "odp" else "hermes-2dev")
        for use_adabs in (False, True) if args.adabs else (False,):
            pts = ev.metric_over_time(
                mapping,
                data,
                device=device,
                strategy=strategy,
                mode=args.mode,
                times=times,
                seeds=list(range(args.seeds)),
                use_adabs=use_adabs,
                faults=faults,
                progress=not (args.quiet or args.json),
                config=config,
            )
            result["runs"].append(
                {
                    "strategy": strategy,
                    "device": device,
                    "mode": args.mode,
                    "adabs": use_adabs,
                    "points": points_as_dicts(pts),
                }
            )
    pct = 100.0 if task.metric == "accuracy" else 1.0
    unit = "%" if task.metric == "accuracy" else " BPC"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        what = "CIFAR-10 test images" if name == "resnet9" else "PTB test characters"
        print(f"software {task.metric}: {pct * software:.3f}{unit} on {data.size} {what}")
        for run in result["runs"]:
            comp = "GDC+AdaBS" if run["adabs"] else "GDC"
            for p in run["points"]:
                print(
                    f"{run['strategy']:<4} {run['device']:<12} {run['mode']:<10} {comp:<9} "
                    f"t={p['t_seconds']:>10.4g} s  {pct * p['mean']:.3f} ± {pct * p['std']:.3f}{unit}  "
                    f"(seeds {len(p['per_seed'])})"
                )
    if args.json_out:
        _write_json(args.json_out, result)
    if args.plot:
        from aimc.experiments.report import plot_over_time

        _save_figure(args.plot, lambda path: plot_over_time(result, path), args.json)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``aimc train resnet9|char-lstm|char-transformer``: floating-point training or HWA fine-tuning, resumable, on the
    real data."""
    if args.model not in TRAINED_HERE:
        raise ValidationError(f"MODEL must be one of {', '.join(TRAINED_HERE)}; got {args.model!r}")
    for name in ("epochs", "batch_size", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValidationError(f"--{name.replace('_', '-')} must be at least 1; got {value}")
    if args.peak_lr is not None and not args.peak_lr > 0:
        raise ValidationError(f"--peak-lr must be positive; got {args.peak_lr}")
    if args.init is not None and not Path(args.init).is_file():
        raise ValidationError(f"--init {args.init!r} is not a file")
    if args.model == "char-transformer":
        return _train_char_transformer(args)
    if args.steps is not None:
        raise ValidationError("--steps applies to char-transformer only (the others train in --epochs)")
    kwargs: dict[str, Any] = {
        "seed": args.seed,
        "data_dir": args.data_dir,
        "resume": args.resume,
        "init": args.init,
        "hwa": args.hwa,
        "tag": args.tag or ("hwa" if args.hwa else "float"),
        "progress": not args.quiet,
        "log": (lambda _text: None) if args.quiet else print,
    }
    for name in ("epochs", "batch_size", "peak_lr"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if args.model == "resnet9":
        from aimc.train.cifar import train_resnet9

        if args.drift_aware and not args.hwa:
            raise ValidationError("--drift-aware is part of hardware-aware training: add --hwa")
        final = train_resnet9(args.out, io_aware=args.io_aware, drift_aware=args.drift_aware, **kwargs)
    else:
        if args.io_aware or args.drift_aware:
            raise ValidationError("--io-aware and --drift-aware apply to resnet9 only")
        from aimc.train.ptb import train_char_lstm

        final = train_char_lstm(args.out, **kwargs)
    metric = {k: v for k, v in final.items() if k in ("test_acc", "test_bpc", "valid_bpc")}
    print(f"wrote {args.out} ({json.dumps(metric)})")
    return 0


def _train_char_transformer(args: argparse.Namespace) -> int:
    """``aimc train char-transformer``: the float model in ``--steps`` (from scratch, or a warm restart from
    ``--init FILE``), or with ``--hwa --init FILE`` HWA fine-tuning of it (resumable from the same ``--out``)."""
    from aimc.train import char_transformer as ct

    if args.epochs is not None or args.io_aware or args.drift_aware or args.tag is not None:
        raise ValidationError(
            "char-transformer trains in --steps; --epochs, --io-aware, --drift-aware, --tag do not apply"
        )
    common: dict[str, Any] = {
        "seed": args.seed,
        "data_dir": args.data_dir,
        "progress": not args.quiet,
        "log": (lambda _text: None) if args.quiet else print,
    }
    if args.batch_size is not None:
        common["batch_size"] = args.batch_size
    if args.hwa:
        if args.init is None:
            raise ValidationError("--hwa fine-tunes trained weights: pass --init FILE (e.g. the float model)")
        final = ct.hwa_char_transformer(
            args.init, args.out, steps=args.steps or ct.HWA_STEPS, lr=args.peak_lr or ct.HWA_LR, **common
        )
    else:
        final = ct.train_char_transformer(
            args.out,
            steps=args.steps or ct.STEPS,
            peak_lr=args.peak_lr or ct.PEAK_LR,
            resume=args.resume,
            init=args.init,
            **common,
        )
    metric = {k: v for k, v in final.items() if k in ("test_bpc", "valid_bpc")}
    print(f"wrote {args.out} ({json.dumps(metric)})")
    return 0


def _user_model(path: str, factory: str) -> Any:
    """The ``nn.Module`` returned by the function ``factory`` of the Python file ``path`` (which is run)."""
    import importlib.util

    import torch

    file = Path(path)
    if file.suffix != ".py" or not file.is_file():
        raise ValidationError(f"MODEL must be a Python file (.py) defining {factory}(); got {path!r}")
    name = f"aimc_user_model_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ValidationError(f"cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = str(file.resolve().parent)
    sys.path.insert(0, folder)  # the file may import modules beside it
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    build = getattr(module, factory, None)
    if not callable(build):
        raise ValidationError(f"{path!r} defines no function {factory}() returning the model (see --factory)")
    model = build()
    if not isinstance(model, torch.nn.Module):
        raise ValidationError(f"{factory}() of {path!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _finetune_data(args: argparse.Namespace) -> tuple[Any, Any]:
    """The training images ``(N, 3, 32, 32)`` float and labels of ``aimc finetune``, in the chosen pixel scale."""
    import torch

    from aimc.data import cifar10_tensors, load_cifar10

    if args.raw_pixels or args.unit_pixels:
        images, labels = load_cifar10("train", args.data_dir, args.images)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        return (x if args.raw_pixels else x / 255.0), torch.from_numpy(labels.astype("int64"))
    return cifar10_tensors("train", args.images, args.data_dir)


def cmd_finetune(args: argparse.Namespace) -> int:
    """``aimc finetune MODEL.py WEIGHTS``: hardware-aware fine-tuning of a user's network on CIFAR-10."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from aimc import __version__
    from aimc._validation import check_number
    from aimc.devices.registry import get as get_device
    from aimc.train.batches import AugmentedBatches
    from aimc.train.finetune import hwa_finetune
    from aimc.train.hwa import DRIFT_WINDOW_S, digital_layer_names
    from aimc.weights.io import load_weights_file, save_weights

    # the arguments are checked before the model file runs and the data are read
    check_number(args.epochs, "--epochs", low=1, integer=True)
    check_number(args.batch, "--batch", low=1, integer=True)
    check_number(args.lr, "--lr", low=0.0, low_inclusive=False)
    check_number(args.distill, "--distill", low=0.0, high=1.0)
    noise = {k: v for k, v in (("noise_scale", args.noise_scale), ("output_noise", args.output_noise)) if v is not None}
    for name, value in noise.items():
        check_number(value, f"--{name.replace('_', '-')}", low=0.0)
    for name in ("images", "max_steps"):
        if getattr(args, name) is not None:
            check_number(getattr(args, name), f"--{name.replace('_', '-')}", low=1, integer=True)
    if args.seed < 0:
        raise ValidationError(f"--seed must be a non-negative int; got {args.seed}")
    if not args.out.endswith(".safetensors"):
        raise ValidationError(f"--out must name a .safetensors file; got {args.out!r}")
    device = args.device or ("hermes-1dev" if args.strategy == "odp" else "hermes-2dev")
    get_device(device)  # an unknown preset raises here
    model = _user_model(args.model, args.factory)
    meta = load_weights_file(args.weights, model)  # checked: size, header, dtypes, finite values, names, shapes
    digital = _names(args.digital_layers)
    digital_layer_names(model, digital)  # a name that is no Conv/Linear layer of the model raises here
    x, y = _finetune_data(args)
    if len(x) < args.batch:
        raise ValidationError(f"--batch {args.batch} is larger than the {len(x)} training images")
    loader = (
        AugmentedBatches(x, y, batch=args.batch, seed=args.seed)
        if args.augment
        else DataLoader(
            TensorDataset(x, y),
            batch_size=args.batch,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(args.seed),
        )
    )
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    hwa_finetune(
        model,
        loader,
        device=device,
        strategy=args.strategy,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        checkpoint=args.checkpoint,
        max_steps=args.max_steps,
        progress=not args.quiet,
        distill=args.distill,
        batchnorm=args.batchnorm,
        drift_window=DRIFT_WINDOW_S if args.drift else None,
        digital_layers=digital,
        **noise,
    )
    total = args.epochs * len(loader)
    steps = total if args.max_steps is None else min(total, args.max_steps)
    pixels = "raw" if args.raw_pixels else "unit" if args.unit_pixels else "normalised"
    record = {
        "model_file": Path(args.model).name,
        "factory": args.factory,
        "weights": Path(args.weights).name,
        "data": args.data,
        "pixels": pixels,
        "images": len(x),
        "device": device,
        "strategy": args.strategy,
        "epochs": args.epochs,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "distill": args.distill,
        **noise,
        "batchnorm": args.batchnorm,
        "drift_window": list(DRIFT_WINDOW_S) if args.drift else None,
        "augment": args.augment,
        "digital_layers": digital,
        "steps": steps,
        "total_steps": total,
        "aimc_version": __version__,
    }
    header = {"aimc_hwa_finetune": json.dumps(record), "aimc_version": __version__}
    if "aimc_model" in meta:
        header["aimc_model"] = meta["aimc_model"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_weights(args.out, model, header)
    if steps < total:
        print(
            f"wrote {args.out}: stopped at step {steps} of {total} (--max-steps); run again with the same "
            f"--checkpoint to continue"
        )
    else:
        print(f"wrote {args.out}: {steps} steps of HWA fine-tuning ({device}, {args.strategy.upper()})")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``aimc reproduce``: the chip paper's accuracy comparison and accuracy over time, with a report."""
    from aimc.experiments.reproduce import Settings, format_tables, reproduce

    settings = Settings.full() if args.full else Settings()
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValidationError(f"--seeds must be at least 1; got {args.seeds}")
        settings = dataclasses.replace(settings, seeds=args.seeds)
    tasks = tuple(_names(args.tasks))
    results = reproduce(
        args.out, settings=settings, data_dir=args.data_dir, tasks=tasks, log=print, progress=not args.quiet
    )
    print()
    print(format_tables(results))
    print(f"wrote {args.out}/report.md, results.json and figures ({results['seconds']:.0f} s)")
    return 0


def _run_points(
    args: argparse.Namespace, kind: str, name: str, run: Callable[..., Any], write_report: Callable[..., Any]
) -> int:
    """``aimc sweep`` and ``aimc dse`` after loading the file: ``run`` it with the executor's options, print what it
    stored (a line, or JSON with --json) and, with --report, write the report. Ctrl-C: the message and status 130."""
    from aimc.sweep.errors import SweepInterruptedError

    try:
        result = run(
            out=args.out,
            backend=args.backend,
            address=args.address,
            workers=args.workers,
            threads=args.threads,
            progress=not args.quiet,
        )
    except SweepInterruptedError as err:
        print(f"aimc: {err}", file=sys.stderr)
        return 130
    summary = {
        "out": str(result.out),
        "store": str(result.store),
        "total": result.total,
        "done_before": result.done_before,
        "computed": result.computed,
        "elapsed_s": round(result.elapsed_s, 3),
        "executor": result.executor,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{kind} {name}: {result.done_before + result.computed}/{result.total} points stored in "
            f"{result.store} ({result.computed} run now, {result.done_before} from before, {result.elapsed_s:.1f} s)"
        )
    if args.report:
        for path in write_report(result.out, html_report=args.html):
            if not args.json:
                print(f"wrote {path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``aimc sweep SWEEP.yaml``: a resumable Monte Carlo sweep, in this process or on a Ray cluster."""
    from aimc import sweep

    spec = sweep.load_spec(args.spec)
    return _run_points(args, "sweep", spec.name, functools.partial(sweep.run, spec), sweep.write_report)


def cmd_dse(args: argparse.Namespace) -> int:
    """``aimc dse SPACE.yaml``: accuracy and performance across chip designs, resumable, with Pareto fronts."""
    from aimc import dse

    space = dse.load_space(args.space)
    return _run_points(args, "dse", space.name, functools.partial(dse.run, space), dse.write_report)


def cmd_report(args: argparse.Namespace) -> int:
    """``aimc report OUTDIR``: markdown/HTML tables and figures of a sweep's or a design space's stored points."""
    from aimc.dse.report import is_dse_folder
    from aimc.sweep import write_report

    if is_dse_folder(args.outdir):
        from aimc.dse import write_report as write_dse_report
        from aimc.sweep.spec import _time

        t = None if args.time is None else _time(args.time, "--time", "")
        paths = write_dse_report(
            args.outdir, t_seconds=t, max_loss=args.max_loss, html_report=args.html, figures=not args.no_figures
        )
    else:
        if args.time is not None or args.max_loss is not None:
            raise ValidationError("--time and --max-loss apply to a design-space folder (aimc dse), not a sweep")
        paths = write_report(args.outdir, html_report=args.html, figures=not args.no_figures)
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    """``aimc data fetch cifar10``: download the official CIFAR-10 archive, verify it and convert it to numpy files."""
    from aimc.data.download import CIFAR10_URL, fetch_cifar10

    root = fetch_cifar10(
        args.data_dir,
        url=args.url or CIFAR10_URL,
        progress=not args.quiet,
        force=args.force,
        log=(lambda _text: None) if args.quiet else print,
    )
    print(f"CIFAR-10 is in {root / 'cifar10'}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``aimc info``: the machine, versions, threads, kernel cache and the kernel chosen for each hot operation."""
    import torch

    from aimc import kernels

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.remeasure:
        kernels.forget()
    info = kernels.report()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"CPU:      {info['cpu']} ({info['machine']}), {info['threads']} PyTorch threads")
    print(f"versions: aimc {info['aimc']}, torch {info['torch']}, numba {info['numba']}, Python {info['python']}")
    print(f"CUDA:     {'available (untested: kernels are chosen on the CPU only)' if info['cuda'] else 'no'}")
    print(f"cache:    {info['cache']}")
    if info["forced"]:
        print(f"forced:   {kernels.FORCE_ENV}={info['forced']}")
    for name, op in info["operations"].items():
        print(f"\n{name}: {op['summary']}")
        print(f"  chosen: {op['kernel']} ({op['source']}{', ' + op['measured_utc'] if op['measured_utc'] else ''})")
        for c in op["candidates"]:
            if not c["available"]:
                timing = "cannot run here"
            elif c["time_ms"] is not None:
                timing = f"{c['time_ms']:.3f} ms"
            elif c["probe_ms"] is not None:
                timing = f"abandoned (probe {c['probe_ms']:.3f} ms)"
            else:
                timing = "not measured"
            mark = "*" if c["name"] == op["kernel"] else " "
            print(f"  {mark} {c['name']:<12} {timing:<28} {c['summary']}")
    print(f"\nForce a kernel with {kernels.FORCE_ENV}=operation=kernel[,...] or aimc.kernels.Backend(...).")
    return 0


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    """The options of ``aimc sweep`` and ``aimc dse`` that choose where and how points run."""
    p.add_argument("--backend", default="local", choices=["local", "ray"], help="where points run (default local)")
    p.add_argument(
        "--address", default=None, help="Ray cluster: HOST:PORT (from `ray start --head`), ray://HOST:PORT or auto"
    )
    p.add_argument("--workers", type=int, default=None, help="Ray workers (default: the cluster's CPUs / threads)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (Ray default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``aimc`` command."""
    from aimc import __version__

    parser = argparse.ArgumentParser(
        prog="aimc", description="Simulate IBM's 64-core PCM analog in-memory compute chip."
    )
    parser.add_argument("--version", action="version", version=f"aimc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("mvm-error", help="MVM error characterisation of the chip paper (ε_total, ε_linear, ε_residual)")
    p.add_argument("--strategies", default="odp,tdp", help="comma-separated: odp, tdp (default: both)")
    p.add_argument("--modes", default="one-phase,four-phase", help="comma-separated read modes (default: both)")
    p.add_argument(
        "--times",
        default="60,3600,86400,31536000",
        help="seconds after programming (default: 1 min, 1 h, 1 day, 1 year)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="device preset for all strategies (default: hermes-1dev for ODP, hermes-2dev for TDP)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cores", type=int, default=4, help="cores characterised, 256x256 each (default 4)")
    p.add_argument("--inputs", type=int, default=2048, help="input vectors per core (default 2048, as the paper)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--json-out", default=None, help="also write the JSON result to this file")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="write a figure of the errors vs time")
    p.add_argument("--quiet", action="store_true", help="no progress output (--json implies it)")
    p.set_defaults(func=cmd_mvm_error)

    p = sub.add_parser("map", help="place a network on the chip's cores and show the placement")
    p.add_argument("model", help="resnet9, char-lstm, caption-lstm, or a .safetensors state dict (with --arch)")
    p.add_argument("--arch", default=None, help="architecture of a state-dict file (resnet9, char-lstm, caption-lstm)")
    p.add_argument(
        "--chips",
        type=_chips_arg,
        default=1,
        help="number of chips to map onto, or 'auto' (as many as the network needs; default 1)",
    )
    p.add_argument("--json", action="store_true", help="print JSON (cores_used, per-layer core lists, links)")
    p.add_argument("--png", default=None, metavar="FILE.png", help="draw the core map")
    p.set_defaults(func=cmd_map)

    p = sub.add_parser("perf", help="latency, energy and throughput: 'table1', 'scaling', or a network")
    p.add_argument(
        "model",
        help="table1 (the chip paper's Table I), scaling (the scaling study), or a network: "
        "resnet9, char-lstm, caption-lstm, or a .safetensors state dict (with --arch)",
    )
    p.add_argument("--mode", default="both", choices=["one-phase", "four-phase", "both"])
    p.add_argument(
        "--transport",
        default="host",
        choices=["host", "on-chip"],
        help="inter-layer activations through the host FPGA (as in the paper) or over on-chip links",
    )
    p.add_argument("--arch", default=None, help="architecture of a state-dict file")
    p.add_argument(
        "--chips",
        type=_chips_arg,
        default=1,
        help="number of chips to map the network onto, or 'auto' (as many as it needs; default 1)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="latency/energy breakdown chart")
    p.add_argument("--out", default="results/scaling", help="output folder of 'scaling' (default results/scaling)")
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser("eval", help="accuracy (ResNet-9) or BPC (char-LSTM) of trained weights on the chip over time")
    p.add_argument("model", help="resnet9, char-lstm, or a .safetensors weights file (its header names the network)")
    p.add_argument(
        "--weights",
        default=None,
        help="a .safetensors file or a shipped name (default resnet9_hwa / char_lstm_hwa; see aimc.weights)",
    )
    p.add_argument("--arch", default=None, help="network of a weights file without an aimc header")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--device", default=None, help="device preset (default hermes-1dev for ODP, hermes-2dev for TDP)")
    p.add_argument("--strategy", default="tdp", help="odp, tdp or odp,tdp")
    p.add_argument("--mode", default="four-phase", choices=["one-phase", "four-phase"])
    p.add_argument("--times", default="3600", help="seconds after programming, comma-separated")
    p.add_argument("--seeds", type=int, default=3, help="programmed chips (seeds 0..N-1)")
    p.add_argument(
        "--n",
        "--images",
        dest="n",
        type=int,
        default=None,
        help="test images (ResNet-9) or characters (char-LSTM) used (default: the whole test set)",
    )
    p.add_argument("--adabs", action="store_true", help="also evaluate with adaptive batch-norm statistics (AdaBS)")
    p.add_argument(
        "--adc-calibration",
        default="operating",
        choices=["operating", "full"],
        help="ADC affine correction fitted over each core's measured current range (default) or the full 0-100 uA",
    )
    p.add_argument(
        "--read-voltage",
        type=float,
        default=None,
        help="read voltage in V (the chip's 0.1-0.4; default CoreConfig's, 0.2); a core whose currents would exceed "
        "the ADC range gets a lower G_max",
    )
    p.add_argument(
        "--faults", default=None, help="hardware faults, e.g. 'stuck=0.01,dead_core=12,dead_link=3-4,dead_adc=5:17'"
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--json-out", default=None)
    p.add_argument("--plot", default=None, metavar="FILE.png", help="metric vs time after programming")
    p.add_argument("--quiet", action="store_true", help="no progress output (--json implies it)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "train",
        help="train ResNet-9 (CIFAR-10), the char-LSTM or the char-transformer (PTB), or fine-tune it hardware-aware",
    )
    p.add_argument("model", help="resnet9, char-lstm or char-transformer")
    p.add_argument("--out", required=True, help="output folder: checkpoints (last.safetensors), log.jsonl, weights")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 20 / 20)")
    p.add_argument("--batch-size", type=int, default=None, help="batch (default 256 images / 128 streams)")
    p.add_argument("--peak-lr", type=float, default=None, help="peak of the one-cycle learning rate")
    p.add_argument("--steps", type=int, default=None, help="char-transformer: training steps (default 6000; HWA 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hwa", action="store_true", help="hardware-aware fine-tuning (the chip paper's noise, clipping)")
    p.add_argument("--io-aware", action="store_true", help="resnet9 HWA: also 8-bit inputs and output noise")
    p.add_argument(
        "--drift-aware",
        action="store_true",
        help="resnet9 HWA: also the device drift at a random read time (1 min-1 day) with global compensation",
    )
    p.add_argument("--init", default=None, help="start from these weights (e.g. the float model for --hwa)")
    p.add_argument("--resume", action="store_true", help="continue after the last finished epoch in --out")
    p.add_argument("--tag", default=None, help="name of the final weights file (default float / hwa)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument(
        "--quiet", action="store_true", help="no progress output (each epoch's record is still written to log.jsonl)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "finetune",
        help="hardware-aware fine-tuning of your own network (a Python file) on CIFAR-10",
        description="Hardware-aware (HWA) fine-tuning of any PyTorch network: the chip's programming noise on every "
        "Conv2d/Linear weight, 8-bit inputs and output noise in the forward pass, weight clipping after each step "
        "(aimc.train.hwa_finetune). MODEL.py is imported and run as Python code: it is your own code, so pass only "
        "files you trust. Its function model() (or --factory NAME) returns the torch.nn.Module, whose weights are "
        "then read from WEIGHTS (a .safetensors state dict, checked; never pickle). Data: the CIFAR-10 training "
        "set, shuffled with --seed (random crops and flips with --augment); inputs normalised with the CIFAR-10 "
        "mean and std unless --unit-pixels or --raw-pixels says otherwise.",
    )
    p.add_argument("model", metavar="MODEL.py", help="Python file defining model() (run as code: your own file)")
    p.add_argument("weights", metavar="WEIGHTS.safetensors", help="the trained weights (state dict) to start from")
    p.add_argument("--out", required=True, metavar="OUT.safetensors", help="where to write the fine-tuned weights")
    p.add_argument("--factory", default="model", help="name of the function in MODEL.py that returns the network")
    p.add_argument("--data", default="cifar10", choices=["cifar10"], help="training set (default cifar10)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    pixels = p.add_mutually_exclusive_group()
    pixels.add_argument("--unit-pixels", action="store_true", help="inputs are pixels in [0, 1] (not normalised)")
    pixels.add_argument("--raw-pixels", action="store_true", help="inputs are pixels 0-255 as floats (not normalised)")
    p.add_argument("--images", type=int, default=None, help="use the first N training images (default all 50,000)")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training images (default 1)")
    p.add_argument("--batch", type=int, default=128, help="images per step (default 128)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of AdamW (default 1e-4)")
    p.add_argument("--device", default=None, help="device preset (default hermes-1dev for ODP, hermes-2dev for TDP)")
    p.add_argument("--strategy", default="tdp", choices=["tdp", "odp"], help="weight programming strategy")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and of the shuffling (default 0)")
    p.add_argument(
        "--distill",
        type=float,
        default=0.0,
        metavar="W",
        help="weight in [0, 1] of distillation from the network as loaded (its noise-free outputs are the targets; "
        "default 0: labels only)",
    )
    p.add_argument(
        "--noise-scale",
        type=float,
        default=None,
        help="weight noise in units of the device's programming error (default 2, the chip paper's ResNet-9 recipe)",
    )
    p.add_argument(
        "--output-noise",
        type=float,
        default=None,
        help="additive output noise per layer, as a fraction of its full scale (default 0.1)",
    )
    p.add_argument(
        "--batchnorm",
        choices=["update", "frozen"],
        default="update",
        help="batch norms: 'update' their statistics on the noisy network (default) or keep them 'frozen' as loaded",
    )
    p.add_argument(
        "--drift",
        action="store_true",
        help="the noisy weights also drift to a random read time in 1 min - 1 day (global drift compensation)",
    )
    p.add_argument("--augment", action="store_true", help="random crops (4-pixel zero padding) and horizontal flips")
    p.add_argument(
        "--digital-layers",
        default="",
        metavar="NAMES",
        help="comma-separated layers that will run on the digital unit (module names, or 'depthwise'): trained "
        "without analog noise; compile with the same digital_layers",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH.safetensors",
        help="resumable run: continue from this file if it exists, and write it every 200 steps and at the end",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this step of the schedule (continue later with the same --checkpoint)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("reproduce", help="the chip paper's accuracy results (Fig. 3c/4c) and accuracy over time")
    p.add_argument("--out", default="results/reproduce", help="output folder (default results/reproduce)")
    p.add_argument("--full", action="store_true", help="whole test sets and 10 seeds (hours on 2 cores)")
    p.add_argument("--seeds", type=int, default=None, help="programmed chips per point (default 2; 10 with --full)")
    p.add_argument(
        "--tasks",
        default="resnet9,char-lstm,char-transformer",
        help="comma-separated: resnet9, char-lstm, char-transformer (the last is not in the chip paper)",
    )
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress output: only the tables at the end")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("sweep", help="Monte Carlo sweep from a YAML file (resumable; local or on a Ray cluster)")
    p.add_argument("spec", help="the sweep file (see docs/sweeps.md and examples/sweep_resnet9.yaml)")
    p.add_argument("--out", default=None, help="output folder (default: the file's 'output', else results/sweeps/NAME)")
    _add_executor_options(p)
    p.add_argument("--report", action="store_true", help="write the report when the sweep is done")
    p.add_argument("--html", action="store_true", help="with --report: also report.html")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="tables and figures of a sweep's or a design space's output folder")
    p.add_argument("outdir", help="the output folder of `aimc sweep` or `aimc dse` (holding results.sqlite)")
    p.add_argument("--html", action="store_true", help="also write report.html (dse_report.html)")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument(
        "--time", default=None, help="design spaces: the time of the Pareto fronts, e.g. 1d (default: the space's)"
    )
    p.add_argument(
        "--max-loss",
        type=float,
        default=None,
        help="design spaces: loss budget of the best-TOPS/W answer (points or BPC)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("info", help="this machine, versions and the kernel chosen for each hot operation")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--remeasure", action="store_true", help="forget this machine's cached choices and measure again")
    p.add_argument("--threads", type=int, default=None, help="PyTorch threads to choose for (default: PyTorch's)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("data", help="data sets: download and convert them (see `aimc data fetch --help`)")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "fetch",
        help="download the official archive, check its published checksum and convert it to numpy files",
        description="Download the official CIFAR-10 binary archive (resuming an interrupted download), check it "
        "against its published md5 and write cifar10/cifar10-{train,test}.npz. Offline: put "
        "cifar-10-binary.tar.gz in DIR/cifar10/ by hand and run this command to verify and convert it.",
    )
    p.add_argument("dataset", choices=["cifar10"], help="the data set")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder to put cifar10/ in (default: the user cache folder, $AIMC_CACHE_DIR/data if set)",
    )
    p.add_argument("--url", default=None, help="download from this mirror instead (the checksum is still checked)")
    p.add_argument("--force", action="store_true", help="fetch and convert again even if the numpy files are there")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_data_fetch)

    # the last subcommand: the choices listed in an "invalid choice" error keep their order (docs/validation.md)
    p = sub.add_parser("dse", help="design-space exploration: accuracy and energy across chip designs (Pareto)")
    p.add_argument("space", help="the design-space file (see docs/dse.md and examples/dse_resnet9.yaml)")
    p.add_argument("--out", default=None, help="output folder (default: the file's 'output', else results/dse/NAME)")
    _add_executor_options(p)
    p.add_argument("--report", action="store_true", help="write the report when the run is done")
    p.add_argument("--html", action="store_true", help="with --report: also dse_report.html")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_dse)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aimc`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0
    except (AimcError, OSError) as err:  # bad input, or a file that cannot be read or written
        if args.debug:
            raise
        print(f"aimc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("aimc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
