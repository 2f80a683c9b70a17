"""Frame decoding and clip-consistent augmentation.

One random draw is applied to every frame of a clip, so a clip stays a
coherent video: the same flip, the same translation, the same erased box.
`per_frame=True` draws for every frame independently instead (what Gao &
Nevatia's code does, torchvision transforms applied image by image).

Translation comes in two forms: `pad` (zero-pad by p pixels, crop back at a
random offset) and `translate` (torchreid's Random2DTranslation: with
probability `translate`, enlarge the frame 1.125x and crop a random H x W
window; otherwise leave it). We enlarge the already resized frame (one more
bilinear resample than torchreid, which enlarges the original image).

The pipeline emits uint8 clips; normalisation ((x / 255 - mean) / std) runs
on the accelerator inside the jitted step (`normalize`), which keeps host
memory and host-to-device traffic at one byte per channel. Random erasing
(Zhong et al., 2020) therefore fills the box with the rounded dataset mean
pixel, which is 0 after normalisation: the usual choice of ReID toolkits.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Clip augmentation settings (all off at test time).

  Attributes:
    height: output frame height.
    width: output frame width.
    flip: random horizontal flip probability (0.5 in the papers).
    pad: pad-and-crop translation: zero-pad by `pad` pixels, crop back.
    erasing: random erasing probability.
    erasing_area: (min, max) erased fraction of the frame.
    erasing_aspect: (min, max) aspect ratio of the erased box.
    mean: RGB mean in [0, 1] used to fill erased boxes and padding.
    translate: Random2DTranslation probability (0 = off).
    translate_scale: the enlargement of Random2DTranslation (1.125).
    per_frame: an independent draw for every frame (not clip-consistent).
  """
  height: int
  width: int
  flip: float = 0.0
  pad: int = 0
  erasing: float = 0.0
  erasing_area: tuple[float, float] = (0.02, 0.4)
  erasing_aspect: tuple[float, float] = (0.3, 3.33)
  mean: tuple[float, float, float] = IMAGENET_MEAN
  translate: float = 0.0
  translate_scale: float = 1.125
  per_frame: bool = False


def decode_resize(data: bytes, height: int, width: int) -> np.ndarray:
  """Decodes JPEG/PNG bytes to (height, width, 3) uint8, bilinear resize."""
  with Image.open(io.BytesIO(data)) as img:
    if img.format == "JPEG" and (img.size[0] >= 2 * width and
                                 img.size[1] >= 2 * height):
      img.draft("RGB", (width, height))  # Decode at a reduced DCT scale.
    img = img.convert("RGB")
    if img.size != (width, height):
      img = img.resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def decode_clip(frames: Sequence[bytes], indices: np.ndarray, height: int,
                width: int) -> np.ndarray:
  """Decodes the frames at `indices` into a (T, H, W, 3) uint8 clip.

  A frame used several times (loop padding) is decoded once.
  """
  cache: dict[int, np.ndarray] = {}
  out = np.empty((len(indices), height, width, 3), np.uint8)
  for t, i in enumerate(indices):
    i = int(i)
    if i not in cache:
      cache[i] = decode_resize(frames[i], height, width)
    out[t] = cache[i]
  return out


def augment_clip(clip: np.ndarray, cfg: AugmentConfig,
                 rng: np.random.Generator,
                 flow: np.ndarray | None = None):
  """Applies one random flip / translation / erasing to a whole clip.

  Args:
    clip: (T, H, W, 3) uint8.
    cfg: augmentation settings.
    rng: the clip's generator.
    flow: optional (T, H, W, 2) uint8 quantised optical flow of the clip
      (0 px = 128, `input_pipeline/flow.py`); it receives the same draw: a
      flip also negates the horizontal displacement, padding and erased
      boxes are zero motion.

  Returns:
    (T, H, W, 3) uint8, or (clip, flow) when flow is given.
  """
  if cfg.per_frame and len(clip) > 1:
    single = dataclasses.replace(cfg, per_frame=False)
    outs = [augment_clip(clip[i:i + 1], single, rng,
                         None if flow is None else flow[i:i + 1])
            for i in range(len(clip))]
    if flow is None:
      return np.concatenate(outs)
    return (np.concatenate([o[0] for o in outs]),
            np.concatenate([o[1] for o in outs]))
  t, h, w, _ = clip.shape
  fill = np.round(np.asarray(cfg.mean) * 255).astype(np.uint8)
  zero_motion = np.array([128, 128], np.uint8)
  if cfg.flip and rng.uniform() < cfg.flip:
    clip = clip[:, :, ::-1]
    if flow is not None:
      flow = flow[:, :, ::-1].copy()
      flow[..., 0] = 255 - flow[..., 0]  # f -> -f in the uint8 encoding.
  if cfg.translate and rng.uniform() < cfg.translate:
    bh = int(round(h * cfg.translate_scale))
    bw = int(round(w * cfg.translate_scale))
    y0 = int(rng.integers(0, bh - h + 1))
    x0 = int(rng.integers(0, bw - w + 1))
    clip = np.stack([_resize(f, bh, bw)[y0:y0 + h, x0:x0 + w] for f in clip])
    if flow is not None:
      flow = np.stack([_resize_flow(f, bh, bw)[y0:y0 + h, x0:x0 + w]
                       for f in flow])
  if cfg.pad:
    p = cfg.pad
    y, x = rng.integers(0, 2 * p + 1, size=2)
    clip = _pad_crop(clip, p, y, x, fill)
    if flow is not None:
      flow = _pad_crop(flow, p, y, x, zero_motion)
  if cfg.erasing and rng.uniform() < cfg.erasing:
    box = _erasing_box(h, w, cfg, rng)
    if box is not None:
      y0, x0, bh, bw = box
      clip = np.array(clip)
      clip[:, y0:y0 + bh, x0:x0 + bw] = fill
      if flow is not None:
        flow = np.array(flow)
        flow[:, y0:y0 + bh, x0:x0 + bw] = zero_motion
  clip = np.ascontiguousarray(clip)
  if flow is None:
    return clip
  return clip, np.ascontiguousarray(flow)


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  """(h, w, 3) uint8 -> (height, width, 3), bilinear."""
  return np.asarray(Image.fromarray(frame).resize((width, height),
                                                  Image.BILINEAR))


def _resize_flow(q: np.ndarray, height: int, width: int) -> np.ndarray:
  """Quantised flow (h, w, 2) resized, its displacements scaled with it."""
  from vreid_jax.input_pipeline import flow as flow_lib  # pylint: disable=g-import-not-at-top
  h0, w0 = q.shape[:2]
  f = flow_lib.dequantize(q)
  chans = [np.asarray(Image.fromarray(f[..., c]).resize((width, height),
                                                        Image.BILINEAR))
           for c in range(2)]
  f = np.stack(chans, -1) * np.array([width / w0, height / h0], np.float32)
  return flow_lib.quantize(f)


def _pad_crop(x: np.ndarray, p: int, y0: int, x0: int,
              fill: np.ndarray) -> np.ndarray:
  t, h, w, c = x.shape
  padded = np.empty((t, h + 2 * p, w + 2 * p, c), np.uint8)
  padded[...] = fill
  padded[:, p:p + h, p:p + w] = x
  return padded[:, y0:y0 + h, x0:x0 + w]


def decode_flow_clip(frames: Sequence[bytes], indices: np.ndarray,
                     height: int, width: int) -> np.ndarray:
  """Decodes quantised flow PNGs at `indices` to (T, H, W, 2) uint8.

  Resizing scales the displacements with the image (x by the width ratio,
  y by the height ratio), so a flow vector stays in output pixels.
  """
  from vreid_jax.input_pipeline import flow as flow_lib  # pylint: disable=g-import-not-at-top
  out = np.empty((len(indices), height, width, 2), np.uint8)
  cache: dict[int, np.ndarray] = {}
  for t, i in enumerate(indices):
    i = int(i)
    if i not in cache:
      f = flow_lib.decode_flow(frames[i])  # (h, w, 2) float pixels.
      h0, w0 = f.shape[:2]
      if (h0, w0) != (height, width):
        chans = [np.asarray(Image.fromarray(f[..., c]).resize(
            (width, height), Image.BILINEAR)) for c in range(2)]
        f = np.stack(chans, -1) * np.array([width / w0, height / h0],
                                           np.float32)
      cache[i] = flow_lib.quantize(f)
    out[t] = cache[i]
  return out


def _erasing_box(h: int, w: int, cfg: AugmentConfig,
                 rng: np.random.Generator) -> tuple[int, int, int, int] | None:
  for _ in range(100):
    area = rng.uniform(*cfg.erasing_area) * h * w
    aspect = np.exp(rng.uniform(np.log(cfg.erasing_aspect[0]),
                                np.log(cfg.erasing_aspect[1])))
    bh = int(round(np.sqrt(area * aspect)))
    bw = int(round(np.sqrt(area / aspect)))
    if 0 < bh < h and 0 < bw < w:
      y0 = int(rng.integers(0, h - bh + 1))
      x0 = int(rng.integers(0, w - bw + 1))
      return y0, x0, bh, bw
  return None


def normalize(clips, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD, dtype=None):
  """(x / 255 - mean) / std for uint8 clips; works on NumPy and JAX arrays."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(clips).astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x if dtype is None else x.astype(dtype)
