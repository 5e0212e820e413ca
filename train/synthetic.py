"""SYNTHETIC face identities for training and testing (numpy only).

Nothing here depicts a real person. Each synthetic identity is a drawn cartoon face with stable,
identity-specific structure: face and jaw shape, skin tone, ears, hair colour, volume and hairline,
eye, brow, nose and mouth geometry, an optional beard, and a skin texture of a few low-frequency
blobs and moles. Each image of an identity varies the pose (a small similarity transform of the
whole face geometry, landmarks included), the background, the lighting (gradient, brightness,
contrast, colour cast) and the sensor noise. Images are aligned 112x96 RGB uint8 crops whose
landmarks sit near ``TEMPLATE_112X96``.

Identity ``i`` is drawn from a generator seeded by ``(seed, i)`` and its image ``j`` from one seeded
by ``(seed, i, j)``, so no image depends on how many identities or images are generated.

Speed: each identity is drawn once on a padded canvas (premultiplied RGBA packed as uint32); each
image is a bilinear warp of its identity's canvas over its own background, vectorised over chunks
of images (about 1 ms per image on one core).
"""

from __future__ import annotations

import numpy as np

from pdsn.model.grid import CROP_HEIGHT, CROP_WIDTH
from pdsn.model.validation import check_int

# Canvas margin around the crop, so that shifted or rotated faces never sample past the drawing.
_PAD = 16
_CANVAS_HEIGHT = CROP_HEIGHT + 2 * _PAD
_CANVAS_WIDTH = CROP_WIDTH + 2 * _PAD
# Pose transforms rotate and scale about this crop point (between the eyes and the mouth).
_POSE_CENTRE = np.array([48.0, 70.0])
_CHUNK = 128

# Separate stream tags keep identity and image generators apart (SeedSequence pads short entropy
# with zeros, so (seed, i) and (seed, i, 0) would otherwise collide).
_IDENTITY_STREAM = 0
_IMAGE_STREAM = 1

_SKIN_LIGHT = np.array([236.0, 200.0, 176.0])
_SKIN_DARK = np.array([92.0, 62.0, 48.0])
_HAIR_COLOURS = np.array(
    [[25, 20, 18], [60, 40, 28], [105, 72, 45], [190, 160, 105], [150, 150, 150], [140, 65, 35]],
    dtype=np.float64,
)
_IRIS_COLOURS = np.array([[60, 38, 25], [95, 65, 40], [70, 100, 140], [80, 110, 75], [40, 35, 35]], dtype=np.float64)
_SCLERA = np.array([238.0, 236.0, 230.0])
_PUPIL = np.full(3, 15.0)
# Standard deviation of uniform int8 noise, used to scale it to the image's noise level.
_INT8_STD = float(np.sqrt((256.0**2 - 1.0) / 12.0))


class SyntheticFaces:
    """A seeded set of SYNTHETIC identities with ``images_per_identity`` aligned crops of each.

    Rows are identity-major: image ``j`` of identity ``i`` is row ``i * images_per_identity + j``
    and has label ``i``.
    """

    def __init__(self, num_identities: int, images_per_identity: int, seed: int = 0) -> None:
        self.num_identities = check_int(num_identities, "num_identities", 1)
        self.images_per_identity = check_int(images_per_identity, "images_per_identity", 1)
        self.seed = check_int(seed, "seed", 0)

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,): the identity of every row."""
        return np.repeat(np.arange(self.num_identities, dtype=np.int64), self.images_per_identity)

    def generate(self) -> tuple[np.ndarray, np.ndarray]:
        """All images, uint8 (N, 112, 96, 3) RGB, and their labels, int64 (N,)."""
        images = np.empty((len(self), CROP_HEIGHT, CROP_WIDTH, 3), dtype=np.uint8)
        per_chunk = max(1, _CHUNK // self.images_per_identity)
        x = np.arange(-_PAD, CROP_WIDTH + _PAD, dtype=np.float32)[None, :]
        y = np.arange(-_PAD, CROP_HEIGHT + _PAD, dtype=np.float32)[:, None]
        for first in range(0, self.num_identities, per_chunk):
            identities = range(first, min(first + per_chunk, self.num_identities))
            canvases = np.stack([self._identity(i).draw(x, y) for i in identities])
            jobs = [(k, i, j) for k, i in enumerate(identities) for j in range(self.images_per_identity)]
            for start in range(0, len(jobs), _CHUNK):
                batch = jobs[start : start + _CHUNK]
                variations = [_Variation(self._image_rng(i, j)) for _, i, j in batch]
                row = first * self.images_per_identity + start
                images[row : row + len(batch)] = _render(canvases, np.array([k for k, _, _ in batch]), variations)
        return images, self.labels

    def landmarks(self) -> np.ndarray:
        """Every image's five landmarks (eyes, nose, mouth corners) in crop pixels, (N, 5, 2)."""
        points = np.empty((self.num_identities, self.images_per_identity, 5, 2))
        for i in range(self.num_identities):
            canonical = self._identity(i).landmarks
            for j in range(self.images_per_identity):
                pose = _Variation(self._image_rng(i, j)).pose
                points[i, j] = canonical @ pose[:, :2].T + pose[:, 2]
        return points.reshape(len(self), 5, 2)

    def _identity(self, identity: int) -> _Identity:
        return _Identity(np.random.default_rng([self.seed, _IDENTITY_STREAM, identity]))

    def _image_rng(self, identity: int, image: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _IMAGE_STREAM, identity, image])


def synthetic_faces(num_identities: int, images_per_identity: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC faces: images uint8 (N, 112, 96, 3) and labels int64 (N,); see SyntheticFaces."""
    return SyntheticFaces(num_identities, images_per_identity, seed).generate()


def _ellipse(
    x: np.ndarray,
    y: np.ndarray,
    centre: tuple[float, float],
    axes: tuple[float, float],
    angle: float = 0.0,
    soft: float = 1.0,
) -> np.ndarray:
    """Anti-aliased ellipse coverage in [0, 1].

    ``soft`` is the edge width in pixels across the minor axis; along the major axis the edge is
    wider in proportion, which tapers thin shapes (lip line, brows) softly.
    """
    dx, dy = x - np.float32(centre[0]), y - np.float32(centre[1])
    if angle:
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        dx, dy = c * dx + s * dy, c * dy - s * dx
    radius = np.sqrt((dx / np.float32(axes[0])) ** 2 + (dy / np.float32(axes[1])) ** 2)
    return np.clip((1.0 - radius) * np.float32(min(axes) / soft) + 0.5, 0.0, 1.0)


def _paint(rgb: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Blend ``colour`` over planar (3, H, W) ``rgb`` with coverage ``alpha`` (H, W), in place."""
    rgb += alpha * (colour.astype(np.float32)[:, None, None] - rgb)


def _window(centre: tuple[float, float], reach: float) -> tuple[slice, slice]:
    """Canvas rows and columns within ``reach`` pixels of ``centre`` (crop coordinates)."""

    def span(middle: float, size: int) -> slice:
        low = int(np.floor(middle - reach)) + _PAD
        return slice(max(0, low), min(size, int(np.ceil(middle + reach)) + _PAD + 1))

    return span(centre[1], _CANVAS_HEIGHT), span(centre[0], _CANVAS_WIDTH)


def _paint_ellipse(
    rgb: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    colour: np.ndarray,
    centre: tuple[float, float],
    axes: tuple[float, float],
    angle: float = 0.0,
    soft: float = 1.0,
    weight: np.ndarray | float = 1.0,
) -> None:
    """Paint an ellipse, evaluated only in its bounding window; ``weight`` scales its coverage."""
    # _ellipse's coverage reaches out to radius 1 + soft / (2 * min(axes)), in units of the axes.
    rows, cols = _window(centre, max(axes) * (1.0 + 0.5 * soft / min(axes)) + 1.0)
    alpha = _ellipse(x[:, cols], y[rows], centre, axes, angle, soft)
    if isinstance(weight, np.ndarray):
        alpha *= weight[rows, cols]
    elif weight != 1.0:
        alpha *= np.float32(weight)
    _paint(rgb[:, rows, cols], alpha, colour)


class _Identity:
    """The parameters of one synthetic identity, all drawn up front in a fixed order."""

    def __init__(self, rng: np.random.Generator) -> None:
        u = rng.uniform
        tint = 1.0 + np.clip(rng.normal(0, 0.04, 3), -0.08, 0.08)
        self.skin = (_SKIN_LIGHT + u(0, 1) * (_SKIN_DARK - _SKIN_LIGHT)) * tint
        self.hair = np.clip(
            _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * u(0.8, 1.2) + rng.normal(0, 6, 3),
            0,
            255,
        )
        self.face_centre = (48.0 + rng.normal(0, 0.8), u(58, 66))
        self.face_axes = (u(34, 43), u(46, 56))
        self.jaw = u(0.0, 0.3)
        self.cap_axes = (self.face_axes[0] * u(1.02, 1.15), self.face_axes[1] * u(0.8, 0.95))
        self.hair_length = u(-12, 20)
        self.ear_axes = (u(4, 6.5), u(8, 11))
        self.ear_drop = u(6, 10)
        self.blobs = [(u(0, 2 * np.pi), np.sqrt(u(0, 0.6)), u(4, 11), u(-0.2, 0.2)) for _ in range(4)]
        self.moles = [(u(0, 2 * np.pi), np.sqrt(u(0.1, 0.7)), u(0.8, 1.6)) for _ in range(rng.integers(0, 4))]
        self.hairline = self.face_centre[1] - self.face_axes[1] + u(4, 24)
        self.temples = u(2, 14)
        self.beard = u(0.4, 0.85) if u(0, 1) < 0.25 else 0.0
        self.beard_gap = u(4, 9)
        eye_y = 51.6 + np.clip(rng.normal(0, 1.5), -3, 3)
        eye_half_gap = 17.6 + np.clip(rng.normal(0, 1.5), -3, 3)
        self.eyes = [(48.0 + side * eye_half_gap, eye_y + 0.3 * rng.normal()) for side in (-1, 1)]
        self.eye_axes = (u(4.0, 6.5), u(1.8, 3.2))
        self.eye_tilt = u(-0.15, 0.15)
        self.brow_offset = (u(0, 2), u(6, 10))
        self.brow_axes = (u(5.5, 9), u(0.9, 2.2))
        self.brow_tilt = u(-0.2, 0.25)
        self.iris = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * u(0.8, 1.2)
        self.iris_radius = min(self.eye_axes[1] * u(0.9, 1.15), self.eye_axes[0] * 0.6)
        self.sclera = _SCLERA * u(0.85, 1.0)
        self.nose = (48.0 + rng.normal(0, 0.7), 71.7 + np.clip(rng.normal(0, 2.0), -4, 4))
        self.nose_half_width = u(2.5, 5.0)
        self.bridge_shade = u(0.3, 0.6)
        self.tip_height, self.tip_shade = u(2.5, 4.0), u(0.8, 0.9)
        self.nostril_axes = (u(1.2, 2.0), u(0.8, 1.3))
        self.mouth_y = 92.3 + np.clip(rng.normal(0, 2.0), -4, 4)
        self.mouth_half_width = u(9, 16)
        self.lip_height = u(2.0, 4.0)
        self.lips = self.skin * np.array([0.85, 0.55, 0.55]) * u(0.8, 1.05)

    @property
    def landmarks(self) -> np.ndarray:
        """Canonical (unposed) landmarks in crop pixels, (5, 2)."""
        return np.array(
            [
                *self.eyes,
                self.nose,
                (48.0 - self.mouth_half_width, self.mouth_y),
                (48.0 + self.mouth_half_width, self.mouth_y),
            ]
        )

    def draw(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Draw on the padded canvas; returns premultiplied RGBA uint8 packed as uint32 (H*W,)."""
        skin, hair = self.skin, self.hair
        (fx, fy), (fa, fb) = self.face_centre, self.face_axes
        rgb = np.empty((3, _CANVAS_HEIGHT, _CANVAS_WIDTH), dtype=np.float32)
        rgb[:] = skin.astype(np.float32)[:, None, None]

        cap = _ellipse(x, y, (fx, fy - 0.25 * fb), self.cap_axes)
        cap *= np.clip((np.float32(self.eyes[0][1] + self.hair_length) - y) / 2.0 + 0.5, 0.0, 1.0)
        _paint(rgb, cap, hair)
        coverage = cap
        for side in (-1, 1):
            ear_centre = (48.0 + side * (fa - 1.0), self.eyes[0][1] + self.ear_drop)
            ear = _ellipse(x, y, ear_centre, self.ear_axes)
            _paint(rgb, ear, skin * 0.93)
            coverage = np.maximum(coverage, ear)

        # The face: an ellipse whose half width narrows towards the chin by the jaw factor.
        below = np.clip((y - np.float32(fy)) / np.float32(fb), 0.0, 1.0)
        half_width = np.float32(fa) * (1.0 - np.float32(self.jaw) * below)
        radius = np.sqrt(((x - np.float32(fx)) / half_width) ** 2 + ((y - np.float32(fy)) / np.float32(fb)) ** 2)
        face = np.clip((1.0 - radius) * np.float32(fa) + 0.5, 0.0, 1.0)
        _paint(rgb, face, skin)
        coverage = np.maximum(coverage, face)

        shading = 1.0 - 0.18 * np.clip(radius, 0.0, 1.0) ** 2
        for angle, reach, sigma, amplitude in self.blobs:
            bx = np.float32(fx + reach * fa * np.cos(angle))
            by = np.float32(fy + reach * fb * np.sin(angle))
            blob = np.exp(-((x - bx) ** 2 + (y - by) ** 2) / np.float32(2 * sigma**2))
            shading += np.float32(amplitude) * blob * face
        rgb *= shading
        for angle, reach, size in self.moles:
            centre = (fx + reach * fa * np.cos(angle), fy + reach * fb * np.sin(angle))
            _paint_ellipse(rgb, x, y, skin * 0.5, centre, (size, size), weight=face)

        temples = np.float32(self.temples) * ((x - np.float32(fx)) / np.float32(fa)) ** 2
        fringe = np.clip((np.float32(self.hairline) + temples - y) / 1.5 + 0.5, 0.0, 1.0)
        _paint(rgb, fringe * coverage, hair)
        if self.beard:
            beard = np.clip((y - np.float32(self.nose[1] + self.beard_gap)) / 2.0, 0.0, 1.0)
            _paint(rgb, beard * face * np.float32(self.beard), hair)

        brow_colour = 0.75 * hair + 0.15 * skin
        for side, centre in zip((-1, 1), self.eyes):
            brow_centre = (centre[0] + side * self.brow_offset[0], centre[1] - self.brow_offset[1])
            brow_angle = -side * self.brow_tilt
            _paint_ellipse(rgb, x, y, brow_colour, brow_centre, self.brow_axes, brow_angle)
            reach = max(self.eye_axes) * (1.0 + 0.5 / min(self.eye_axes)) + 1.0
            rows, cols = _window(centre, reach)
            ex, ey, eye = x[:, cols], y[rows], rgb[:, rows, cols]
            sclera = _ellipse(ex, ey, centre, self.eye_axes, side * self.eye_tilt)
            _paint(eye, sclera, self.sclera)
            iris = (self.iris_radius, self.iris_radius)
            _paint(eye, _ellipse(ex, ey, centre, iris) * sclera, self.iris)
            pupil = (0.45 * self.iris_radius, 0.45 * self.iris_radius)
            _paint(eye, _ellipse(ex, ey, centre, pupil) * sclera, _PUPIL)

        (nx, ny), width = self.nose, self.nose_half_width
        eye_y = self.eyes[0][1]
        bridge_axes = (width, (ny - eye_y) / 2.0 + 2.0)
        _paint_ellipse(
            rgb, x, y, skin * 0.75, (nx, (ny + eye_y) / 2.0), bridge_axes, soft=3.0, weight=self.bridge_shade
        )
        tip_axes = (width * 1.3, self.tip_height)
        _paint_ellipse(rgb, x, y, skin * self.tip_shade, (nx, ny), tip_axes, soft=2.0)
        for side in (-1, 1):
            nostril = (nx + side * width * 0.8, ny + 1.5)
            _paint_ellipse(rgb, x, y, skin * 0.45, nostril, self.nostril_axes)

        mouth = (48.0, self.mouth_y)
        _paint_ellipse(rgb, x, y, self.lips, mouth, (self.mouth_half_width, self.lip_height))
        _paint_ellipse(rgb, x, y, skin * 0.3, mouth, (self.mouth_half_width * 0.95, 0.7))

        rgba = np.empty((_CANVAS_HEIGHT, _CANVAS_WIDTH, 4), dtype=np.uint8)
        rgba[..., :3] = np.moveaxis(np.clip(rgb * coverage + 0.5, 0.0, 255.0), 0, -1)
        rgba[..., 3] = np.clip(coverage * 255.0 + 0.5, 0.0, 255.0)
        return rgba.reshape(-1, 4).view(np.uint32).ravel()


class _Variation:
    """Per-image pose (2x3 canonical-to-crop matrix), background, lighting and noise."""

    def __init__(self, rng: np.random.Generator) -> None:
        angle = np.deg2rad(np.clip(rng.normal(0, 4.0), -10, 10))
        scale = float(np.exp(np.clip(rng.normal(0, 0.04), -0.08, 0.08)))
        shift = np.clip(rng.normal(0, 1.5, 2), -4, 4)
        linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        self.pose = np.hstack([linear, (_POSE_CENTRE + shift - linear @ _POSE_CENTRE)[:, None]])
        self.background = rng.uniform(20, 235, 3)
        self.gradient = rng.normal(0, 20, 2)
        direction = rng.uniform(0, 2 * np.pi)
        self.light = rng.uniform(0, 0.4) * np.array([np.cos(direction), np.sin(direction)])
        self.gain = rng.uniform(0.75, 1.2) * (1.0 + rng.normal(0, 0.04, 3))
        self.contrast = rng.uniform(0.75, 1.15)
        self.noise_std = rng.uniform(1.5, 6.0)
        self.noise = np.frombuffer(rng.bytes(3 * CROP_HEIGHT * CROP_WIDTH), dtype=np.int8)


def _render(canvases: np.ndarray, canvas_index: np.ndarray, variations: list[_Variation]) -> np.ndarray:
    """Warp each image's identity canvas by its pose, composite on its background, light it."""
    count = len(variations)

    def per_image(values: list, *shape: int) -> np.ndarray:
        return np.asarray(values, dtype=np.float32).reshape(count, *shape)

    ys, xs = np.mgrid[0:CROP_HEIGHT, 0:CROP_WIDTH].astype(np.float32)
    # The inverse pose maps crop pixels back to canonical coordinates, shifted onto the canvas.
    inverse = np.empty((count, 2, 3))
    for k, variation in enumerate(variations):
        linear = np.linalg.inv(variation.pose[:, :2])
        inverse[k, :, :2] = linear
        inverse[k, :, 2] = _PAD - linear @ variation.pose[:, 2]
    m = inverse.astype(np.float32)[..., None, None]
    cx = np.clip(m[:, 0, 0] * xs + m[:, 0, 1] * ys + m[:, 0, 2], 0.0, _CANVAS_WIDTH - 1.001)
    cy = np.clip(m[:, 1, 0] * xs + m[:, 1, 1] * ys + m[:, 1, 2], 0.0, _CANVAS_HEIGHT - 1.001)
    x0, y0 = cx.astype(np.int64), cy.astype(np.int64)
    wx, wy = (cx - x0)[:, None], (cy - y0)[:, None]
    base = canvas_index[:, None, None] * canvases.shape[1] + y0 * _CANVAS_WIDTH + x0
    flat = canvases.ravel()

    # Bilinear weights of the four neighbours; unpacking and blending in place keeps this cheap.
    w11 = wx * wy
    w10 = wy - w11
    w01 = wx - w11
    w00 = 1.0 - wx - w10
    face = np.empty((count, 4, CROP_HEIGHT, CROP_WIDTH), dtype=np.float32)
    term = np.empty_like(face)
    packed = np.empty(base.shape, dtype=np.uint32)
    # Walk ``base`` in place over the four neighbours: +0, +1, +width, +width+1.
    for step, weight in ((0, w00), (1, w01), (_CANVAS_WIDTH - 1, w10), (1, w11)):
        base += step
        np.take(flat, base, out=packed)
        target = term if step else face
        np.copyto(target, np.moveaxis(packed[..., None].view(np.uint8), -1, 1))
        target *= weight
        if step:
            face += term
    # face: (K, 4, H, W) premultiplied RGBA in 0..255.

    nx, ny = (xs - 48.0) / 48.0, (ys - 56.0) / 56.0
    gradient = per_image([v.gradient for v in variations], 2, 1, 1)
    background = (
        per_image([v.background for v in variations], 3, 1, 1) + (gradient[:, 0] * nx + gradient[:, 1] * ny)[:, None]
    )
    background *= 1.0 - face[:, 3:] / 255.0
    image = face[:, :3]
    image += background
    light = per_image([v.light for v in variations], 2, 1, 1)
    image *= (1.0 + light[:, 0] * nx + light[:, 1] * ny)[:, None]
    gain = per_image([v.gain for v in variations], 3, 1, 1)
    contrast = per_image([v.contrast for v in variations], 1, 1, 1)
    image *= gain * contrast
    image += 128.5 - 128.0 * contrast
    noise = np.stack([v.noise for v in variations]).reshape(count, 3, CROP_HEIGHT, CROP_WIDTH)
    image += noise * per_image([v.noise_std / _INT8_STD for v in variations], 1, 1, 1)
    np.clip(image, 0.0, 255.0, out=image)
    return np.ascontiguousarray(np.moveaxis(image.astype(np.uint8), 1, -1))
