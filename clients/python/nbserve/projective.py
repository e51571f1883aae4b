"""noisebase's ``backproject_pixel_centers`` (noisebase/torch/projective.py) over numpy arrays."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def backproject_pixel_centers_np(motion: ArrayLike, crop_offset: ArrayLike, prev_crop_offset: ArrayLike,
                                 as_grid: bool = False) -> np.ndarray:
    """Where each pixel center of the current crop was in the previous frame's crop.

    Args (as noisebase's torch function, with numpy arrays):
        motion: per-pixel screen-space motion in pixels, shape (N, 2, H, W) (row, column), the batch's
            ``motion`` (for per-sample motion pick or average a sample first)
        crop_offset: the batch's ``crop_offset``, shape (N, 2) (or (2,))
        prev_crop_offset: ``prev_camera['crop_offset']``, same shape
        as_grid: return grid_sample coordinates (align_corners=False): (N, H, W, 2), xy in (-1, 1)

    Returns: (N, 2, H, W) ij pixel positions in the previous crop, or the grid; in motion's dtype. The
    arithmetic is noisebase's, in the same order and precision (offsets are converted to motion's dtype, as
    torch's type promotion does).
    """
    motion = np.asarray(motion)
    dtype = motion.dtype
    height, width = motion.shape[2], motion.shape[3]
    pixel_grid = np.stack(np.meshgrid(np.arange(0, height, dtype=dtype), np.arange(0, width, dtype=dtype),
                                      indexing="ij"))
    prev = np.asarray(prev_crop_offset).astype(dtype)[..., None, None]
    crop = np.asarray(crop_offset).astype(dtype)[..., None, None]
    pixel_pos = pixel_grid + motion - prev + crop
    if as_grid:
        pixel_pos_xy = np.transpose(np.flip(pixel_pos, 1), (0, 2, 3, 1)) + dtype.type(0.5)
        image_pos = pixel_pos_xy / np.array([width, height], dtype=dtype)
        grid: np.ndarray = image_pos * dtype.type(2) - dtype.type(1)
        return grid
    positions: np.ndarray = pixel_pos
    return positions
