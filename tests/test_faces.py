"""Detection, alignment and tracks on videos of a real face (scikit-image's astronaut) pasted at
known scales, rotations (±30°) and places; `predict.align` writing the ABAW layout."""

import csv
import os

import cv2
import numpy as np
import pytest
from skimage import data, transform

from tests import face_videos
from mae_face_jax import faces, media, predict
from mae_face_jax.models import mtcnn

N_FACE, N_EMPTY = 40, 6


@pytest.fixture(scope='module')
def detector():
  return faces.Detector(nets=mtcnn.pretrained())


@pytest.fixture(scope='module')
def one_face_video(tmp_path_factory):
  frames, truth = face_videos.one_face_frames(N_FACE, N_EMPTY)
  path = str(tmp_path_factory.mktemp('video') / 'astronaut.avi')
  face_videos.write_video(path, frames)
  return path, truth


@pytest.fixture(scope='module')
def one_face_results(one_face_video, detector):
  path, _ = one_face_video
  return list(predict.tracked_faces(media.sources(path)[0], detector, predict.Options()))


def test_umeyama_is_the_least_squares_similarity():
  rng = np.random.default_rng(0)
  src = rng.uniform(0, 100, (5, 2))
  dst = src @ (1.7 * np.array([[0.8, -0.6], [0.6, 0.8]])).T + [3, -7] + rng.normal(0, 2, (5, 2))
  reference = transform.SimilarityTransform.from_estimate(src, dst)
  np.testing.assert_allclose(faces.umeyama(src, dst), reference.params[:2], atol=1e-9)


def test_faces_found_with_landmarks_near_the_truth(one_face_video, one_face_results):
  _, truth = one_face_video
  assert [n for n, _, _ in one_face_results] == list(range(1, N_FACE + N_EMPTY + 1))
  found = [fs for _, _, fs in one_face_results]
  hits = sum(len(fs) == 1 for fs in found[:N_FACE])
  assert hits >= 0.95 * N_FACE, f'faces found in {hits} of {N_FACE} frames'
  assert all(not fs for fs in found[N_FACE:]), 'a face reported in a frame without one'
  # Landmark error in units of the true inter-ocular distance (25 to 45 px here). Measured on this
  # video: mean 0.047, max 0.099.
  errors = [np.linalg.norm(fs[0].landmarks - t, axis=1).max() / np.linalg.norm(t[1] - t[0])
            for fs, t in zip(found[:N_FACE], truth) if fs]
  assert np.mean(errors) < 0.06 and np.max(errors) < 0.12, errors


def test_aligned_crops_match_the_template(one_face_video, one_face_results):
  _, truth = one_face_video
  photo = data.astronaut()
  # The untouched photo aligned by its true points: what every aligned crop should look like. This
  # face's points do not fit the template exactly (the least-squares residual is up to 6 px).
  expected, expected_points = faces.align(photo, face_videos.ASTRONAUT_POINTS, 112)
  assert np.abs(expected_points - faces.template(112)).max() < 7
  corr = []
  for (_, frame, fs), t in zip(one_face_results[:N_FACE], truth):
    if not fs:
      continue
    crop, points = faces.align(frame, fs[0].landmarks, 112)
    assert crop.shape == (112, 112, 3)
    np.testing.assert_allclose(points, faces.template(112), atol=7)
    m = faces.umeyama(fs[0].landmarks, faces.template(112))
    true_in_crop = t @ m[:, :2].T + m[:, 2]  # where a perfect alignment puts the true points
    assert np.abs(true_in_crop - expected_points).max() < 3
    # The face's inner part (eyes to mouth) correlates with the reference crop pixel by pixel.
    inner = (slice(40, 100), slice(30, 82))
    a, b = crop[inner].astype(float).mean(-1), expected[inner].astype(float).mean(-1)
    corr.append(np.corrcoef(a.ravel(), b.ravel())[0, 1])
  # Small faces (25 px between the eyes) come out blurred at 112 px: measured mean 0.87, min 0.78.
  assert np.mean(corr) > 0.8 and np.min(corr) > 0.7, corr


def test_two_faces_two_stable_tracks(tmp_path, detector):
  path = str(tmp_path / 'two.avi')
  face_videos.write_video(path, face_videos.two_face_frames(12))
  side = {}
  for _, frame, fs in predict.tracked_faces(media.sources(path)[0], detector, predict.Options()):
    assert len(fs) == 2
    for f in fs:
      left = (f.box[0] + f.box[2]) / 2 < frame.shape[1] / 2
      assert side.setdefault(f.track, left) == left, 'a track jumped to the other face'
  assert sorted(side) == [0, 1] and set(side.values()) == {True, False}
  summary = predict.align(path, str(tmp_path / 'out'), detector=detector)
  assert sorted(os.listdir(tmp_path / 'out' / 'cropped_aligned')) == ['two_0', 'two_1']
  assert summary['faces'] == 24 and summary['frames_without_face'] == 0


def test_align_writes_the_abaw_layout(tmp_path, one_face_video, one_face_results, detector):
  video, _ = one_face_video
  # The face jumps from frame to frame (new tracks); --largest_face makes it the video's one track.
  summary = predict.align(video, str(tmp_path), predict.Options(largest_face=True),
                          detector=detector)
  with_face = [n for n, _, fs in one_face_results if fs]
  assert summary['frames'] == N_FACE + N_EMPTY
  assert summary['frames_without_face'] == N_FACE + N_EMPTY - len(with_face)
  folder = tmp_path / 'cropped_aligned' / 'astronaut'
  assert sorted(os.listdir(folder)) == [f'{n:05d}.jpg' for n in with_face]
  assert cv2.imread(str(folder / '00001.jpg')).shape == (112, 112, 3)
  with open(tmp_path / 'landmarks.csv') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['video', 'frame', 'track', 'score', 'x1', 'y1', 'x2', 'y2'] + [
      f'l{c}{i}' for i in range(1, 6) for c in 'xy']
  assert [int(r[1]) for r in rows[1:]] == with_face
  first = one_face_results[0][2][0]
  np.testing.assert_allclose([float(x) for x in rows[1][8:]], first.landmarks.ravel(), atol=1e-3)


def test_bad_inputs_name_the_file(tmp_path, one_face_video, detector, caplog):
  empty = tmp_path / 'empty.mp4'
  empty.write_bytes(b'')
  with pytest.raises(media.MediaError, match='empty.mp4'):
    predict.align(str(empty), str(tmp_path / 'out1'), detector=detector)
  folder = tmp_path / 'mixed'
  folder.mkdir()
  (folder / 'broken.jpg').write_bytes(b'not an image')
  cv2.imwrite(str(folder / 'photo.png'), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
  summary = predict.align(str(folder), str(tmp_path / 'out2'), detector=detector)
  assert summary['failed'] == [str(folder / 'broken.jpg')]
  assert os.listdir(tmp_path / 'out2' / 'cropped_aligned' / 'photo') == ['00001.jpg']
  # A video cut short (a corrupt frame mid-stream): the frames before it are kept, the file named.
  video, _ = one_face_video
  cut = tmp_path / 'cut.avi'
  data_bytes = open(video, 'rb').read()
  cut.write_bytes(data_bytes[:len(data_bytes) // 2])
  summary = predict.align(str(cut), str(tmp_path / 'out4'), predict.Options(largest_face=True),
                          detector=detector)
  assert 0 < summary['frames'] < N_FACE + N_EMPTY
  assert len(os.listdir(tmp_path / 'out4' / 'cropped_aligned' / 'cut')) == summary['faces'] > 0
  assert any('cut.avi: decoding stopped at frame' in r.getMessage() for r in caplog.records)
  nothing = tmp_path / 'nothing'
  nothing.mkdir()
  (nothing / 'notes.txt').write_text('x')
  with pytest.raises(media.MediaError, match='nothing'):
    predict.align(str(nothing), str(tmp_path / 'out3'), detector=detector)
