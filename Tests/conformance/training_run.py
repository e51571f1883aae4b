"""One training run of a tiny denoiser, fed by noisebase's own loaders or by nbserve's (run by test_training.py).

    python3 training_run.py --loader noisebase|nbserve --framework torch|lightning --config CFG --out DIR
                            [--control EP] [--epochs N] [--checkpoint-every K] [--resume CKPT] [--pause-at-step S]

The model (two 3x3 convolutions, seeded) reads only keys that nb-serve reproduces byte for byte (`normal` and
`diffuse`, averaged over samples) and predicts `reference`, so two runs on the same batches must produce the very
same losses and weights, bit for bit. For every training step the run appends one JSON line to DIR/steps.jsonl
(epoch, batch_idx, global step, key order, `file`, a SHA-256 per exactly reproduced tensor, the loss as a float
hex string) and writes `color` and `depth` (computed with exp/log, compared within a tolerance) to
DIR/tensors/EPOCH-BATCH.npz; at the end DIR/weights.pt holds the final state dict.

Lightning runs save a mid-epoch checkpoint every K steps with the loader's own `MidepochCheckpoint` (noisebase's
or nbserve's) into DIR/checkpoints, and resume from --resume. With --pause-at-step S the run prints
"paused at step S" after that step and waits for its standard input to close (so a test can SIGKILL it there).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(REPO_ROOT / "clients" / "python"))
sys.path.insert(0, str(REPO_ROOT / "Tests" / "fixtures"))

# Keys compared within a tolerance (exp/log computed differently); every other tensor must be identical.
TOLERANT_KEYS = ("color", "depth")
SEED = 1234
# How long nbserve's loader waits for a batch: generous, so that a heavily loaded test machine is not a failure.
TIMEOUT_S = 300.0


def flatten(batch: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            flat[prefix + key] = value.numpy()
    return flat


class Recorder:
    """Appends what a step saw and computed to DIR/steps.jsonl (flushed at once, so a killed run keeps it)."""

    def __init__(self, out: Path):
        self.out = out
        (out / "tensors").mkdir(parents=True, exist_ok=True)
        self.steps = open(out / "steps.jsonl", "a", buffering=1)

    def record(self, epoch: int, batch_idx: int, step: int, batch: dict, loss: torch.Tensor):
        flat = flatten(batch)
        hashes = {}
        for name, value in flat.items():
            if name.rsplit(".", 1)[-1] in TOLERANT_KEYS:
                continue
            digest = hashlib.sha256(f"{value.dtype.str}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
            hashes[name] = digest.hexdigest()
        np.savez(self.out / "tensors" / f"{epoch}-{batch_idx}.npz",
                 **{name: flat[name] for name in flat if name.rsplit(".", 1)[-1] in TOLERANT_KEYS})
        line = {"epoch": epoch, "batch_idx": batch_idx, "step": step, "keys": list(batch),
                "prev_camera_keys": list(batch["prev_camera"]), "file": batch.get("file"),
                "hashes": hashes, "loss": float(loss.detach()).hex()}
        self.steps.write(json.dumps(line) + "\n")


class TinyDenoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(SEED)
        self.first = torch.nn.Conv2d(6, 8, 3, padding=1)
        self.second = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, batch: dict) -> torch.Tensor:
        features = torch.cat([batch["normal"].mean(-1), batch["diffuse"].mean(-1)], dim=1)
        return self.second(torch.relu(self.first(features)))

    def loss(self, batch: dict) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self(batch), batch["reference"])


def optimizer(parameters):
    return torch.optim.SGD(parameters, lr=0.05, momentum=0.9)


def loader_config(config: dict) -> dict:
    """What a noisebase user passes the loader: the dataset config, without nb-serve's own section (the stage is
    given separately)."""
    config = copy.deepcopy(config)
    config.pop("serve", None)
    config.pop("stage", None)
    return config


def train_torch(args, config: dict, recorder: Recorder) -> torch.nn.Module:
    epoch = 0
    get_epoch = lambda: epoch  # noqa: E731  (the loop's epoch, as a noisebase trainer passes it)
    if args.loader == "noisebase":
        import noisebase_oracle
        loader = noisebase_oracle.import_noisebase().TrainingSampleLoader_v1(
            stage="train", get_epoch=get_epoch, **loader_config(config))
    else:
        from nbserve.torch import TrainingSampleLoader_v1
        loader = TrainingSampleLoader_v1(args.control, stage="train", get_epoch=get_epoch, pin_memory=False,
                                         timeout=TIMEOUT_S, **loader_config(config))
    model = TinyDenoiser()
    optim = optimizer(model.parameters())
    step = 0
    for epoch in range(args.epochs):
        for batch_idx, batch in enumerate(loader):
            optim.zero_grad()
            loss = model.loss(batch)
            loss.backward()
            optim.step()
            recorder.record(epoch, batch_idx, step, batch, loss)
            step += 1
    return model


def train_lightning(args, config: dict, recorder: Recorder) -> torch.nn.Module:
    import lightning as L

    if args.loader == "noisebase":
        import noisebase_oracle
        noisebase_oracle.import_noisebase()
        from noisebase.lightning import MidepochCheckpoint
        from noisebase.loaders.lightning import TrainingSampleLoader_v1
        data = TrainingSampleLoader_v1(**loader_config(config))
    else:
        from nbserve.lightning import MidepochCheckpoint, TrainingSampleLoader_v1
        data = TrainingSampleLoader_v1(args.control, pin_memory=False, timeout=TIMEOUT_S, **loader_config(config))

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = TinyDenoiser()

        def training_step(self, batch, batch_idx):
            loss = self.model.loss(batch)
            recorder.record(self.current_epoch, batch_idx, self.global_step, batch, loss)
            return loss

        def configure_optimizers(self):
            return optimizer(self.parameters())

    class Pause(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == args.pause_at_step:
                print(f"paused at step {trainer.global_step}", flush=True)
                sys.stdin.read()

    callbacks = [Pause()]
    if args.checkpoint_every:
        callbacks.append(MidepochCheckpoint(dirpath=args.out / "checkpoints", every_n_train_steps=args.checkpoint_every,
                                            save_top_k=-1, filename="{epoch}-{step}"))
    # Only the loader's MidepochCheckpoint saves (Lightning's default ModelCheckpoint would write into the
    # working directory).
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, deterministic=True,
                        default_root_dir=args.out, enable_checkpointing=bool(args.checkpoint_every),
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=callbacks)
    module = Module()
    trainer.fit(module, datamodule=data, ckpt_path=str(args.resume) if args.resume else None)
    return module.model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loader", choices=["noisebase", "nbserve"], required=True)
    parser.add_argument("--framework", choices=["torch", "lightning"], required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--control")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--resume", type=Path)
    parser.add_argument("--pause-at-step", type=int, default=-1)
    args = parser.parse_args()

    # One thread and deterministic kernels: the same batches give the same bits in every process.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    with open(args.config) as fh:
        config = yaml.safe_load(fh)
    args.out.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(args.out)
    train = train_torch if args.framework == "torch" else train_lightning
    model = train(args, config, recorder)
    torch.save(model.state_dict(), args.out / "weights.pt")
    print("finished", flush=True)


if __name__ == "__main__":
    main()
