"""The trainer's noisebase config against the daemon's: which keys are checked, which are read, which ignored.

A trainer that switches from noisebase passes its loader config as it is (``Loader(control, **cfg)``). The
daemon's config decides what is served; every key the trainer passes that decides the batches must say the
same as the daemon's, or the trainer would save checkpoint positions (and expect tensors) of another stream.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

# Keys that decide the batches, as the daemon's `status` reports them under "config" (batch_size for the
# whole world, as noisebase's config has it).
SERVED_KEYS = ("batch_size", "seed", "buffers", "samples", "val_split", "shuffle", "drop_last", "flip_rotate")
SOURCE_KEYS = ("sequences", "files", "frames_per_sequence", "crop", "samples", "rendering_height",
               "rendering_width")

# Keys noisebase's own dataset configs carry (format/training_sample_v1.yaml, format/test_sample_v1.yaml and the
# dataset files) that do not decide the batches, plus nb-serve's `serve:` section and DataLoader arguments
# such configs commonly carry. They are accepted silently; any other key gets a warning (noisebase's loader
# ignores unknown keys, so a trainer's own Hydra keys must not break the switch).
QUIET_KEYS = frozenset({
    "src", "data_path", "data_remote", "name", "type", "framework", "sampler_state", "defaults", "_target_",
    "loaders", "num_workers", "stage", "reference", "output", "metrics", "warmup", "sequences",
    "persistent_workers", "prefetch_factor", "pin_memory", "serve",
}) | frozenset(SERVED_KEYS)


class ConfigMismatch(ValueError):
    """The trainer's noisebase config says something else than the daemon serves (names each key and both
    values)."""


def _same(ours: Any, theirs: Any, key: str) -> bool:
    if key == "buffers":
        # noisebase computes the buffers in a fixed order whatever the list's order: only the set matters.
        return (isinstance(ours, Sequence) and not isinstance(ours, str)
                and sorted(map(str, ours)) == sorted(map(str, theirs)))
    if isinstance(theirs, bool):
        return isinstance(ours, (bool, int)) and ours in (0, 1) and bool(ours) == theirs
    if isinstance(theirs, (int, float)) and not isinstance(theirs, bool):
        return isinstance(ours, (int, float)) and not isinstance(ours, bool) and float(ours) == float(theirs)
    return isinstance(ours, str) and ours == theirs


def _show(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return repr(list(value))
    return repr(value)


def mismatches(config: Mapping[str, Any], served: Mapping[str, Any]) -> list[str]:
    """One sentence per key of `config` that decides the batches and differs from `served` (the daemon's
    `status` "config")."""
    problems = []
    for key in SERVED_KEYS:
        if key in config and key in served and not _same(config[key], served[key], key):
            problems.append(f"{key}: the trainer's is {_show(config[key])}, the daemon serves {_show(served[key])}")
    source = config.get("src")
    if source is not None:
        if not isinstance(source, Mapping):
            problems.append(f"src: the trainer's is {source!r}, not a mapping of noisebase's src keys")
        else:
            theirs = served.get("src", {})
            for key in SOURCE_KEYS:
                if key in source and key in theirs and not _same(source[key], theirs[key], key):
                    problems.append(f"src.{key}: the trainer's is {_show(source[key])}, the daemon serves "
                                    f"{_show(theirs[key])}")
    return problems


def check(config: Mapping[str, Any], served: Mapping[str, Any] | None, control: str) -> None:
    """Raises ConfigMismatch when `config` disagrees with the daemon's; warns about keys neither reads."""
    unknown = sorted(key for key in config if key not in QUIET_KEYS)
    if unknown:
        warnings.warn(f"nbserve: ignoring config keys {unknown}: neither noisebase's loader nor nb-serve reads them",
                      stacklevel=3)
    if served is None:
        if any(key in config for key in SERVED_KEYS + ("src",)):
            raise ConfigMismatch(f"nb-serve at {control} does not report its config, so the trainer's cannot be "
                                 f"checked against it: it is older than this client; upgrade nb-serve")
        return
    problems = mismatches(config, served)
    if problems:
        raise ConfigMismatch(
            f"the trainer's noisebase config does not match what nb-serve at {control} serves:\n  "
            + "\n  ".join(problems)
            + "\nthe daemon's config decides what is served: make the trainer's config the daemon's (or leave these "
              "keys out of the loader's arguments), or restart nb-serve with the trainer's config")
