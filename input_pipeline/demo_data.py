"""Procedural demo dataset: synthetic face videos written in the exact ABAW expression-track layout.

Every program runs on it without licensed data. Faces are drawn with OpenCV (oval, hair, eyes, brows,
nose, mouth, skin tone, background clutter, lighting, pose jitter, JPEG artefacts). The 8 classes
differ in eye opening, brow height/slant, mouth curve/opening/width/asymmetry and nose wrinkles; each
segment shows its class at a random intensity with noise, so weak expressions overlap with Neutral
and with each other. A video is a sequence of expression segments with smooth transitions, blinks and
a little per-frame label noise (so temporal smoothing helps); class frequencies follow Aff-Wild2's
imbalance. Some frames are unannotated (-1) and a few annotated frames have no image, as in ABAW.

Public API:
    ensure_demo_data(root: str, **kwargs) -> str     generates into root unless already complete
    generate_demo_data(root, num_videos=60, frames=(120, 220), size=112, seed=0) -> None
    render_face(identity, expression, rng, size=112) -> np.ndarray (BGR uint8)

Written tree (``DEMO_DATA.txt`` is written last and marks a complete dataset):
    root/cropped_aligned/<video>/<frame:05d>.jpg
    root/EXPR_Classification_Challenge/{Train_Set,Validation_Set}/<video>.txt
    root/EXPR_test_set_release.txt
    root/DEMO_DATA.txt
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import shutil
import time

import cv2
import numpy as np

from input_pipeline.abaw import ANNOTATIONS_DIR, CLASSES, IMAGES_DIR, TEST_LIST

MARKER = 'DEMO_DATA.txt'
# Aff-Wild2-like imbalance: Neutral, Happiness, Other common; Fear and Disgust rare.
CLASS_PRIOR = np.array([0.27, 0.06, 0.03, 0.03, 0.21, 0.10, 0.07, 0.23])
# Expression parameters: eye_open, brow_raise, brow_slant (inner end up +), mouth_curve (smile +),
# mouth_open, mouth_width, asymmetry, nose_wrinkle.
PROTOTYPES = np.array([
    [0.80, 0.0, 0.0, 0.0, 0.05, 1.00, 0.0, 0.0],   # Neutral
    [0.50, -0.9, -1.0, -0.3, 0.10, 0.85, 0.0, 0.3],  # Anger: lowered, V-shaped brows, narrow eyes
    [0.50, -0.5, -0.3, -0.6, 0.25, 0.90, 0.7, 1.0],  # Disgust: wrinkled nose, raised lip on one side
    [1.30, 0.8, 0.8, -0.3, 0.50, 1.20, 0.0, 0.0],   # Fear: wide eyes, raised inner brows, stretched mouth
    [0.55, 0.1, 0.0, 1.00, 0.35, 1.25, 0.0, 0.0],   # Happiness: smile, narrowed eyes
    [0.60, 0.2, 0.9, -0.8, 0.05, 0.95, 0.0, 0.0],   # Sadness: inner brows up, corners down
    [1.40, 1.1, 0.1, 0.0, 1.00, 0.80, 0.0, 0.0],    # Surprise: brows high, eyes wide, round open mouth
    [0.80, 0.4, -0.2, 0.4, 0.15, 1.00, 0.8, 0.0],   # Other: smirk-like asymmetric mix
])
# Pixels an expression moves a feature per unit of its parameter (brow, brow slant, smile, asymmetry,
# mouth opening): large enough that a small ViT reads expressions before it learns who the person is.
MOTION_PX = dict(brow=8.0, slant=7.0, curve=12.0, asym=6.0, open_up=3.5, open_down=17.0)
PARAM_NOISE = np.array([0.12, 0.2, 0.2, 0.2, 0.08, 0.08, 0.2, 0.2])


def _video_names(num_videos: int, rng: np.random.Generator) -> list[str]:
  """ABAW-like names; every seventh video is a two-person clip split into _left and _right."""
  names, i = [], 0
  while len(names) < num_videos:
    res = rng.choice(['640x360', '1280x720', '1920x1080', '480x360'])
    base = f'{i + 1}-{int(rng.choice([24, 25, 30]))}-{res}'
    if i % 7 == 3 and len(names) + 2 <= num_videos:
      names += [base + '_left', base + '_right']
    else:
      names.append(base)
    i += 1
  return names


def _identity(rng: np.random.Generator, size: int) -> dict:
  """A person and a scene: skin, hair, face shape, feature spacing, background, lighting."""
  light, dark = np.array([196, 214, 238]), np.array([52, 78, 112])  # BGR skin extremes
  skin = (light + rng.uniform(0, 1) * (dark - light) + rng.normal(0, 8, 3)).clip(0, 255)
  return {
      'skin': skin, 'hair': rng.integers(10, 120, 3) * rng.uniform(0.3, 1.0),
      'face_axes': (rng.uniform(36, 42), rng.uniform(48, 55)), 'eye_dx': rng.uniform(-2, 2),
      'eye_size': rng.uniform(6, 8.5), 'brow_width': int(rng.integers(2, 4)),
      'lip': (skin * np.array([0.75, 0.7, 1.1])).clip(0, 255),
      'background': rng.integers(30, 220, 3),
      'light_angle': rng.uniform(0, 2 * np.pi), 'light_strength': rng.uniform(0.0, 0.35),
      'brightness': rng.uniform(0.75, 1.15), 'quality': (int(rng.integers(45, 70)), 95),
  }


def _background(color: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """The scene behind the face: the identity's colour with clutter (boxes, discs, lines) drawn anew
  each frame, so the background tells nothing about the person (a shortcut a model would learn)."""
  img = np.empty((size, size, 3), np.uint8)
  img[:] = color
  for _ in range(int(rng.integers(4, 10))):
    c = tuple(int(v) for v in rng.integers(0, 256, 3))
    p, q = (tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2))
    kind = rng.integers(3)
    if kind == 0:
      cv2.rectangle(img, p, q, c, -1)
    elif kind == 1:
      cv2.circle(img, p, int(rng.integers(4, size // 4)), c, -1)
    else:
      cv2.line(img, p, q, c, int(rng.integers(1, 4)))
  return img


def _pt(x: float, y: float, s: float) -> tuple[int, int]:
  return int(round(x * s)), int(round(y * s))


def render_face(identity: dict, expression: np.ndarray, rng: np.random.Generator, size: int = 112
                ) -> np.ndarray:
  """One BGR frame: the identity's face showing ``expression`` (8 parameters, see PROTOTYPES)."""
  eye_open, brow_raise, brow_slant, curve, mouth_open, mouth_width, asym, wrinkle = expression
  s = size / 112.0
  img = _background(identity['background'], rng, size)
  skin = tuple(float(c) for c in identity['skin'])
  ax, ay = identity['face_axes']
  hair = identity['hair'].tolist()
  cv2.ellipse(img, _pt(56, 44, s), _pt(ax + 4, ay * 0.7, s), 0, 180, 360, hair, -1, cv2.LINE_AA)
  cv2.rectangle(img, _pt(40, 100, s), _pt(72, 112, s), tuple(c * 0.85 for c in skin), -1)
  cv2.ellipse(img, _pt(56, 64, s), _pt(ax, ay, s), 0, 0, 360, skin, -1, cv2.LINE_AA)
  dark = (35, 30, 30)
  for side in (-1, 1):  # eyes at the 5-point template (38.3, 51.7) / (73.5, 51.5)
    ex, ey = 56 + side * (17.6 + identity['eye_dx']), 51.6
    eh = max(0.6, identity['eye_size'] * 0.55 * eye_open)
    eye_axes = _pt(identity['eye_size'], eh, s)
    cv2.ellipse(img, _pt(ex, ey, s), eye_axes, 0, 0, 360, (235, 235, 235), -1, cv2.LINE_AA)
    if eh > 1.2:
      cv2.circle(img, _pt(ex, ey, s), max(1, int(round(min(2.8, eh) * s))), dark, -1, cv2.LINE_AA)
    cv2.ellipse(img, _pt(ex, ey, s), eye_axes, 0, 180, 360, dark, 1, cv2.LINE_AA)
    # Brow: outer and inner ends; slant > 0 lifts the inner end (sadness, fear), < 0 lowers it (anger).
    by = ey - 9.5 - MOTION_PX['brow'] * brow_raise
    outer, inner = (ex + side * 10, by + 1), (ex - side * 7, by - MOTION_PX['slant'] * brow_slant)
    cv2.line(img, _pt(*outer, s), _pt(*inner, s), hair, identity['brow_width'], cv2.LINE_AA)
  shade = tuple(c * 0.7 for c in skin)
  cv2.line(img, _pt(56, 58, s), _pt(55, 71, s), shade, 1, cv2.LINE_AA)  # nose ridge to tip (56, 71.7)
  cv2.ellipse(img, _pt(52, 73, s), _pt(2, 1.2, s), 0, 0, 360, shade, -1)
  cv2.ellipse(img, _pt(60, 73, s), _pt(2, 1.2, s), 0, 0, 360, shade, -1)
  if wrinkle > 0.3:
    for dy in (0, 3):
      cv2.line(img, _pt(51, 61 + dy, s), _pt(61, 61 + dy, s), shade, 1, cv2.LINE_AA)
  # Mouth around the template corners (41.5, 92.4) / (70.7, 92.2): lip line bends up with `curve`,
  # the right corner lifts with `asym`, the lower lip opens with `mouth_open`.
  w = 14.5 * mouth_width
  xs = np.linspace(-1, 1, 15)
  upper = (92.3 - MOTION_PX['curve'] * curve * xs ** 2 - MOTION_PX['asym'] * asym * np.clip(xs, 0, 1)
           - MOTION_PX['open_up'] * mouth_open * (1 - xs ** 2))
  lower = upper + MOTION_PX['open_down'] * mouth_open * (1 - xs ** 2) + 0.5
  top = np.stack([56 + w * xs, upper], 1)
  bottom = np.stack([56 + w * xs[::-1], lower[::-1]], 1)
  poly = (np.concatenate([top, bottom]) * s).round().astype(np.int32)
  cv2.fillPoly(img, [poly], (40, 30, 90) if mouth_open > 0.15 else identity['lip'].tolist(), cv2.LINE_AA)
  cv2.polylines(img, [poly], True, identity['lip'].tolist(), max(1, int(round(1.5 * s))), cv2.LINE_AA)
  # Lighting: a linear gradient in the identity's direction and a global gain that drifts.
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
  a = identity['light_angle']
  gain = identity['brightness'] * (1 + rng.normal(0, 0.02)) * (
      1 + identity['light_strength'] * (np.cos(a) * xx + np.sin(a) * yy))
  img = cv2.convertScaleAbs(img.astype(np.float32) * gain[..., None])
  # Small pose jitter: rotation, scale and shift about the centre (the crop is "aligned", not perfect).
  m = cv2.getRotationMatrix2D((size / 2, size / 2), rng.normal(0, 2.5), 1 + rng.normal(0, 0.02))
  m[:, 2] += rng.normal(0, 1.2 * s, 2)
  img = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
  if rng.random() < 0.1:
    img = cv2.GaussianBlur(img, (3, 3), 0)
  noise = rng.normal(0, 3, img.shape).astype(np.int16)
  return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _video_script(num_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Per-frame expression parameters (num_frames, 8) and annotation labels (-1 = unannotated)."""
  params = np.empty((num_frames, 8))
  labels = np.empty(num_frames, np.int64)
  t, prev_label, prev = 0, 0, PROTOTYPES[0]
  while t < num_frames:
    label = int(rng.choice(len(CLASSES), p=CLASS_PRIOR))
    intensity = rng.uniform(0.6, 1.1)  # weak expressions overlap with Neutral and each other
    target = PROTOTYPES[0] + intensity * (PROTOTYPES[label] - PROTOTYPES[0]) + rng.normal(0, PARAM_NOISE)
    length, ramp = int(rng.integers(12, 45)), int(rng.integers(3, 8))
    for i in range(min(length, num_frames - t)):
      mix = min(1.0, (i + 1) / ramp)
      params[t + i] = prev + mix * (target - prev)
      labels[t + i] = label if mix >= 0.5 else prev_label  # annotators switch mid-transition
    t += length
    prev, prev_label = target, label
  params += rng.normal(0, 0.03, params.shape)
  for start in np.flatnonzero(rng.random(num_frames) < 0.02):  # blinks
    params[start:start + 2, 0] = 0.1
  noisy = rng.random(num_frames) < 0.03
  labels[noisy] = rng.integers(0, len(CLASSES), int(noisy.sum()))
  if rng.random() < 0.3:  # an unannotated stretch (face turned away, annotator unsure)
    start = int(rng.integers(0, num_frames - 10))
    labels[start:start + int(rng.integers(5, 25))] = -1
  params[:, 5] = params[:, 5].clip(0.6, 1.4)
  params[:, 4] = params[:, 4].clip(0.0, 1.2)
  params[:, 0] = params[:, 0].clip(0.05, 1.6)
  return params, labels


def _person(name: str) -> str:
  return name.rsplit('_', 1)[0] if name.endswith(('_left', '_right')) else name


def _write_video(job: tuple) -> np.ndarray:
  """One video's frames (and its annotation file, unless a test video); returns its labels."""
  root, name, v, seed, size, frames, split = job
  vrng = np.random.default_rng([seed, v])
  identity = _identity(vrng, size)
  params, labels = _video_script(int(vrng.integers(frames[0], frames[1] + 1)), vrng)
  out_dir = os.path.join(root, IMAGES_DIR, name)
  os.makedirs(out_dir)
  dropped = vrng.random(len(labels)) < 0.005  # face detector misses: annotated, no image
  for k, (p, drop) in enumerate(zip(params, dropped), start=1):
    img = render_face(identity, p, vrng, size)
    if drop:
      continue
    quality = int(vrng.integers(*identity['quality']))
    ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    buf.tofile(os.path.join(out_dir, f'{k:05d}.jpg'))
  if split != 'test':
    with open(os.path.join(root, ANNOTATIONS_DIR, split, name + '.txt'), 'w') as f:
      f.write(','.join(CLASSES) + '\n' + ''.join(f'{int(l)}\n' for l in labels))
  return labels


def generate_demo_data(root: str, num_videos: int = 60, frames: tuple[int, int] = (120, 220),
                       size: int = 112, seed: int = 0) -> None:
  """Writes the demo dataset into ``root`` (which must not hold one already); deterministic in seed."""
  rng = np.random.default_rng(seed)
  names = _video_names(num_videos, rng)
  # Split by person: both halves of a _left/_right pair land in the same split.
  people = sorted({_person(n) for n in names})
  order = rng.permutation(len(people))
  n_val, n_test = max(1, round(0.2 * len(people))), max(1, round(0.1 * len(people)))
  split_of = {}
  for rank, p in enumerate(order):
    split_of[people[p]] = ('Validation_Set' if rank < n_val else
                           'test' if rank < n_val + n_test else 'Train_Set')
  for split in ('Train_Set', 'Validation_Set'):
    os.makedirs(os.path.join(root, ANNOTATIONS_DIR, split), exist_ok=True)
  test_videos, counts = [], np.zeros(len(CLASSES), np.int64)
  # Each video draws from its own generator, so the videos are written in parallel, one process a
  # core, with the same result as one by one.
  jobs = [(root, name, v, seed, size, frames, split_of[_person(name)])
          for v, name in enumerate(names)]
  with concurrent.futures.ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1),
                                              mp_context=multiprocessing.get_context('spawn')) as pool:
    for (_, name, *_, split), labels in zip(jobs, pool.map(_write_video, jobs)):
      if split == 'test':
        test_videos.append(name)
      else:
        counts += np.bincount(labels[labels >= 0], minlength=len(CLASSES))
  with open(os.path.join(root, TEST_LIST), 'w') as f:
    f.write(''.join(n + '\n' for n in test_videos))
  info = {'generator': 'input_pipeline.demo_data', 'seed': seed, 'num_videos': num_videos,
          'frames': list(frames), 'size': size, 'test_videos': len(test_videos),
          'annotated_frames_per_class': dict(zip(CLASSES, counts.tolist()))}
  with open(os.path.join(root, MARKER), 'w') as f:
    f.write('Synthetic demo faces in the ABAW expression layout; not real data.\n')
    f.write(json.dumps(info, indent=1) + '\n')


def ensure_demo_data(root: str, num_videos: int = 60, frames: tuple[int, int] = (120, 220),
                     size: int = 112, seed: int = 0) -> str:
  """Returns ``root``, generating the demo dataset there first unless a complete one is present.

  Generation goes to a sibling temporary directory renamed into place, so an interrupted run never
  leaves a half-written dataset that looks complete. A non-empty ``root`` that is not a demo dataset
  is never touched: that is an error.
  """
  root = os.path.abspath(root)
  if os.path.isfile(os.path.join(root, MARKER)):
    return root
  if os.path.isdir(root) and os.listdir(root):
    raise FileExistsError(f'{root}: exists and is not a complete demo dataset (no {MARKER}); '
                          'pass an empty or absent directory')
  tmp = f'{root}.partial-{os.getpid()}-{time.time_ns()}'
  try:
    generate_demo_data(tmp, num_videos, frames, size, seed)
    if os.path.isdir(root) and not os.listdir(root):
      os.rmdir(root)  # an empty placeholder directory
    os.replace(tmp, root)
  except OSError:
    # Several processes (hosts of one machine) may generate at once: the first rename wins and
    # the others find a complete dataset in place.
    if not os.path.isfile(os.path.join(root, MARKER)):
      raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp)  # our own temporary directory only
  return root
