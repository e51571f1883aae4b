"""nb-serve's native demo-dataset writer (`nb-serve demo`), checked against the reference readers.

The dataset is written by the binary alone (no Python, no source tree), then read back with zarr-python
(every array: shape, dtype, chunks, compressor, values), with noisebase's own training loader (whose batches
must equal `nb-serve dump`'s, as for the Python-written fixtures in test_loader.py), and byte-compared
across two runs with the same seed. Finally `nb-serve demo` runs end to end from a directory outside the
checkout.

Environment: NB_SERVE, the binary under test (default .build/debug/nb-serve).
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import yaml
import zarr

import loader_support as ls

REPO_ROOT = ls.REPO_ROOT
DEMO_CONFIG = REPO_ROOT / "config" / "demo.yaml"

# Small geometry for speed; 6 samples (not a multiple of 4) exercises a padded last sample chunk.
SMALL_SRC = {"sequences": 4, "frames": 3, "crop": 24, "samples": 6, "rendering_height": 60, "rendering_width": 96}
SMALL_LOADER = {"samples": 5, "batch_size": 2, "val_split": 0.25, "num_workers": 1}

PER_SAMPLE = {"color": (4, np.uint8), "position": (3, np.float32), "motion": (3, np.float32),
              "normal": (3, np.float16), "diffuse": (3, np.float16)}
PER_SEQUENCE = {"exposure": ((2,), np.float32), "camera_position": ((3,), np.float32),
                "camera_target": ((3,), np.float32), "camera_up": ((3,), np.float32),
                "view_proj_mat": ((4, 4), np.float32), "proj_mat": ((4, 4), np.float32),
                "crop_offset": ((2,), np.int32)}


def small_config(directory: Path, data_path: Path) -> Path:
    with open(DEMO_CONFIG) as fh:
        config = yaml.safe_load(fh)
    config["data_path"] = str(data_path)
    config["src"].update({"sequences": SMALL_SRC["sequences"], "frames_per_sequence": SMALL_SRC["frames"],
                          "crop": SMALL_SRC["crop"], "samples": SMALL_SRC["samples"],
                          "rendering_height": SMALL_SRC["rendering_height"],
                          "rendering_width": SMALL_SRC["rendering_width"]})
    config.update(SMALL_LOADER)
    config["serve"] = {"world_size": 1, "endpoint": f"ipc://{directory}/rank{{rank}}.sock", "prefetch": 2}
    return ls.write_config(directory / "demo-small.yaml", config)


def generate(binary, config: Path, *extra) -> ls.Result:
    return ls.run_ok(binary, "demo", "--config", config, "--generate-only", *extra, cwd="/")


@pytest.fixture(scope="module")
def nb_binary():
    return ls.require_binary()


@pytest.fixture(scope="module")
def small(nb_binary, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-native")
    config_path = small_config(root, root / "data")
    generate(nb_binary, config_path)
    with open(config_path) as fh:
        config = yaml.safe_load(fh)
    return config_path, config


def sequence_paths(config: dict) -> list[Path]:
    return [Path(config["data_path"]) / config["src"]["files"].format(index=i)
            for i in range(config["src"]["sequences"])]


def open_group(path: Path):
    store = zarr.ZipStore(str(path), mode="r")
    return store, zarr.open_group(store=store, mode="r")


def test_zarr_python_reads_every_array(small):
    _, config = small
    src = config["src"]
    frames, crop, samples = src["frames_per_sequence"], src["crop"], src["samples"]
    expected_compressor = numcodecs.Blosc(cname="lz4hc", clevel=9, shuffle=numcodecs.Blosc.SHUFFLE)
    sky_samples = 0
    for path in sequence_paths(config):
        store, group = open_group(path)
        try:
            names = sorted(name for name, _ in group.arrays())
            assert names == sorted([*PER_SAMPLE, "reference", *PER_SEQUENCE]), path
            for name, (channels, dtype) in PER_SAMPLE.items():
                array = group[name]
                assert array.shape == (frames, channels, crop, crop, samples), name
                assert array.dtype == dtype and array.chunks == (1, channels, crop, crop, 4), name
            reference = group["reference"]
            assert reference.shape == (frames, 3, crop, crop) and reference.dtype == np.float32
            assert reference.chunks == (1, 3, crop, crop)
            for name, (tail, dtype) in PER_SEQUENCE.items():
                array = group[name]
                assert array.shape == (frames, *tail) and array.dtype == dtype and array.chunks == array.shape, name
            for name, array in group.arrays():
                assert array.compressor == expected_compressor, name
                assert array.fill_value == 0 and array.filters is None and array.order == "C", name
                values = array[...]
                assert np.all(np.isfinite(values.astype(np.float64))), f"{path}: {name} has non-finite values"
            normal, diffuse, position = group["normal"][...], group["diffuse"][...], group["position"][...]
            motion, cameras = group["motion"][...], group["camera_position"][...]
            sky = np.all(normal == 0, axis=1)  # (F, H, W, S)
            sky_samples += int(sky.sum())
            assert np.all(diffuse.transpose(0, 2, 3, 4, 1)[sky] == 0)
            # Sky samples lie SKY_DISTANCE (1e4) from the camera and move with it; surfaces are static.
            distance = np.linalg.norm(position - cameras[:, :, None, None, None], axis=1)
            assert np.allclose(distance[sky], 1e4, rtol=1e-4)
            surface_normal = np.linalg.norm(normal.astype(np.float32), axis=1)[~sky]
            assert np.allclose(surface_normal, 1, atol=2e-3)
            assert not np.any(motion.transpose(0, 2, 3, 4, 1)[~sky])
            for f in range(1, frames):
                assert np.allclose(motion[f].transpose(1, 2, 3, 0)[sky[f]], cameras[f - 1] - cameras[f], atol=1e-4)
            # The last sample chunk holds 2 of its 4 samples; zarr pads it with the fill value.
            offsets = group["crop_offset"][...]
            height, width = src["rendering_height"], src["rendering_width"]
            assert np.all(offsets >= 0) and np.all(offsets[:, 0] <= height - crop)
            assert np.all(offsets[:, 1] <= width - crop)
        finally:
            store.close()
    assert sky_samples > 0, "no sequence shows any sky"


def test_zip_entries_are_stored_with_fixed_times(small):
    _, config = small
    for path in sequence_paths(config):
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None
            infos = archive.infolist()
            assert infos[0].filename == ".zgroup" and archive.read(".zgroup") == b'{\n    "zarr_format": 2\n}'
            for info in infos:
                assert info.compress_type == zipfile.ZIP_STORED and info.date_time == (1980, 1, 1, 0, 0, 0)
                assert info.external_attr >> 16 == 0o644
        assert oct(path.stat().st_mode & 0o777) == oct(0o644 & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_metadata_is_what_zarr_python_writes(small, tmp_path):
    """Every .zarray (and .zgroup) is byte-identical to what zarr-python 2.x writes for the same array."""
    _, config = small
    path = sequence_paths(config)[0]
    store, group = open_group(path)
    memory = zarr.MemoryStore()
    try:
        out = zarr.group(store=memory)
        for name, array in group.arrays():
            out.create_dataset(name, shape=array.shape, chunks=array.chunks, dtype=array.dtype,
                               compressor=numcodecs.Blosc(cname="lz4hc", clevel=9, shuffle=numcodecs.Blosc.SHUFFLE))
        with zipfile.ZipFile(path) as archive:
            for name, _ in group.arrays():
                assert archive.read(f"{name}/.zarray") == memory[f"{name}/.zarray"], name
            assert archive.read(".zgroup") == memory[".zgroup"]
    finally:
        store.close()


def test_view_proj_mat_is_what_apply_camera_computes(small):
    """view_proj_mat is what noisebase's FlipRotate(7).apply_camera computes from the stored camera."""
    ls.oracle.import_noisebase()
    from noisebase.projective import FlipRotate
    _, config = small
    src = config["src"]
    for path in sequence_paths(config):
        store, group = open_group(path)
        try:
            for f in range(src["frames_per_sequence"]):
                flip = FlipRotate(7, src["rendering_height"], src["rendering_width"], src["crop"])
                *_, pv = flip.apply_camera(group["camera_target"][f], group["camera_up"][f],
                                           group["camera_position"][f], group["proj_mat"][f],
                                           group["crop_offset"][f].copy())
                np.testing.assert_allclose(group["view_proj_mat"][f], pv, rtol=1e-5, atol=1e-6)
        finally:
            store.close()


def test_color_decodes_to_the_reference_radiance(small):
    """noisebase's decompress_RGBE of the stored samples averages to about the reference (both estimate the
    same pixel radiance), and the exposure range is that of the samples."""
    from noisebase.compression import decompress_RGBE
    _, config = small
    for path in sequence_paths(config):
        store, group = open_group(path)
        try:
            for f in range(config["src"]["frames_per_sequence"]):
                color = group["color"][f]
                exposure = group["exposure"][f]
                assert exposure[0] < exposure[1]
                radiance = decompress_RGBE(color, exposure)
                reference = group["reference"][f]
                assert abs(radiance.mean() / reference.mean() - 1) < 0.1, (path, f)
                # Exponent bytes span the range: the brightest sample sits at the top.
                assert color[3].max() == 255
        finally:
            store.close()


def test_dump_matches_noisebase(nb_binary, small, tmp_path):
    """nb-serve dump and noisebase's own loader give the same batches from the natively written files."""
    config_path, config = small
    log = ls.ErrorLog()
    problems = []
    for stage, epoch in (("train", 0), ("train", 3), ("val", 1)):
        loader = ls.build_oracle(config, stage=stage)
        plan = ls.oracle_plan(loader, epoch)
        assert plan, f"no {stage} batches"
        for batch in range(len(plan)):
            expected = ls.flatten_batch(ls.oracle_batch(loader, epoch, batch))
            out = tmp_path / f"{stage}-{epoch}-{batch}"
            ls.run_ok(nb_binary, "dump", "--config", config_path, "--batch", batch, "--out", out,
                      *ls.cli_options(stage=stage, epoch=epoch))
            where = f"{stage} epoch {epoch} batch {batch}"
            problems += [f"{where}: {p}" for p in ls.compare_batch(ls.load_dump(out), expected, where, log)]
    assert not problems, "nb-serve dump differs from noisebase:\n" + "\n".join(problems[:16])


def test_same_seed_same_bytes(nb_binary, small, tmp_path):
    config_path, config = small
    again = small_config(tmp_path, tmp_path / "again")
    generate(nb_binary, again)
    other = small_config(tmp_path / "other", tmp_path / "other" / "data")
    generate(nb_binary, other, "--seed", "8")

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    first = [digest(p) for p in sequence_paths(config)]
    with open(again) as fh:
        assert [digest(p) for p in sequence_paths(yaml.safe_load(fh))] == first
    with open(other) as fh:
        assert all(a != b for a, b in zip([digest(p) for p in sequence_paths(yaml.safe_load(fh))], first))


def test_regenerating_replaces_each_file_whole(nb_binary, tmp_path):
    """A rewrite over an existing dataset gives the same bytes again and leaves no temporary file."""
    config_path = small_config(tmp_path, tmp_path / "data")
    generate(nb_binary, config_path)
    first = (tmp_path / "data" / "scene0000.zip").read_bytes()
    (tmp_path / "data" / "scene0001.zip").write_bytes(b"damaged")
    ls.run_ok(nb_binary, "demo", "--config", config_path, "--generate-only", "--regenerate", cwd="/")
    assert (tmp_path / "data" / "scene0000.zip").read_bytes() == first
    with zipfile.ZipFile(tmp_path / "data" / "scene0001.zip") as archive:
        assert archive.testzip() is None
    assert not [p.name for p in (tmp_path / "data").iterdir() if p.name.startswith(".")], "temporary files left"


def test_demo_end_to_end_outside_the_checkout(nb_binary, tmp_path):
    """`nb-serve demo` from an unrelated working directory: it writes the dataset natively (no Python, no
    Tests/ path), serves an epoch over its sockets and stops the daemon cleanly."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    config_path = small_config(tmp_path, tmp_path / "demo-data")
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH",)}
    environment["PATH"] = "/nonexistent"  # no python3 (or anything else) to fall back on
    completed = subprocess.run([str(nb_binary), "demo", "--config", str(config_path)], cwd=work,
                               capture_output=True, text=True, timeout=ls.RUN_TIMEOUT_S, env=environment)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "writing the demo dataset" in output and "epoch 0 complete" in output
    assert "daemon stopped cleanly" in output
    assert len(list((tmp_path / "demo-data").glob("scene*.zip"))) == SMALL_SRC["sequences"]
    assert not list(work.iterdir()), "the demo wrote into its working directory"


def test_built_in_config_matches_config_demo_yaml(nb_binary, tmp_path):
    """Without --config the demo writes its built-in config (the repository's config/demo.yaml, data beside
    it) into --dir and the dataset next to it."""
    with open(DEMO_CONFIG) as fh:
        shipped = yaml.safe_load(fh)
    environment = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    completed = subprocess.run([str(nb_binary), "demo", "--generate-only", "--seed", "3"], cwd="/",
                               capture_output=True, text=True, timeout=ls.RUN_TIMEOUT_S, env=environment)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    written = tmp_path / "xdg" / "nb-serve" / "demo"
    with open(written / "demo.yaml") as fh:
        built_in = yaml.safe_load(fh)
    assert built_in["data_path"] == "."
    shipped_rest = copy.deepcopy(shipped)
    shipped_rest.pop("data_path")
    built_in.pop("data_path")
    assert built_in == shipped_rest
    assert sorted(p.name for p in written.glob("scene*.zip")) == [f"scene{i:04d}.zip" for i in range(8)]
    shutil.rmtree(written)
