"""From colour photos to Lab TFRecord shards (`python -m preprocess`, what `make data` runs).

Every package of the project imports this one before TensorFlow, for the setting below.
"""

import os
import platform

# TensorFlow uses its oneDNN kernels by default only on x86 CPUs with AVX512-VNNI, AVX512-BF16
# or AMX. Elsewhere (AVX2: AMD Zen 2, Intel before Cascade Lake) it falls back to Eigen, whose
# convolution gradients made training 1.7x to 3x slower here (BENCHMARKS.md, "oneDNN on every
# x86 CPU"). TensorFlow reads the variable once, when it loads; a user's own value wins.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from Linux's /proc/cpuinfo (avx2, avx512f, amx_bf16, ...); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return frozenset(next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bfloat16 natively (Intel AMX or AVX512-BF16; Linux's cpuinfo)."""
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags
