"""MTCNN nets and cascade against the reference (facenet-pytorch's MTCNN, installed for tests),
which ships the same three nets as the `mtcnn` wheel our weights come from."""

import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN as ReferenceMTCNN
from facenet_pytorch.models import mtcnn as reference
from skimage import data

from mae_face_jax import faces
from mae_face_jax.models import mtcnn


@pytest.fixture(scope='module')
def nets():
  return mtcnn.pretrained()


def test_weights_are_the_references(nets):
  """Every stored array equals one of the reference's .pt tensors in our layout: conv kernels
  HWIO = OIHW transposed (x and y not swapped), dense kernels transposed, PReLU alphas flat."""
  to_ours = {4: lambda v: v.transpose(2, 3, 1, 0), 2: lambda v: v.T, 1: lambda v: v}
  for name, ref in zip(('pnet', 'rnet', 'onet'), (reference.PNet(), reference.RNet(),
                                                   reference.ONet())):
    theirs = [to_ours[v.ndim](v.numpy()) for v in ref.state_dict().values()]
    ours = mtcnn.read_weights(name)
    assert len(ours) == len(theirs)
    for w in ours:
      w = w.reshape(-1) if w.ndim == 3 else w  # PReLU alphas (1, 1, C)
      assert any(v.shape == w.shape and np.array_equal(v, w) for v in theirs), (name, w.shape)


@pytest.mark.parametrize('index,shape', [(0, (2, 37, 53, 3)), (1, (6, 24, 24, 3)),
                                         (2, (6, 48, 48, 3))])
def test_net_parity(nets, index, shape):
  ref = (reference.PNet(), reference.RNet(), reference.ONet())[index].eval()
  x = np.random.default_rng(index).uniform(-1, 1, shape).astype(np.float32)
  ours = [np.asarray(o) for o in nets[index](x)]
  with torch.no_grad():
    theirs = [t.numpy() for t in ref(torch.from_numpy(x).permute(0, 3, 1, 2))]
  if index == 0:  # (offsets NCHW, probabilities NCHW)
    theirs = [theirs[0].transpose(0, 2, 3, 1), theirs[1][:, 1]]
  elif index == 1:
    theirs = [theirs[0], theirs[1][:, 1]]
  else:  # (offsets, landmarks, probabilities)
    theirs = [theirs[0], theirs[1], theirs[2][:, 1]]
  assert len(ours) == len(theirs)
  for a, b in zip(ours, theirs):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_cascade_parity_on_a_real_photo(nets):
  image = data.astronaut()
  boxes, scores, points = ReferenceMTCNN(keep_all=True, select_largest=False).detect(
      image, landmarks=True)
  boxes, scores, points = (np.asarray(v, np.float32) for v in (boxes, scores, points))
  found = faces.Detector(nets=nets).detect(image[None])[0]
  assert len(found) == len(boxes) >= 1
  for face, box, score, pts in zip(found, boxes, scores, points):
    np.testing.assert_allclose(face.box, box, atol=1.0)
    np.testing.assert_allclose(face.landmarks, pts, atol=1.0)
    assert abs(face.score - score) < 1e-4
  # The landmarks are in image order: the left eye left of the right eye, above the mouth.
  le, re, nose, lm, rm = found[0].landmarks
  assert le[0] < re[0] and lm[0] < rm[0] and le[1] < nose[1] < lm[1]
