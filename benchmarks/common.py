"""Timing, environment capture and the RESULTS.md log shared by the benchmarks."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_MD = os.path.join(HERE, "RESULTS.md")


def time_cpu(fn, warmup=3, repeat=20) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def time_cuda(fn, warmup=3, repeat=20) -> float:
    """Median device time of fn() in seconds, between CUDA events on the current stream."""
    import cupy
    for _ in range(warmup):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    samples = []
    for _ in range(repeat):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        samples.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(samples)


def versions() -> dict:
    from gpudl.cli import library_versions
    return {"python": platform.python_version(), **library_versions(extra=("torch",))}


def commit() -> str:
    if os.environ.get("GPUDL_COMMIT"):  # the device machine gets a tree without .git
        return os.environ["GPUDL_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                       stderr=subprocess.DEVNULL, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def gpu_name() -> str:
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def record(title: str, device: str, header: list, rows: list, notes: str = "",
           json_path: str | None = None, write: bool | None = None) -> str:
    """Print a table, append it with device, versions, commit and date to RESULTS.md,
    and optionally write the rows as JSON.

    ``write`` False never appends to RESULTS.md; None (the default) appends
    unless GPUDL_BENCH_NO_RECORD=1. GPUDL_RESULTS_MD names another file."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"
    table = "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                      + [line(r) for r in rows])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    entry = (f"\n## {title}\n\n{stamp}, commit {commit()}, device: {device}\n\n"
             f"Versions: {vers}\n\n{table}\n" + (f"\n{notes}\n" if notes else ""))
    print(entry)
    if write is None:
        write = os.environ.get("GPUDL_BENCH_NO_RECORD") != "1"
    if write:
        with open(os.environ.get("GPUDL_RESULTS_MD", RESULTS_MD), "a") as f:
            f.write(entry)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"title": title, "device": device, "date": stamp, "commit": commit(),
                       "versions": versions(), "header": header, "rows": rows}, f, indent=2)
    return table
