"""Synthetic occluders drawn over aligned face crops: the 112x96 crop or dlib's 150x150 chip (numpy only).

``OCCLUDER_KINDS``, the four kinds every published evaluation draws from: ``bar`` (a solid,
uniformly coloured rectangle), ``patch`` (a rectangle with a random striped and blotchy texture),
both placed over one grid cell or a given box; ``sunglasses`` (two dark lenses over the eyes with a
bridge and temple arms) and ``scarf`` (a textured cloth over the lower face from just below the
nose), both placed from the face's five landmarks.

``ESTIMATOR_OCCLUDER_KINDS`` adds two kinds for training and testing the occlusion estimator, both
placed from the landmarks: ``hand`` (an irregular smooth blob anywhere on the face: a hand with
fingers in a skin tone, or an object with a random texture) and ``face_mask`` (a pleated medical
mask over nose and mouth, sometimes with ear loops). ``OCCLUDER_KINDS`` stays as it is, so seeded
draws from it are unchanged.

Every occluder is opaque with hard edges, so the returned pixel mask is exactly the set of pixels
it replaced, and the 25-vector of occluded cells is ``pdsn.model.grid.cells_from_mask(mask,
min_coverage, size)`` over the crop's own grid.
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass

import numpy as np

from pdsn.model.crop_alignment import CROP_ALIGNMENTS
from pdsn.model.grid import DEFAULT_MIN_COVERAGE, NUM_CELLS, cell_bounds, cells_from_mask

OCCLUDER_KINDS = ("bar", "patch", "sunglasses", "scarf")
ESTIMATOR_OCCLUDER_KINDS = (*OCCLUDER_KINDS, "hand", "face_mask")
_PLACED_BY_REGION = ("bar", "patch")
# Skin tones of hands: drawn between these, light to dark.
_SKIN_LIGHT = np.array([236.0, 200.0, 176.0])
_SKIN_DARK = np.array([92.0, 62.0, 48.0])
# Face-mask fabrics: surgical blue, white, black, pale green.
_MASK_COLOURS = np.array([[150, 190, 220], [235, 235, 232], [32, 32, 36], [170, 205, 185]], dtype=np.float64)

# The crops occluders are drawn on, (height, width), and where each alignment's landmarks fall in them.
CROP_TEMPLATES = {(a.height, a.width): a.template for a in CROP_ALIGNMENTS.values()}


@dataclass(frozen=True, eq=False)
class _Canvas:
    """A crop's pixel grid: row and column indices, and pixel centres in the continuous coordinates of
    grid boxes (pixel k spans [k, k + 1))."""

    height: int
    width: int
    rows: np.ndarray
    cols: np.ndarray
    x: np.ndarray
    y: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)


@functools.cache
def _canvas(height: int, width: int) -> _Canvas:
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    return _Canvas(height, width, rows, cols, cols + 0.5, rows + 0.5)


@dataclass(frozen=True)
class Occlusion:
    """An occluded crop.

    ``image`` uint8 (H, W, 3), the crop's size; ``mask`` bool (H, W), True where the occluder replaced the
    pixel; ``cells`` float32 (25,), 1 where a grid cell counts as occluded; ``kind`` the occluder.
    """

    image: np.ndarray
    mask: np.ndarray
    cells: np.ndarray
    kind: str


def occlude(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    *,
    cell: int | None = None,
    box: tuple[float, float, float, float] | None = None,
    landmarks: np.ndarray | None = None,
    margin: int = 2,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> Occlusion:
    """Draw one occluder of ``kind`` over a copy of ``image``.

    ``bar`` and ``patch`` need exactly one of ``cell`` (0..24; the occluder covers the cell grown by
    a random 0..``margin`` pixels on each side) or ``box`` (x0, y0, x1, y1 in crop pixels).
    The other kinds (``sunglasses``, ``scarf``, ``hand``, ``face_mask``) take neither; they are
    placed from ``landmarks`` ((5, 2): eyes, nose, mouth corners in crop pixels; default: the template of
    the alignment whose crop has the image's size). The result is a deterministic function of the arguments and the state of
    ``rng``.
    """
    crop = _check_image(image)
    canvas = _canvas(*crop.shape[:2])
    if not isinstance(kind, str) or kind not in ESTIMATOR_OCCLUDER_KINDS:
        raise ValueError(f"kind must be one of {ESTIMATOR_OCCLUDER_KINDS}, got {kind!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    if isinstance(margin, bool) or not isinstance(margin, numbers.Integral) or margin < 0:
        raise ValueError(f"margin must be an integer number of pixels >= 0, got {margin!r}")

    if kind in _PLACED_BY_REGION:
        if (cell is None) == (box is None):
            raise ValueError(
                f"kind {kind!r} needs exactly one of cell (a grid cell id 0..{NUM_CELLS - 1}) or "
                f"box (x0, y0, x1, y1 in crop pixels); got cell={cell!r}, box={box!r}"
            )
        region = _cell_region(cell, canvas, rng, int(margin)) if box is None else _check_box(box, canvas)
        colours, mask = _bar(region, canvas, rng) if kind == "bar" else _patch(region, canvas, rng)
    else:
        for name, value in (("cell", cell), ("box", box)):
            if value is not None:
                raise ValueError(
                    f"{name} is not used by kind {kind!r}, which is placed from landmarks; "
                    f"got {name}={value!r}. Use kind 'bar' or 'patch' to cover a cell or a box"
                )
        colours, mask = _PLACED_BY_LANDMARKS[kind](_check_landmarks(landmarks, canvas), canvas, rng)

    occluded = crop.copy()
    occluded[mask] = np.clip(colours[mask] + 0.5, 0, 255).astype(np.uint8)
    return Occlusion(occluded, mask, cells_from_mask(mask, min_coverage, crop.shape[:2]), kind)


def random_occlusion(
    image: np.ndarray,
    rng: np.random.Generator,
    kinds: tuple[str, ...] = OCCLUDER_KINDS,
    landmarks: np.ndarray | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> Occlusion:
    """One occluder of a kind drawn from ``kinds``; bars and patches cover a random cell.

    ``kinds`` may hold any of ``ESTIMATOR_OCCLUDER_KINDS``; for a given tuple the draws do not
    depend on which other kinds exist.
    """
    if isinstance(kinds, str) or not kinds or any(k not in ESTIMATOR_OCCLUDER_KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty tuple drawn from {ESTIMATOR_OCCLUDER_KINDS}, got {kinds!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind in _PLACED_BY_REGION:
        cell = int(rng.integers(NUM_CELLS))
        return occlude(image, kind, rng, cell=cell, min_coverage=min_coverage)
    return occlude(image, kind, rng, landmarks=landmarks, min_coverage=min_coverage)


def _check_image(image: object) -> np.ndarray:
    sizes = " or ".join(f"({h}, {w}, 3)" for h, w in CROP_TEMPLATES)
    expected = f"a uint8 RGB crop of shape {sizes}"
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be {expected}, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] not in CROP_TEMPLATES:
        raise ValueError(f"image must be {expected}, got dtype {image.dtype} shape {image.shape}")
    return image


def _check_box(box: object, canvas: _Canvas) -> tuple[float, float, float, float]:
    expected = (
        f"(x0, y0, x1, y1) in crop pixels with x1 > x0, y1 > y0, overlapping the {canvas.width}x{canvas.height} crop"
    )
    try:
        values = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"box must be {expected}, got {box!r}") from None
    if values.shape != (4,) or not np.isfinite(values).all():
        raise ValueError(f"box must be {expected}, got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in values)
    if x1 <= x0 or y1 <= y0 or x1 <= 0 or y1 <= 0 or x0 >= canvas.width or y0 >= canvas.height:
        raise ValueError(f"box must be {expected}, got {box!r}")
    return x0, y0, x1, y1


def _check_landmarks(landmarks: object, canvas: _Canvas) -> np.ndarray:
    if landmarks is None:
        return np.asarray(CROP_TEMPLATES[canvas.height, canvas.width])
    try:
        points = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"landmarks must be a (5, 2) array of crop pixels, got {landmarks!r}") from None
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise ValueError(
            f"landmarks must be a finite (5, 2) array (left eye, right eye, nose, left and right "
            f"mouth corners) in crop pixels, got shape {points.shape}"
        )
    return points


def _cell_region(cell: int | None, canvas: _Canvas, rng: np.random.Generator, margin: int) -> tuple[float, ...]:
    x0, y0, x1, y1 = cell_bounds(cell, (canvas.height, canvas.width))  # type: ignore[arg-type]
    grow = rng.integers(0, margin + 1, size=4)
    return (
        max(0, x0 - grow[0]),
        max(0, y0 - grow[1]),
        min(canvas.width, x1 + grow[2]),
        min(canvas.height, y1 + grow[3]),
    )


def _box_mask(region: tuple[float, ...], canvas: _Canvas) -> np.ndarray:
    x0, y0, x1, y1 = region
    return (x0 <= canvas.x) & (x1 > canvas.x) & (y0 <= canvas.y) & (y1 > canvas.y)


def _bar(region: tuple[float, ...], canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    colour = rng.uniform(0, 255, 3)
    return np.broadcast_to(colour, canvas.shape), _box_mask(region, canvas)


def _texture(canvas: _Canvas, rng: np.random.Generator, waves: int = 3) -> np.ndarray:
    """A random colour texture over the whole crop: base colour, low-frequency waves, fine grain."""
    image = np.broadcast_to(rng.uniform(30, 225, 3), canvas.shape).copy()
    for _ in range(waves):
        frequency = rng.uniform(0.05, 0.6)
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = np.sin(frequency * (np.cos(angle) * canvas.x + np.sin(angle) * canvas.y) + phase)
        image += wave[..., None] * rng.uniform(-40, 40, 3)
    return image + rng.normal(0, 8, image.shape)


def _patch(region: tuple[float, ...], canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return _texture(canvas, rng), _box_mask(region, canvas)


def _eye_frame(points: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """The eye line's frame: origin between the eyes, u along the eye line; and the eye distance."""
    left, right = points[0], points[1]
    delta = right - left
    angle = np.arctan2(delta[1], delta[0])
    return (left + right) / 2.0, float(np.cos(angle)), float(np.sin(angle)), float(np.hypot(*delta))


def _to_frame(
    x: np.ndarray | float, y: np.ndarray | float, frame: tuple[np.ndarray, float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    # Landmarks put pixel centres at integer coordinates, so pass pixel indices (not canvas.x, canvas.y).
    centre, c, s, _ = frame
    dx, dy = np.asarray(x) - centre[0], np.asarray(y) - centre[1]
    return c * dx + s * dy, c * dy - s * dx


def _sunglasses(points: np.ndarray, canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    frame = _eye_frame(points)
    u, v = _to_frame(canvas.cols, canvas.rows, frame)
    eye_distance = frame[3]
    half_gap = eye_distance / 2.0
    lens_w, lens_h = eye_distance * rng.uniform(0.36, 0.46), eye_distance * rng.uniform(0.26, 0.34)
    drop = rng.uniform(0.0, 2.0)
    lenses = np.zeros(u.shape, dtype=bool)
    for side in (-1.0, 1.0):
        lenses |= ((u - side * half_gap) / lens_w) ** 2 + ((v - drop) / lens_h) ** 2 <= 1.0
    bar_v = drop - lens_h * rng.uniform(0.3, 0.6)
    thickness = rng.uniform(1.2, 2.2)
    bridge = (np.abs(u) <= half_gap) & (np.abs(v - bar_v) <= thickness)
    temples = (np.abs(u) >= half_gap) & (np.abs(v - bar_v) <= thickness * 0.8)
    mask = lenses | bridge | temples

    tint = rng.uniform(5, 60) * (1.0 + rng.uniform(-0.3, 0.3, 3))
    shine = np.clip(1.0 - (v - drop) / lens_h, 0.0, 2.0)[..., None] * rng.uniform(5, 30)
    colours = np.broadcast_to(tint, canvas.shape) + shine
    rim = np.broadcast_to(rng.uniform(0, 90, 3), colours.shape)
    return np.where((bridge | temples)[..., None] & ~lenses[..., None], rim, colours), mask


def _scarf(points: np.ndarray, canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    frame = _eye_frame(points)
    u, v = _to_frame(canvas.cols, canvas.rows, frame)
    eye_distance = frame[3]
    nose_u, nose_v = _to_frame(points[2, 0], points[2, 1], frame)
    top = nose_v + eye_distance * rng.uniform(0.05, 0.25)
    sag = eye_distance * rng.uniform(-0.15, 0.15) * ((u - nose_u) / eye_distance) ** 2
    mask = v >= top + sag
    cloth = _texture(canvas, rng, waves=2)
    stripes = np.sin(rng.uniform(0.4, 1.2) * (u + rng.uniform(-0.6, 0.6) * v))
    cloth += (stripes > rng.uniform(-0.3, 0.6))[..., None] * rng.uniform(-80, 80, 3)
    folds = 1.0 + 0.15 * np.sin(rng.uniform(0.15, 0.35) * u + rng.uniform(0, 2 * np.pi))
    return cloth * folds[..., None], mask


def _hand(points: np.ndarray, canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A hand (skin-toned palm and fingers) or an object (textured blob) anywhere on the face.

    A hand is shaded like a rounded solid, darker towards every part's rim, so that fingers and
    the palm's outline show even when its tone matches the face's.
    """
    frame = _eye_frame(points)
    u, v = _to_frame(canvas.cols, canvas.rows, frame)
    eye_distance = frame[3]
    centre = np.array([eye_distance * rng.uniform(-1.1, 1.1), eye_distance * rng.uniform(-1.0, 1.7)])
    radius = eye_distance * rng.uniform(0.35, 0.75)
    is_hand = rng.uniform() < 0.5
    du, dv = u - centre[0], v - centre[1]
    angle = np.arctan2(dv, du)
    wobble = 1.0 + sum(
        rng.uniform(-1.0, 1.0) * (0.12 if is_hand else 0.25) / order * np.cos(order * angle + rng.uniform(0, 2 * np.pi))
        for order in (2, 3, 4, 5)
    )
    # Relative depth into the shape: 0 on a part's axis or centre, 1 on its rim.
    rim = np.hypot(du, dv) / (radius * wobble)
    if not is_hand:
        return _texture(canvas, rng), rim <= 1.0
    pointing = rng.uniform(0, 2 * np.pi)
    spread, length, width = rng.uniform(0.25, 0.5), radius * rng.uniform(0.9, 1.5), radius * rng.uniform(0.15, 0.25)
    for offset in np.linspace(-spread, spread, int(rng.integers(2, 5))):
        direction = np.array([np.cos(pointing + offset), np.sin(pointing + offset)])
        start = centre + 0.5 * radius * direction
        finger = _segment_distance(u, v, start, start + length * rng.uniform(0.8, 1.1) * direction) / width
        rim = np.minimum(rim, finger)
    skin = _SKIN_LIGHT + rng.uniform(0, 1) * (_SKIN_DARK - _SKIN_LIGHT)
    light = rng.uniform(-0.15, 0.15, 2)
    shade = 1.0 - rng.uniform(0.25, 0.45) * np.clip(rim, 0.0, 1.0) ** 3 + (light[0] * du + light[1] * dv) / radius
    return skin * shade[..., None] + rng.normal(0, 5, canvas.shape), rim <= 1.0


def _segment_distance(u: np.ndarray, v: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance of every point to the segment ``start``-``end`` (in frame coordinates)."""
    along = end - start
    t = np.clip(((u - start[0]) * along[0] + (v - start[1]) * along[1]) / max(float(along @ along), 1e-9), 0.0, 1.0)
    return np.hypot(u - start[0] - t * along[0], v - start[1] - t * along[1])


def _face_mask(points: np.ndarray, canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A pleated medical mask from the nose bridge to below the chin, optionally with ear loops."""
    frame = _eye_frame(points)
    u, v = _to_frame(canvas.cols, canvas.rows, frame)
    eye_distance = frame[3]
    nose_u, nose_v = _to_frame(points[2, 0], points[2, 1], frame)
    _, mouth_v = _to_frame(points[3:, 0].mean(), points[3:, 1].mean(), frame)
    half_width = eye_distance * rng.uniform(0.85, 1.1)
    across = ((u - nose_u) / half_width) ** 2
    top = nose_v - eye_distance * rng.uniform(0.25, 0.45) + eye_distance * rng.uniform(0.05, 0.25) * across
    bottom = mouth_v + eye_distance * rng.uniform(0.45, 0.8) - eye_distance * rng.uniform(0.0, 0.2) * across
    height = np.maximum(bottom - top, 1e-6)
    bulge = 0.8 + 0.2 * np.sin(np.pi * np.clip((v - top) / height, 0.0, 1.0))
    body = (v >= top) & (v <= bottom) & (np.abs(u - nose_u) <= half_width * bulge)
    mask = body.copy()
    if rng.uniform() < 0.6:
        thickness = rng.uniform(0.5, 1.0)
        top_v, bottom_v = nose_v - eye_distance * 0.3, mouth_v + eye_distance * 0.5
        ear_v = eye_distance * rng.uniform(0.2, 0.45)
        for side in (-1.0, 1.0):
            ear = np.array([nose_u + side * eye_distance * rng.uniform(1.25, 1.45), ear_v])
            for corner_v in (top_v, bottom_v):
                corner = np.array([nose_u + side * 0.8 * half_width, corner_v])
                mask |= _segment_distance(u, v, corner, ear) <= thickness
    fabric = _MASK_COLOURS[rng.integers(len(_MASK_COLOURS))] * rng.uniform(0.85, 1.05)
    pleats = 1.0 - 0.12 * (np.sin(2 * np.pi * (v - top) / (height / rng.uniform(3.0, 4.5))) > 0.6)
    colours = fabric * pleats[..., None] + rng.normal(0, 4, canvas.shape)
    loop = np.broadcast_to(fabric * 0.95, colours.shape)
    return np.where(body[..., None], colours, loop), mask


_PLACED_BY_LANDMARKS = {"sunglasses": _sunglasses, "scarf": _scarf, "hand": _hand, "face_mask": _face_mask}
