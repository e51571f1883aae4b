#!/usr/bin/env python3
"""A tiny recurrent denoiser trained for a few steps with DistributedDataParallel (2 processes, gloo, CPU),
its data served by nb-serve: the whole path a real trainer takes, small enough for a laptop.

    nb-serve demo                              # once: generates demo-data/ (config/demo.yaml)
    pip install ./clients/python torch pyyaml
    python examples/train_ddp.py               # starts nb-serve for 2 ranks, trains, stops it

What it shows:
- `nbserve.torch.TrainingSampleLoader_v1` in place of noisebase's loader: each DDP process takes its rank and
  the world size from torch.distributed; the daemon shards the sequences (no DistributedSampler);
- noisebase's temporal idiom: the previous frame's output, reprojected with `backproject_pixel_centers` and
  `grid_sample`, feeds the next frame; it is reset at frame 0 of each sequence group;
- noisebase's checkpoint protocol: `batch_sampler.checkpoint(epoch, batch_idx)` at sequence boundaries, the
  loader's `state_dict()` saved with the model (atomically: temporary file, fsync, rename).

Options: --config (default config/demo.yaml; its serve: section is replaced for 2 ranks over ipc sockets in
--runtime-dir), --nb-serve (the binary; default: $NB_SERVE, else `nb-serve` on PATH, else this checkout's
release build .build/release/nb-serve, else its debug build), --steps, --checkpoint.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml

import nbserve
from nbserve.torch import TrainingSampleLoader_v1, backproject_pixel_centers

REPO = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2


class Denoiser(torch.nn.Module):
    """Per-pixel features (sample mean of color, normal and depth) plus the reprojected previous output."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3 + 3 + 1 + 3, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 3, 3, padding=1))

    def forward(self, batch, previous):
        color = torch.log1p(batch["color"].mean(-1))            # N3HW, from N3HWS
        normal = batch["normal"].mean(-1)
        depth = batch["depth"].mean(-1)
        return torch.expm1(color + self.net(torch.cat([color, normal, depth, previous], 1)))


def reproject(previous, batch):
    """The previous frame's output moved to this frame's pixels (noisebase's backprojection)."""
    if int(batch["frame_index"]) == 0:
        return torch.zeros_like(batch["color"][..., 0])
    grid = backproject_pixel_centers(batch["motion"].mean(-1), batch["crop_offset"],
                                     batch["prev_camera"]["crop_offset"], as_grid=True)
    return F.grid_sample(previous, grid, mode="bilinear", padding_mode="border", align_corners=False)


def train(rank: int, control: str, steps: int, checkpoint_path: str | None, init_file: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    torch.set_num_threads(1)  # two processes on a small CPU
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(Denoiser())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = TrainingSampleLoader_v1(control, pin_memory=False)  # rank and world size from torch.distributed
    step = first_batch = 0
    if checkpoint_path and os.path.exists(checkpoint_path):
        state = torch.load(checkpoint_path, weights_only=False)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])  # the next epoch request resumes there
        step, first_batch = state["step"], state["batch_idx"]
        print(f"rank {rank}: resumed from {checkpoint_path} at {state['loader']}", flush=True)

    epoch = loader.batch_sampler.epoch_idx
    while step < steps:
        previous = None
        # Like Lightning, count batches from the start of the epoch, also in a resumed one (its stream starts
        # at the saved batch): checkpoint(epoch, batch_idx) computes the position from that index.
        for batch_idx, batch in enumerate(loader, start=first_batch):
            if checkpoint_path and rank == 0 and step > 0 and loader.batch_sampler.checkpoint(epoch, batch_idx):
                save(checkpoint_path, {"model": model.module.state_dict(), "optimizer": optimizer.state_dict(),
                                       "loader": loader.state_dict(), "step": step, "batch_idx": batch_idx})
                loader.batch_sampler.cached_state = {}
            previous = reproject(previous.detach() if previous is not None else None, batch)
            output = model(batch, previous)
            loss = F.l1_loss(output, batch["reference"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            previous = output
            print(f"rank {rank} step {step} epoch {epoch} batch {batch_idx} frame {int(batch['frame_index'])} "
                  f"loss {loss.item():.4f}", flush=True)
            step += 1
            if step >= steps:
                break
        epoch, first_batch = epoch + 1, 0

    # DDP keeps the replicas identical: check it.
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        same = all(torch.equal(gathered[0], other) for other in gathered[1:])
        print("parameters agree across ranks" if same else "PARAMETERS DIFFER ACROSS RANKS", flush=True)
    loader.close()
    dist.destroy_process_group()


def save(path: str, state: dict):
    temporary = path + ".tmp"
    torch.save(state, temporary)
    with open(temporary, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(temporary, path)
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    print(f"rank 0: checkpoint before step {state['step']} at {state['loader']} -> {path}", flush=True)


def find_nb_serve() -> str:
    """$NB_SERVE, else nb-serve on PATH, else this checkout's release build, else its debug build."""
    if os.environ.get("NB_SERVE"):
        return os.environ["NB_SERVE"]
    on_path = shutil.which("nb-serve")
    if on_path:
        return on_path
    for build in ("release", "debug"):
        candidate = REPO / ".build" / build / "nb-serve"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    sys.exit("nb-serve was not found on PATH nor in this checkout's .build/release or .build/debug: build it with "
             "`swift build -c release --product nb-serve` (in the repository root), install it on PATH (see the "
             "README, \"Running as a service\"), or pass --nb-serve PATH (or set NB_SERVE)")


def start_daemon(binary: str, config_path: Path, runtime: Path) -> tuple[subprocess.Popen, str]:
    """nb-serve for 2 ranks: the given config with its serve: section replaced (ipc sockets in `runtime`)."""
    config = yaml.safe_load(config_path.read_text())
    data_path = Path(config.get("data_path", "."))
    if not data_path.is_absolute():  # nb-serve takes it from the config's directory
        config["data_path"] = str((config_path.parent / data_path).resolve())
    first = Path(config["data_path"]) / config["src"]["files"].format(index=0)
    if not first.exists():
        sys.exit(f"{first} is missing: run `nb-serve demo` (or scripts/demo.sh) first to generate the demo dataset")
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        sys.exit(f"{binary} is not an executable nb-serve: build it with `swift build -c release --product nb-serve` "
                 f"or pass --nb-serve PATH")
    control = f"ipc://{runtime}/control.sock"
    config["serve"] = {"world_size": WORLD_SIZE, "endpoint": f"ipc://{runtime}/rank{{rank}}.sock",
                       "control": control, "prefetch": 4}
    runtime.mkdir(parents=True, exist_ok=True)
    derived = runtime / "nb-serve.yaml"
    derived.write_text(yaml.safe_dump(config, sort_keys=False))
    daemon = subprocess.Popen([binary, "run", "--config", str(derived)])
    client = nbserve.ControlClient(control, timeout=5)
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                client.request({"cmd": "status"}, connect_timeout=0.2, await_start=True)
                break
            except nbserve.DaemonUnavailable:
                # Not listening yet; a daemon that exited (a bad config) says why on its stderr.
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("nb-serve did not start (its messages are above)") from None
    except BaseException:
        daemon.terminate()
        daemon.wait(30)
        raise
    finally:
        client.close()
    return daemon, control


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "config" / "demo.yaml"))
    parser.add_argument("--nb-serve", default=None, help="the nb-serve binary (default: see above)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--checkpoint", default=None, help="save/resume here (rank 0 saves at sequence boundaries)")
    parser.add_argument("--runtime-dir", default=None, help="where the daemon's sockets go (default: a temp dir)")
    args = parser.parse_args()
    runtime = Path(args.runtime_dir or tempfile.mkdtemp(prefix="nb-serve-ddp-"))
    daemon, control = start_daemon(args.nb_serve or find_nb_serve(), Path(args.config), runtime)
    try:
        init_file = str(runtime / "dist-init")
        if os.path.exists(init_file):
            os.remove(init_file)
        mp.spawn(train, args=(control, args.steps, args.checkpoint, init_file), nprocs=WORLD_SIZE, join=True)
    finally:
        daemon.terminate()
        daemon.wait(30)


if __name__ == "__main__":
    main()
