"""`python -m export --run=RUN [--version=N] [--out=exports]` (what `make export` runs).

Writes exports/<name>/<version>/: a SavedModel that TF Serving loads as it is (signatures
in export/savedmodel.py), its warm-up requests and assets.extra/export.json, then lists
every model of exports/ in exports/models.config. The version is written under a hidden
temporary name, checked, and only then renamed, so TF Serving (which watches the folder)
never sees half an export. Exit codes: 0 done, 1 the export failed its check, 2 bad settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from preprocess.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow(sys.argv)  # before anything imports TensorFlow: its log lines only with --verbose

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import models  # noqa: E402
from export import savedmodel, serving  # noqa: E402
from export.inference import INFO_FILE  # noqa: E402
from models.config import ConfigError  # noqa: E402

SAVED_MODEL_CLI = Path(sys.executable).with_name("saved_model_cli")

# The graph's compute precision. float32 runs well everywhere; mixed_bfloat16 (weights kept
# in float32, layers computing in bf16) is faster on CPUs with bf16 units (AVX512-BF16, AMX)
# and much slower on CPUs without them, which emulate it: so it is a choice for the
# serving machine, never a default taken from the exporting one.
PRECISIONS = ("float32", "mixed_bfloat16")


class CheckFailed(Exception):
    """The written SavedModel did not pass `saved_model_cli` or the warm-up replay."""


def next_version(model_dir: Path) -> int:
    """One more than the highest numbered version in `model_dir`; 1 for a new model."""
    existing = [int(child.name) for child in model_dir.iterdir() if child.name.isdigit()] if model_dir.is_dir() else []
    return max(existing, default=0) + 1


def check(export_dir: Path, temperature: float | None, hints: bool = False) -> None:
    """Check a written export three ways, raising CheckFailed.

    `saved_model_cli show --all` must list every signature with its documented input and
    output names; `saved_model_cli run` (a fresh process) must turn a gray image into RGB
    of the same size; every warm-up request must run through the SavedModel loaded from
    disk. The two saved_model_cli processes (seconds each, mostly importing TensorFlow)
    run side by side while the warm-up requests run here.
    """
    with tempfile.TemporaryDirectory() as outdir:
        # A file rather than --input_exprs: TF 2.21's saved_model_cli takes only literals there.
        inputs = {"gray": np.zeros((1, 64, 48, 1), np.uint8)}
        if temperature is not None:
            inputs["temperature"] = np.full((1,), temperature, np.float32)
        np.savez(Path(outdir) / "inputs.npz", **inputs)
        feeds = ";".join(f"{key}={outdir}/inputs.npz[{key}]" for key in inputs)
        commands = {
            "show": ["show", "--all", "--dir", str(export_dir)],
            "run": ["run", "--dir", str(export_dir), "--tag_set", "serve", "--signature_def", "serving_default",
                    "--inputs", feeds, "--outdir", outdir],
        }  # fmt: skip
        try:
            running = {name: subprocess.Popen([str(SAVED_MODEL_CLI), *args], stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True)
                       for name, args in commands.items()}  # fmt: skip
        except OSError as error:
            raise CheckFailed(f"cannot run {SAVED_MODEL_CLI}: {error}") from None
        try:
            serving.replay_warmup(export_dir)
        except Exception as error:
            raise CheckFailed(f"a warm-up request failed: {error}") from None
        finally:
            finished = {name: process.communicate(timeout=600) for name, process in running.items()}
        for name, process in running.items():
            if process.returncode != 0:
                raise CheckFailed(f"saved_model_cli {name} failed:\n{finished[name][1][-3000:]}")
        shown = finished["show"][0]
        for name, specs in savedmodel.input_specs(temperature is not None, hints).items():
            # Signatures are listed in turn, each with its inputs and outputs.
            listed = shown.partition(f"signature_def['{name}']")[2].partition("signature_def[")[0]
            names = [f"inputs['{spec.name}']" for spec in specs] + [f"outputs['{savedmodel.OUTPUTS[name]}']"]
            if not listed or any(key not in listed for key in names):
                raise CheckFailed(f"saved_model_cli show does not list signature {name} with {', '.join(names)}")
        try:
            rgb = np.load(Path(outdir) / "rgb.npy")
        except OSError:
            raise CheckFailed("saved_model_cli run wrote no output") from None
    if rgb.shape != (1, 64, 48, 3) or rgb.dtype != np.uint8:
        raise CheckFailed(f"saved_model_cli run: serving_default gave {rgb.dtype} {rgb.shape}, not uint8 (1,64,48,3)")


WINOGRAD_HELP = (
    "float32 convolutions of 64 channels and more by Winograd's algorithm, compiled by XLA for each size and "
    "batch the graph meets (seconds, the first time): on CPUs without AVX-512, zhang colorizes about 2.1x as "
    "fast, cgan 1.2x at batch 16 and the same at batch 1 (BENCHMARKS.md). TF Serving runs such an export only "
    "when started with --xla_cpu_compilation_enabled=true; colorize, make serve and make evaluate run it as is"
)


def export_run(run: Path, out: Path, name: str | None = None, version: int | None = None,
               checkpoint: str = "best", size: int | None = None, serving_root: str = "/models",
               temperature: float | None = None, decode_rebalance: float | None = None,
               precision: str = "float32", weights: str = "float32",
               chroma_gain: float | None = None, winograd: bool = False) -> Path:  # fmt: skip
    """Export the generator of `run` to out/<name>/<version>; returns that folder.

    `temperature`: the default decoding temperature written into export.json for models
    that take one (default: the run's), e.g. the one a `make evaluate --temperatures` sweep
    chose; `decode_rebalance` and `chroma_gain`: zhang's rebalancing and chroma gain at
    decoding, fixed in the graph; `precision`: the graph's compute precision (PRECISIONS);
    `weights`: how the kernels are stored (savedmodel.WEIGHTS); `winograd`: see WINOGRAD_HELP.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision={precision}: valid: {', '.join(PRECISIONS)}")
    if weights not in savedmodel.WEIGHTS:
        raise ConfigError(f"--weights={weights}: valid: {', '.join(savedmodel.WEIGHTS)}")
    if winograd and precision != "float32":
        raise ConfigError(f"--winograd: Winograd's convolutions are float32 only, not --precision={precision}")
    saved = models.read_run_config(run)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)  # layers take their compute dtype when built
    try:
        generator = models.build_from_run(run, checkpoint)["generator"]
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if decode_rebalance is not None:
        if not hasattr(saved.model_config, "decode_rebalance"):
            raise ConfigError(f"--decode_rebalance: {saved.model} has no rebalancing at decoding")
        generator.decode_rebalance = decode_rebalance
        saved = saved._replace(model_config=dataclasses.replace(saved.model_config, decode_rebalance=decode_rebalance))
    if chroma_gain is not None:
        if not hasattr(saved.model_config, "chroma_gain"):
            raise ConfigError(f"--chroma_gain: {saved.model} has no chroma gain at decoding")
        generator.chroma_gain = chroma_gain
        saved = saved._replace(model_config=dataclasses.replace(saved.model_config, chroma_gain=chroma_gain))
    if getattr(generator, "decode_rebalance", 0.0):
        models.require_decoding_weights(generator, run)
    size = size or models.working_size(saved)
    hints = savedmodel.takes_hints(generator)
    if not savedmodel.has_temperature(saved.model_config):
        if temperature is not None:
            raise ConfigError(f"--temperature: {saved.model} does not decode with a temperature")
    else:
        temperature = temperature or saved.model_config.temperature
        saved = saved._replace(model_config=dataclasses.replace(saved.model_config, temperature=temperature))
    model_dir = out / (name or saved.model)
    version = version or next_version(model_dir)
    target = model_dir / str(version)
    if target.exists():
        raise ConfigError(f"{target} exists; pick another --version or leave it out for the next one")

    model_dir.mkdir(parents=True, exist_ok=True)
    partial = model_dir / f".partial-{version}-{os.getpid()}"  # hidden: TF Serving loads numbered folders only
    shutil.rmtree(partial, ignore_errors=True)
    try:
        savedmodel.write(generator, partial, size, saved.model_config.stride, temperature is not None, hints=hints,
                         weights=weights, winograd=winograd)
        info = {
            "model": saved.model,
            "model_config": dataclasses.asdict(saved.model_config),
            "working_size": size,
            "stride": saved.model_config.stride,
            "max_pixels": savedmodel.MAX_PIXELS,  # colorize_image refuses larger photos
            "temperature": temperature,
            "hints": hints,  # the guided signatures are there (colorize --hints / --reference)
            "precision": precision,
            "weights": weights,
            "winograd": winograd,
            "run": str(run.resolve()),
            "checkpoint": checkpoint,
            "signatures": {
                key: [spec.name for spec in specs]
                for key, specs in savedmodel.input_specs(temperature is not None, hints).items()
            },
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (partial / INFO_FILE).parent.mkdir(parents=True, exist_ok=True)
        (partial / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        serving.write_warmup(partial, model_dir.name, temperature, hints)
        check(partial, temperature, hints)
        os.rename(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    serving.write_models_config(out, serving_root)
    return target


def folder_size(path: Path) -> int:
    """Bytes in the files under `path`."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--run", type=Path, required=True, help="run folder written by `make train`")
    add("--version", type=int, default=None, help="version number (default: the next free one)")
    add("--out", type=Path, default=Path("exports"), help="exports folder (default: exports)")
    add("--name", default=None, help="model name in exports/ and TF Serving (default: the model's: cgan, ...)")
    add("--checkpoint", default="best", help="best (default), latest, or a checkpoint path")
    add(
        "--size",
        type=int,
        default=None,
        help="working size: the model sees about SIZE x SIZE pixels (default: the run's tile size)",
    )
    add(
        "--serving-root",
        default="/models",
        help="where TF Serving sees --out, for models.config (default: /models, as in the README's Docker line)",
    )
    add("--temperature", type=float, default=None,
        help="default decoding temperature of models that take one (zhang; default: the run's)")
    add("--decode_rebalance", type=float, default=None,
        help="zhang: rebalancing at decoding, 0 (as trained) to 1 (default: the run's)")
    add("--chroma_gain", type=float, default=None,
        help="zhang: each pixel's colour moved away from the photo's mean colour by this factor, 1 as decoded "
             "(default: the run's)")
    add("--precision", choices=PRECISIONS, default="float32",
        help="the graph's compute precision: float32 (default; fast everywhere) or mixed_bfloat16 (faster on "
             "CPUs with bf16 units, e.g. AVX512-BF16 or AMX; much slower on CPUs without them)")  # fmt: skip
    add("--weights", choices=savedmodel.WEIGHTS, default="float32",
        help="how the kernels are stored: float32 (default) or bfloat16 (half the size; the graph still "
             "computes at --precision; costs nothing for a run trained in mixed_bfloat16)")  # fmt: skip
    add("--winograd", action="store_true", help=WINOGRAD_HELP)
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args(argv)
    if args.version is not None and args.version < 1 or args.size is not None and args.size < 1:
        parser.error("--version and --size must be positive")
    if args.temperature is not None and args.temperature <= 0:
        parser.error("--temperature must be positive")
    if args.decode_rebalance is not None and args.decode_rebalance < 0:
        parser.error("--decode_rebalance must be >= 0")
    if args.chroma_gain is not None and args.chroma_gain <= 0:
        parser.error("--chroma_gain must be positive")
    started = time.perf_counter()
    try:
        target = export_run(args.run, args.out, args.name, args.version, args.checkpoint, args.size, args.serving_root,
                            args.temperature, args.decode_rebalance, args.precision, args.weights,
                            args.chroma_gain, args.winograd)  # fmt: skip
    except (ConfigError, FileNotFoundError) as error:
        print(f"make export: {error}", file=sys.stderr)
        return 2
    except CheckFailed as error:
        print(f"make export: the export failed its check; nothing was written\n{error}", file=sys.stderr)
        return 1
    info = json.loads((target / INFO_FILE).read_text())
    print(
        f"exported {args.run} ({info['model']}, {args.checkpoint} checkpoint) to {target} in "
        f"{time.perf_counter() - started:.1f} s: {folder_size(target) / 2**20:.1f} MiB, working size "
        f"{info['working_size']}, stride {info['stride']}, {info['precision']}, {info['weights']} kernels"
        f"{', Winograd convolutions' if info['winograd'] else ''}; "
        f"checked by saved_model_cli and its warm-up requests"
    )
    print(f"TF Serving: {args.out / serving.MODELS_CONFIG} lists it; colorize: "
          f"python -m export.colorize --model {target.parent} --output OUT PHOTO...")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
