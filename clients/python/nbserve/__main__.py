"""python -m nbserve status|pull|bench: a daemon's status for people, a smoke test of one rank's stream, and
the client's throughput as a trainer sees it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import BatchError, DaemonError, DaemonUnavailable, LeaseLimit, Loader, ProtocolError, default_control
from ._curve import load_curve
from ._transport import ControlClient


def _flatten(batch: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in batch.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def _trainer_text(trainer: Any) -> str:
    """What the trainer reported of the epoch (docs/protocol.md section 5), if it reported anything."""
    if not isinstance(trainer, dict) or trainer.get("stall") is None:
        return ""
    return (f"; trainer waited {trainer.get('wait_s', 0):.2f} s, busy {trainer.get('busy_s', 0):.2f} s: "
            f"stall {100 * trainer['stall']:.1f}%")


def status_text(reply: dict[str, Any]) -> str:
    lines = [
        f"nb-serve pid {reply.get('pid')}, up {reply.get('uptime_s', 0):.0f} s, world size {reply.get('world_size')}: "
        f"{reply.get('frames_per_s', 0):.1f} frames/s, {reply.get('bytes_per_s', 0) / 1e6:.1f} MB/s, "
        f"RSS {reply.get('rss_mb', 0):.0f} MiB (daemon + workers), {reply.get('worker_restarts', 0)} worker restarts, "
        f"{reply.get('queued_tasks', 0)} queued tasks",
        f"control {reply.get('control', '')}" + (f", metrics {reply['metrics']}" if reply.get("metrics") else ""),
    ]
    for rank in reply.get("ranks", []):
        wire = rank.get("on_wire") or "nothing"
        lines.append(f"rank {rank.get('rank')} on {rank.get('endpoint')}: on the wire: {wire}; transport "
                     f"{rank.get('transport', 'zmq')}, {rank.get('held_leases', 0)} leases held")
        for stage in ("train", "val"):
            stream = rank.get(stage) or {}
            if stream.get("phase", "idle") == "idle":
                lines.append(f"  {stage}: idle")
                continue
            lines.append(
                f"  {stage} epoch {stream.get('epoch')} (stream {stream.get('stream')}, {stream.get('phase')}): "
                f"produced "
                f"{stream.get('produced')}, sent {stream.get('sent')}, consumed {stream.get('consumed')} of "
                f"{stream.get('batches')} batches; {stream.get('ready')} ready, {stream.get('errors')} errors"
                + _trainer_text(stream.get("trainer")))
    for worker in reply.get("workers", []):
        lines.append(f"worker {worker.get('pid')}: {worker.get('state')}, {worker.get('outstanding')} outstanding, "
                     f"{worker.get('completed')} frames done, RSS {worker.get('rss_mb', 0):.0f} MiB")
    state = reply.get("resume_state")
    if state:
        lines.append(f"resume state: start_epoch_idx {state.get('start_epoch_idx')}, "
                     f"start_sequence_idx {state.get('start_sequence_idx')}")
    for error in reply.get("errors", []):
        lines.append(f"error: {error}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    reply = ControlClient(args.control, args.timeout, args.curve).request({"cmd": "status"})
    print(json.dumps(reply, indent=2, sort_keys=True) if args.json else status_text(reply))
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    get_epoch = (lambda: args.epoch) if args.epoch is not None else None
    loader = Loader(args.control, stage=args.stage, rank=args.rank, world_size=args.world_size,
                    get_epoch=get_epoch, timeout=args.timeout, server_key=args.server_key,
                    client_key=args.client_key, transport=args.transport)
    print(f"pulling {args.batches} batches of {loader.stage} from rank {loader.rank} of {loader.world_size} "
          f"on {loader.endpoint} over {loader.transport} ({len(loader)} batches per epoch)")
    received = frames = nbytes = 0
    started = time.monotonic()
    first = None
    try:
        while received < args.batches:
            epoch_batches = 0
            for batch in loader:
                if first is None:
                    first = time.monotonic() - started
                    print(f"first batch after {first:.3f} s:")
                    for name, value in _flatten(batch):
                        if isinstance(value, np.ndarray):
                            print(f"  {name:28s} {value.dtype.str:4s} {list(value.shape)}")
                        else:
                            print(f"  {name:28s} {type(value).__name__} of {len(value)}")
                header = loader.last_header or {"sequences": []}
                frames += len(header["sequences"])
                nbytes += sum(value.nbytes for _, value in _flatten(batch) if isinstance(value, np.ndarray))
                received += 1
                epoch_batches += 1
                if received >= args.batches:
                    break
            if epoch_batches == 0:
                print("the epoch has no batches for this rank")
                break
    except BatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        loader.close()
    seconds = max(time.monotonic() - started, 1e-9)
    print(f"{received} batches, {frames} frames, {nbytes / 1e6:.1f} MB in {seconds:.2f} s: "
          f"{received / seconds:.1f} batches/s, {frames / seconds:.1f} frames/s, {nbytes / 1e6 / seconds:.1f} MB/s")
    return 0


PAGE = 4096


def _touch(value: np.ndarray) -> int:
    """Reads one byte of every page of `value`, as a trainer's first use of a tensor would fault it in."""
    flat = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
    return int(flat[::PAGE].sum()) if flat.size else 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Pulls `--batches` batches as a trainer does and prints the throughput (one JSON object with --json)."""
    get_epoch = (lambda: args.epoch) if args.epoch is not None else None
    common = dict(stage=args.stage, rank=args.rank, world_size=args.world_size, get_epoch=get_epoch,
                  timeout=args.timeout, server_key=args.server_key, client_key=args.client_key,
                  transport=args.transport)
    started = time.monotonic()
    torch: Any = None
    loader: Loader
    batches: Any
    if args.device == "cuda":
        try:
            import torch
            from .torch import TrainingSampleLoader_v1
        except ImportError as error:
            print(f"error: --device cuda needs PyTorch ({error})", file=sys.stderr)
            return 2
        if not torch.cuda.is_available():
            print("error: --device cuda: torch.cuda.is_available() is False on this machine", file=sys.stderr)
            return 2
        device_loader = TrainingSampleLoader_v1(args.control, device="cuda", **common)
        loader, batches = device_loader.loader, device_loader
    else:
        loader = Loader(args.control, **common)
        batches = loader
    received = frames = nbytes = checksum = 0
    first: float | None = None
    try:
        while received < args.batches:
            epoch_batches = 0
            for batch in batches:
                for _, value in _flatten(batch):
                    if isinstance(value, np.ndarray):
                        checksum += _touch(value)
                        nbytes += value.nbytes
                    elif torch is not None and isinstance(value, torch.Tensor):
                        nbytes += value.numel() * value.element_size()
                if torch is not None:
                    torch.cuda.current_stream().synchronize()  # the batch is in GPU memory
                if first is None:
                    first = time.monotonic() - started
                frames += len((loader.last_header or {"sequences": []})["sequences"])
                received += 1
                epoch_batches += 1
                del batch
                if received >= args.batches:
                    break
            if epoch_batches == 0:
                break
    except BatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        transport = loader.transport
        loader.close()
    seconds = max(time.monotonic() - started, 1e-9)
    result = {"batches": received, "frames": frames, "bytes": nbytes, "seconds": round(seconds, 6),
              "frames_per_s": frames / seconds, "batches_per_s": received / seconds, "mb_per_s": nbytes / 1e6 / seconds,
              "first_batch_s": first, "transport": transport, "device": args.device, "rank": loader.rank,
              "stage": loader.stage, "checksum": checksum}
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"{received} batches, {frames} frames, {nbytes / 1e6:.1f} MB in {seconds:.2f} s over {transport} to "
              f"{args.device}: {result['frames_per_s']:.1f} frames/s, {result['mb_per_s']:.1f} MB/s, first batch "
              f"after {first if first is not None else float('nan'):.3f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--control", default=default_control(),
                        help="the daemon's control endpoint (default: %(default)s)")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the daemon")
    common.add_argument("--server-key", metavar="FILE",
                        help="the daemon's public CURVE certificate (NAME.key), for CURVE-secured tcp endpoints")
    common.add_argument("--client-key", metavar="FILE",
                        help="this client's secret CURVE certificate (NAME.key_secret), authorised by the daemon")
    status = sub.add_parser("status", parents=[common], help="the daemon's status, for people")
    status.add_argument("--json", action="store_true", help="print the daemon's JSON reply")
    pull = sub.add_parser("pull", parents=[common],
                          help="receive batches like a trainer of one rank; print shapes and throughput "
                               "(not while a trainer uses that rank)")
    pull.add_argument("--batches", type=int, default=100)
    pull.add_argument("--rank", type=int, default=None, help="default: the first rank the daemon serves")
    pull.add_argument("--world-size", type=int, default=None,
                      help="default: the daemon's (pull is not a distributed job)")
    pull.add_argument("--stage", default="train", choices=["train", "val", "validation"])
    pull.add_argument("--epoch", type=int, default=None, help="default: epochs 0, 1, … as a trainer counts")
    for sub_parser in (pull,):
        sub_parser.add_argument("--transport", default="auto", choices=["auto", "shm", "zmq"],
                                help="shared memory or ZeroMQ frames (default: auto, shared memory when possible)")
    bench = sub.add_parser("bench", parents=[common],
                           help="pull batches as a trainer does (touching every page, or copying to the GPU) and "
                                "print the throughput")
    bench.add_argument("--batches", type=int, default=200)
    bench.add_argument("--rank", type=int, default=None, help="default: the first rank the daemon serves")
    bench.add_argument("--world-size", type=int, default=None, help="default: the daemon's")
    bench.add_argument("--stage", default="train", choices=["train", "val", "validation"])
    bench.add_argument("--epoch", type=int, default=None, help="default: epochs 0, 1, … as a trainer counts")
    bench.add_argument("--transport", default="auto", choices=["auto", "shm", "zmq"],
                       help="shared memory or ZeroMQ frames (default: auto, shared memory when possible)")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                       help="cpu: numpy views, one byte per page read; cuda: torch tensors copied to the GPU")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        args.curve = load_curve(args.server_key, args.client_key)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command in ("pull", "bench") and (args.world_size is None or args.rank is None):
        try:
            reply = ControlClient(args.control, args.timeout, args.curve).request({"cmd": "status"})
        except (TimeoutError, DaemonError, DaemonUnavailable, PermissionError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        if args.world_size is None:
            args.world_size = reply["world_size"]
        if args.rank is None:
            args.rank = reply["ranks"][0]["rank"] if reply.get("ranks") else 0
    try:
        return {"status": cmd_status, "pull": cmd_pull, "bench": cmd_bench}[args.command](args)
    except (TimeoutError, DaemonError, DaemonUnavailable, ProtocolError, PermissionError, LeaseLimit,
            ConnectionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
