import numpy as np
import pytest

from mae_face_jax.smoothing import sliding_window_smooth


def onehot(classes):
  return np.eye(8, dtype=np.float32)[classes]


def test_constant_stays_constant():
  probs = np.tile(np.linspace(0.05, 0.2, 8, dtype=np.float32), (30, 1))
  out = sliding_window_smooth(probs, np.zeros(30), np.arange(30), 9)
  np.testing.assert_allclose(out, probs, rtol=1e-6)


@pytest.mark.parametrize('window', [3, 5, 9])
def test_single_frame_blip_is_removed(window):
  labels = np.full(40, 4)
  labels[20] = 1
  out = sliding_window_smooth(onehot(labels), np.zeros(40), np.arange(40), window)
  assert (out.argmax(-1) == 4).all()


def test_window_one_is_identity():
  probs = np.random.default_rng(0).random((12, 8)).astype(np.float32)
  np.testing.assert_allclose(sliding_window_smooth(probs, np.zeros(12), np.arange(12), 1), probs)


def test_nothing_crosses_a_video_boundary_and_order_is_kept():
  # Video a is all class 0, video b all class 3; rows interleaved and shuffled.
  videos = np.array(['a'] * 10 + ['b'] * 10)
  frames = np.concatenate([np.arange(1, 11), np.arange(1, 11)])
  probs = onehot(np.array([0] * 10 + [3] * 10))
  perm = np.random.default_rng(1).permutation(20)
  out = sliding_window_smooth(probs[perm], videos[perm], frames[perm], 7)
  np.testing.assert_array_equal(out, probs[perm])


def test_edges_and_gaps_average_only_existing_frames():
  frames = np.array([1, 2, 3, 10, 11])
  probs = onehot(np.array([0, 1, 1, 2, 2]))
  out = sliding_window_smooth(probs, np.zeros(5), frames, 3)
  np.testing.assert_allclose(out[0], (probs[0] + probs[1]) / 2)       # left edge: 2 frames
  np.testing.assert_allclose(out[2], (probs[1] + probs[2]) / 2)       # frame 4 is missing
  np.testing.assert_allclose(out[3], (probs[3] + probs[4]) / 2)       # frame 9 is missing
