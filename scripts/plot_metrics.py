#!/usr/bin/env python3
"""Render the Grafana dashboard's panels (config/grafana-dashboard.json) from a real run, with matplotlib.

Grafana cannot run everywhere, so this script shows what the example dashboard would show: it writes the
built-in demo dataset (`nb-serve demo --generate-only`) into a temporary directory, starts `nb-serve run` on
it with `serve.metrics: "127.0.0.1:0"` (a free port, read back from the control `status` reply) and one
decode worker, and trains against it with the real Python client (`nbserve.Loader`) in three phases:

1. a trainer whose step takes ~0 ms: data-bound, the trainer mostly waits (high data stall);
2. a trainer whose step is `time.sleep(0.03)`: compute-bound, batches are ready before they are asked for
   (stall near 0);
3. the fast trainer again.

Meanwhile a thread scrapes the Prometheus endpoint every 0.5 s and parses it with prometheus_client. The
dashboard's PromQL (rate(), histogram_quantile()) is evaluated client-side over a sliding window (5 s), each
panel is drawn in a 3x3 grid with the phases shaded, and the figure is saved (docs/metrics-dashboard.png by
default). The daemon is stopped with the control `stop` command at the end, also when something fails.
Prints, per phase, the mean data stall and frames/s, from the daemon's counters and from the client.

    python3 scripts/plot_metrics.py [--binary PATH] [--out docs/metrics-dashboard.png] [--seconds N]

Needs matplotlib, prometheus_client, numpy and pyzmq (the client's dependencies); takes 1-2 minutes.
"""

from __future__ import annotations

import argparse
import bisect
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

import nbserve  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

TRAIN = {"rank": "0", "stage": "train"}


def default_binary() -> str:
    release = os.path.join(ROOT, ".build", "release", "nb-serve")
    return release if os.path.exists(release) else os.path.join(ROOT, ".build", "debug", "nb-serve")


# --- the daemon -------------------------------------------------------------------------------------------

def write_config(directory: str, workers: int, prefetch: int) -> str:
    """A config derived from the generated demo.yaml: its dataset and loader keys, our serve: section."""
    with open(os.path.join(directory, "demo.yaml")) as f:
        lines = f.read().splitlines()
    kept: list[str] = []
    for line in lines:
        if line.startswith("serve:"):
            break  # serve: is the last section of demo.yaml; ours replaces it
        if line.startswith("num_workers:"):
            line = f"num_workers: {workers}"
        kept.append(line)
    absolute = os.path.abspath(directory)
    kept += [
        "serve:",
        "  world_size: 1",
        f'  endpoint: "ipc://{absolute}/rank{{rank}}.sock"',
        f'  control: "ipc://{absolute}/control.sock"',
        '  metrics: "127.0.0.1:0"',
        f"  prefetch: {prefetch}",
    ]
    path = os.path.join(directory, "plot.yaml")
    with open(path, "w") as f:
        f.write("\n".join(kept) + "\n")
    return path


def stop_daemon(process: subprocess.Popen, control: str) -> None:
    """`{"cmd": "stop"}` on the control socket and wait; terminate/kill only if it does not stop."""
    if process.poll() is not None:
        return
    try:
        nbserve.ControlClient(control, 10.0).request({"cmd": "stop"})
    except Exception as error:  # noqa: BLE001  (the daemon may already be gone)
        print(f"plot_metrics: stop request failed: {error}", file=sys.stderr)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        print("plot_metrics: the daemon did not stop within 30 s; terminating it", file=sys.stderr)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- scraping ---------------------------------------------------------------------------------------------

Key = tuple  # (sample name, sorted label items)


def key(name: str, **labels: str) -> Key:
    return (name, tuple(sorted(labels.items())))


class Scraper(threading.Thread):
    """Scrapes `url` every `interval` seconds into `self.samples`: (seconds since t0, {Key: value})."""

    def __init__(self, url: str, interval: float, t0: float) -> None:
        super().__init__(daemon=True)
        self.url, self.interval, self.t0 = url, interval, t0
        self.samples: list[tuple[float, dict[Key, float]]] = []
        self.failures = 0
        self.halt = threading.Event()

    def scrape(self) -> None:
        t = time.monotonic() - self.t0
        text = urllib.request.urlopen(self.url, timeout=2).read().decode()
        values: dict[Key, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
        self.samples.append((t, values))

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.halt.is_set():
            try:
                self.scrape()
            except Exception:  # noqa: BLE001  (a missed scrape is a gap, as in Prometheus)
                self.failures += 1
            next_at += self.interval
            self.halt.wait(max(0.0, next_at - time.monotonic()))


# --- PromQL, client-side ----------------------------------------------------------------------------------

class Series:
    """The scrapes as arrays, with rate() and histogram_quantile() over a sliding window."""

    def __init__(self, samples: list[tuple[float, dict[Key, float]]], window: float) -> None:
        self.t = [t for t, _ in samples]
        self.values = [v for _, v in samples]
        self.window = window
        # For each scrape, the earliest scrape within the window before it (the window's other end).
        self.start = [bisect.bisect_left(self.t, t - window) for t in self.t]

    def gauge(self, k: Key) -> list[float]:
        return [v.get(k, math.nan) for v in self.values]

    def delta(self, k: Key, i: int) -> float:
        j = self.start[i]
        if j >= i:
            return math.nan
        return self.values[i].get(k, math.nan) - self.values[j].get(k, math.nan)

    def elapsed(self, i: int) -> float:
        j = self.start[i]
        return self.t[i] - self.t[j] if j < i else math.nan

    def rate(self, k: Key) -> list[float]:
        return [self.delta(k, i) / self.elapsed(i) if self.start[i] < i else math.nan for i in range(len(self.t))]

    def stall(self, labels: dict[str, str]) -> list[float]:
        """rate(wait_sum) / (rate(wait_sum) + rate(busy_total)); the window lengths cancel."""
        out = []
        for i in range(len(self.t)):
            wait = self.delta(key("nbserve_trainer_wait_seconds_sum", **labels), i)
            busy = self.delta(key("nbserve_trainer_busy_seconds_total", **labels), i)
            out.append(wait / (wait + busy) if wait + busy > 0 else math.nan)
        return out

    def quantile(self, q: float, name: str, labels: dict[str, str]) -> list[float]:
        """histogram_quantile(q, rate(name_bucket[window])) for one label set."""
        # Each bucket's le as the daemon spells it ("0.0001", "1.0", "+Inf"), by its value.
        spelled = {}
        for k in self.values[-1]:
            if k[0] == f"{name}_bucket":
                d = dict(k[1])
                if all(d.get(a) == b for a, b in labels.items()):
                    spelled[float(d["le"])] = d["le"]
        bounds = sorted(spelled)
        les = [spelled[b] for b in bounds]
        out = []
        for i in range(len(self.t)):
            counts = [self.delta(key(f"{name}_bucket", **labels, le=le), i) for le in les]
            out.append(histogram_quantile(q, bounds, counts))
        return out


def histogram_quantile(q: float, bounds: list[float], cumulative: list[float]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding the q-th observation."""
    if not cumulative or any(math.isnan(c) for c in cumulative) or cumulative[-1] <= 0:
        return math.nan
    rank = q * cumulative[-1]
    b = next(i for i, c in enumerate(cumulative) if c >= rank)
    if math.isinf(bounds[b]):
        return bounds[b - 1] if b > 0 else math.nan  # in the +Inf bucket: the highest finite bound
    lower = bounds[b - 1] if b > 0 else 0.0
    below = cumulative[b - 1] if b > 0 else 0.0
    inside = cumulative[b] - below
    if inside <= 0:
        return bounds[b]
    return lower + (bounds[b] - lower) * (rank - below) / inside


# --- the trainer ------------------------------------------------------------------------------------------

def train(control: str, phases: list[tuple[str, float, float]], t0: float) -> list[dict]:
    """Iterates epochs (each iter(loader) is the next one) through `phases` (name, step seconds, duration);
    returns, per phase, its start/end (seconds since t0), batches and the client's own stats."""
    results = []
    loader = nbserve.Loader(control)
    try:
        def batches():
            while True:
                yield from loader

        stream = batches()
        loader.stats(reset=True)
        for name, step, duration in phases:
            start = time.monotonic() - t0
            end_at = time.monotonic() + duration
            count = 0
            while time.monotonic() < end_at:
                next(stream)
                count += 1
                if step > 0:
                    time.sleep(step)
            end = time.monotonic() - t0
            results.append({"name": name, "step": step, "start": start, "end": end, "batches": count,
                            "client": loader.stats(reset=True)})
        stream.close()
    finally:
        loader.close()
    return results


# --- the figure -------------------------------------------------------------------------------------------

BG, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
GREEN, YELLOW, BLUE, ORANGE, RED, PURPLE = "#73BF69", "#FADE2A", "#5794F2", "#FF9830", "#F2495C", "#B877D9"
PHASE_COLORS = ["#F2495C", "#73BF69", "#F2495C", "#5794F2"]


def plot(series: Series, phases: list[dict], out: str, dpi: int, workers: int, titles: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

    plt.rcParams.update({
        "figure.facecolor": BG, "axes.facecolor": PANEL, "axes.edgecolor": GRID, "axes.labelcolor": TEXT,
        "axes.titlecolor": TEXT, "xtick.color": TEXT, "ytick.color": TEXT, "text.color": TEXT,
        "grid.color": GRID, "legend.facecolor": PANEL, "legend.edgecolor": GRID, "font.size": 9,
        "axes.titlesize": 10, "legend.fontsize": 8,
    })
    t = series.t
    fig, axes = plt.subplots(3, 3, figsize=(16, 10), sharex=True)
    axes = axes.ravel()
    ms = FuncFormatter(lambda v, _: f"{v * 1000:g} ms")

    def line(ax, y, label, color, **kw):
        ax.plot(t, y, label=label, color=color, lw=1.4, **kw)

    # 1. Data stall
    ax = axes[0]
    stall = series.stall(TRAIN)
    line(ax, stall, "rank 0 train", GREEN)
    ax.fill_between(t, [0 if math.isnan(v) else v for v in stall], color=GREEN, alpha=0.1)
    ax.axhline(0.05, color=ORANGE, lw=0.8, ls="--", label="5% (warn)")
    ax.axhline(0.2, color=RED, lw=0.8, ls="--", label="20% (alert)")
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))

    # 2. Frames per second served
    ax = axes[1]
    line(ax, series.rate(key("nbserve_frames_sent_total", **TRAIN)), "rank 0 train", GREEN)
    line(ax, series.rate(key("nbserve_frames_sent_total", rank="0", stage="val")), "rank 0 val", YELLOW, alpha=0.6)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("frames/s")

    # 3. Trainer wait per batch
    ax = axes[2]
    line(ax, series.quantile(0.5, "nbserve_trainer_wait_seconds", TRAIN), "p50 rank 0 train", GREEN)
    line(ax, series.quantile(0.99, "nbserve_trainer_wait_seconds", TRAIN), "p99 rank 0 train", YELLOW)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ms)
    ax.yaxis.set_minor_formatter(NullFormatter())

    # 4. Decode time per frame (the dashboard sums over rank and stage; val stays empty here)
    ax = axes[3]
    line(ax, series.quantile(0.5, "nbserve_decode_seconds", TRAIN), "p50", GREEN)
    line(ax, series.quantile(0.99, "nbserve_decode_seconds", TRAIN), "p99", YELLOW)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(ms)

    # 5. Ready batches and held leases
    ax = axes[4]
    ax.step(t, series.gauge(key("nbserve_ready_batches", **TRAIN)), where="post", label="ready rank 0 train",
            color=GREEN, lw=1.4)
    ax.step(t, series.gauge(key("nbserve_held_leases", rank="0")), where="post", label="held rank 0",
            color=BLUE, lw=1.4)
    ax.set_ylim(bottom=0)

    # 6. Epochs served and acknowledged: the epoch plus the share of its batches sent / acknowledged
    ax = axes[5]
    epoch = series.gauge(key("nbserve_epoch", **TRAIN))
    total = series.gauge(key("nbserve_epoch_batches", **TRAIN))
    for name, label, color in (("nbserve_epoch_batches_sent", "sent rank 0 train", GREEN),
                               ("nbserve_epoch_batches_consumed", "acknowledged rank 0 train", BLUE)):
        part = series.gauge(key(name, **TRAIN))
        ax.plot(t, [e + p / n if n > 0 and e >= 0 else math.nan for e, p, n in zip(epoch, part, total)],
                label=label, color=color, lw=1.2)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("epochs")

    # 7. Throughput
    ax = axes[6]
    line(ax, [v / 1e6 for v in series.rate(key("nbserve_sent_bytes_total", **TRAIN))], "rank 0", BLUE)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("MB/s")

    # 8. Workers, restarts and errors (increase over the sliding window, not 5 min: the run is short)
    ax = axes[7]
    ax.step(t, series.gauge(key("nbserve_workers")), where="post", label="workers running", color=GREEN, lw=1.4)
    restarts = [series.delta(key("nbserve_worker_restarts_total"), i) for i in range(len(t))]
    ax.step(t, restarts, where="post", label=f"restarts ({series.window:g} s)", color=ORANGE, lw=1.4)
    kinds = sorted({dict(k[1]).get("kind") for k in series.values[-1] if k[0] == "nbserve_errors_total"})
    for kind, color in zip(kinds, [RED, PURPLE, YELLOW]):
        keys = [k for k in series.values[-1] if k[0] == "nbserve_errors_total" and dict(k[1]).get("kind") == kind]
        errors = [sum(series.delta(k, i) for k in keys) for i in range(len(t))]
        ax.step(t, errors, where="post", label=f"errors {kind} ({series.window:g} s)", color=color, lw=1.0, ls="--")
    ax.set_ylim(-0.1, max(2, workers + 1))

    # 9. Resident memory
    ax = axes[8]
    for process, color in (("daemon", GREEN), ("workers", YELLOW)):
        line(ax, [v / 2**20 for v in series.gauge(key("nbserve_resident_memory_bytes", process=process))],
             process, color)
    line(ax, [v / 2**20 for v in series.gauge(key("nbserve_shared_memory_bytes"))],
         "shared batch memory (reserved)", BLUE, ls="--")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("MiB")

    for n, (ax, title) in enumerate(zip(axes, titles)):
        ax.set_title(title, loc="left", fontweight="bold")
        ax.grid(True, lw=0.5)
        for p, phase in enumerate(phases):
            ax.axvspan(phase["start"], phase["end"], color=PHASE_COLORS[p % len(PHASE_COLORS)], alpha=0.10, lw=0)
            if p:
                ax.axvline(phase["start"], color=TEXT, lw=0.6, ls=":", alpha=0.6)
        ax.legend(loc="lower left" if n == 0 else "best", framealpha=0.8)
        if n >= 6:
            ax.set_xlabel("seconds since start")
    # Phase names across the middle of the panels whose curves keep away from it.
    for ax, height in ((axes[0], 0.55), (axes[1], 0.3), (axes[6], 0.3)):
        for phase in phases:
            ax.annotate(phase["label"], xy=((phase["start"] + phase["end"]) / 2, height), xycoords=("data", "axes fraction"),
                        ha="center", va="center", fontsize=8, color=TEXT,
                        bbox=dict(boxstyle="round,pad=0.3", fc=BG, ec=GRID, alpha=0.85))
    axes[0].set_xlim(0, t[-1])
    transport = phases[0]["client"].get("transport", "?")
    fig.suptitle(f"nb-serve: is training waiting for data?  (demo dataset, {workers} decode worker"
                 f"{'s' if workers != 1 else ''}, {transport} transport; Prometheus scraped every {series_interval(series):.1f} s, "
                 f"rates over {series.window:g} s)", color=TEXT, fontsize=12, fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, dpi=dpi, facecolor=BG)
    plt.close(fig)


def series_interval(series: Series) -> float:
    gaps = [b - a for a, b in zip(series.t, series.t[1:])]
    return sorted(gaps)[len(gaps) // 2] if gaps else math.nan


def dashboard_titles() -> list[str]:
    import json
    with open(os.path.join(ROOT, "config", "grafana-dashboard.json")) as f:
        return [panel["title"] for panel in json.load(f)["panels"]]


# --- main -------------------------------------------------------------------------------------------------

def phase_summary(series: Series, phase: dict) -> dict:
    """Mean stall and frames/s over a phase, from the counters at the scrapes nearest its ends (a second of
    margin on each side, so that the batches in flight at a switch do not count)."""
    a = bisect.bisect_left(series.t, phase["start"] + 1.0)
    b = bisect.bisect_right(series.t, phase["end"] - 1.0) - 1
    if b <= a:
        return {"stall": math.nan, "frames_per_s": math.nan}
    va, vb = series.values[a], series.values[b]
    d = lambda k: vb.get(k, math.nan) - va.get(k, math.nan)  # noqa: E731
    wait = d(key("nbserve_trainer_wait_seconds_sum", **TRAIN))
    busy = d(key("nbserve_trainer_busy_seconds_total", **TRAIN))
    return {"stall": wait / (wait + busy) if wait + busy > 0 else math.nan,
            "frames_per_s": d(key("nbserve_frames_sent_total", **TRAIN)) / (series.t[b] - series.t[a])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=default_binary(),
                        help="the nb-serve executable (default: .build/release/nb-serve if built, else .build/debug/nb-serve)")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "metrics-dashboard.png"),
                        help="where to write the PNG (default: docs/metrics-dashboard.png)")
    parser.add_argument("--seconds", type=float, default=75.0,
                        help="total training time, split into the phases 2:2:1 (default: 75)")
    parser.add_argument("--step", type=float, default=0.03,
                        help="the compute-bound phase's step time in seconds, time.sleep()'d per batch (default: 0.03)")
    parser.add_argument("--workers", type=int, default=1,
                        help="decode worker processes (default: 1, so that decoding bounds the fast phases)")
    parser.add_argument("--prefetch", type=int, default=4, help="serve.prefetch (default: 4)")
    parser.add_argument("--interval", type=float, default=0.5, help="scrape interval in seconds (default: 0.5)")
    parser.add_argument("--window", type=float, default=5.0, help="rate() window in seconds (default: 5)")
    parser.add_argument("--dpi", type=int, default=80, help="PNG resolution; the figure is 16x10 inches (default: 80)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (dataset, config, daemon log)")
    args = parser.parse_args()

    binary = os.path.abspath(args.binary)
    if not os.path.exists(binary):
        sys.exit(f"plot_metrics: {binary} is missing; build it with `swift build` (or `-c release`), or pass --binary")

    # A short temporary path: ipc socket paths must fit in sun_path (about 100 bytes).
    directory = tempfile.mkdtemp(prefix="nbserve-plot-")
    process = None
    control = f"ipc://{directory}/control.sock"
    log_path = os.path.join(directory, "daemon.log")
    try:
        subprocess.run([binary, "demo", "--dir", directory, "--generate-only"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        config = write_config(directory, args.workers, args.prefetch)
        with open(log_path, "w") as log:
            process = subprocess.Popen([binary, "run", "--config", config], stdout=log, stderr=subprocess.STDOUT)
        status = nbserve.ControlClient(control, 10.0).request({"cmd": "status"}, await_start=True, connect_timeout=30.0)
        url = status.get("metrics")
        if not url:
            raise RuntimeError(f"the status reply names no metrics endpoint: {status.get('metrics')!r}")
        print(f"plot_metrics: daemon pid {process.pid}, metrics at {url}", file=sys.stderr)

        unit = args.seconds / 5
        plan = [("data-bound\nstep 0 ms", 0.0, 2 * unit),
                (f"compute-bound\nstep {args.step * 1000:g} ms", args.step, 2 * unit),
                ("data-bound\nstep 0 ms", 0.0, unit)]
        t0 = time.monotonic()
        scraper = Scraper(url, args.interval, t0)
        scraper.start()
        time.sleep(1.0)  # an idle baseline before the first request
        try:
            phases = train(control, plan, t0)
            time.sleep(1.5)  # let the last acks and gauges settle
        finally:
            scraper.halt.set()
            scraper.join()
    except BaseException:
        if os.path.exists(log_path):
            with open(log_path) as f:
                sys.stderr.write("plot_metrics: daemon log (tail):\n" + "".join(f.readlines()[-20:]))
        raise
    finally:
        if process is not None:
            stop_daemon(process, control)
        if args.keep:
            print(f"plot_metrics: kept {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)

    if len(scraper.samples) < 4:
        sys.exit(f"plot_metrics: only {len(scraper.samples)} scrapes ({scraper.failures} failed)")
    series = Series(scraper.samples, args.window)
    for n, phase in enumerate(phases, 1):
        phase["label"] = f"{n}: {phase['name']}"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plot(series, phases, args.out, args.dpi, args.workers, dashboard_titles())

    print(f"{len(scraper.samples)} scrapes ({scraper.failures} failed) over {series.t[-1]:.1f} s; "
          f"daemon exit status {process.returncode}")
    print("| phase | seconds | batches | stall (daemon metrics) | frames/s (daemon metrics) | stall (client) | frames/s (client) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for phase in phases:
        s = phase_summary(series, phase)
        c = phase["client"]
        seconds = phase["end"] - phase["start"]
        client_stall = c.get("stall")
        print(f"| {phase['label'].replace(chr(10), ', ')} | {seconds:.1f} | {phase['batches']} | {s['stall']:.1%} | {s['frames_per_s']:.0f} | "
              f"{'–' if client_stall is None else f'{client_stall:.1%}'} | {c.get('frames', 0) / seconds:.0f} |")
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
