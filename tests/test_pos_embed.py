import numpy as np
import torch
import torch.nn.functional as F

from mae_face_jax import pos_embed as pe


def test_sincos_table_layout():
  table = pe.get_2d_sincos_pos_embed(16, 3, cls_token=True)
  assert table.shape == (10, 16) and table.dtype == np.float32
  np.testing.assert_array_equal(table[0], 0)
  grid = table[1:].reshape(3, 3, 16)  # (row, col, channel)
  # First half of the channels encodes the column index, second half the row index.
  np.testing.assert_array_equal(grid[0, :, :8], grid[2, :, :8])
  np.testing.assert_array_equal(grid[:, 0, 8:], grid[:, 2, 8:])
  # Channel 0 is sin(col * 1), channel 4 cos(col * 1) for D/2 = 8 channels per axis.
  np.testing.assert_allclose(grid[0, :, 0], np.sin(np.arange(3)), rtol=1e-6)
  np.testing.assert_allclose(grid[0, :, 4], np.cos(np.arange(3)), rtol=1e-6)
  np.testing.assert_allclose(grid[:, 0, 9], np.sin(np.arange(3) / 10000 ** (1 / 4)), rtol=1e-6)


def test_resize_matches_torch_bicubic():
  rng = np.random.default_rng(0)
  table = rng.standard_normal((1, 1 + 7 * 7, 600)).astype(np.float32)
  ours = pe.resize_pos_embed(table, (14, 14))
  grid = torch.from_numpy(table[:, 1:]).reshape(1, 7, 7, 600).permute(0, 3, 1, 2)
  ref = F.interpolate(grid, size=(14, 14), mode='bicubic', align_corners=False)
  ref = ref.permute(0, 2, 3, 1).reshape(1, 196, 600).numpy()
  assert ours.shape == (1, 197, 600)
  np.testing.assert_array_equal(ours[:, :1], table[:, :1])
  np.testing.assert_allclose(ours[:, 1:], ref, atol=1e-4)
