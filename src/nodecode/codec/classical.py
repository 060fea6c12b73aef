"""Classical codecs (JPEG, JPEG 2000, WebP, AVIF) through Pillow, in memory, matched to a target bits per pixel."""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from nodecode.errors import NodecodeError

CLASSICAL_CODECS = ("jpeg", "jpeg2000", "webp", "avif")

# Integer quality ranges searched by match_bpp (JPEG 2000 is searched over its compression ratio instead).
QUALITY_RANGE = {"jpeg": (1, 100), "webp": (0, 100), "avif": (0, 100)}
J2K_RATIO_RANGE = (1.0, 4000.0)  # compression ratio vs. raw 24-bit RGB; 4000 is 0.006 bpp
AVIF_SPEED = 5  # libaom speed, 0 (slowest) .. 10; see encode()
AVIF_HINT_SPEED = 8  # match_bpp first bisects AVIF at this fast speed, then refines near it at AVIF_SPEED
_FEATURE = {"jpeg": "jpg", "jpeg2000": "jpg_2000", "webp": "webp", "avif": "avif"}


def _check_image(img: np.ndarray) -> None:
    """Raise a NodecodeError unless img is a uint8 (H, W, 3) array."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise NodecodeError(f"codec input must be a uint8 HxWx3 array, got {desc}")


def _check_codec(codec: str) -> None:
    """Raise a NodecodeError for an unknown codec or one this Pillow was built without."""
    if codec not in CLASSICAL_CODECS:
        raise NodecodeError(f"unknown codec {codec!r} (choose from {', '.join(CLASSICAL_CODECS)})")
    if not features.check(_FEATURE[codec]):
        raise NodecodeError(f"this Pillow has no {codec} support")


def encode(img_uint8: np.ndarray, codec: str, quality: float) -> bytes:
    """Encode an RGB uint8 image; quality is 0-100 (jpeg 1-100), or for jpeg2000 the compression ratio vs 24 bpp."""
    # JPEG: libjpeg-turbo, 4:2:0, optimised Huffman tables (baseline, not progressive).
    # JPEG 2000: OpenJPEG, irreversible 9/7 wavelet + colour transform (ICT), one quality layer at rate
    #   24/quality bpp, raw codestream (.j2k: no JP2 box overhead). Pillow's defaults (5/3, no MCT) cost ~3 dB.
    # WebP: method 6 (slowest, best); lossy WebP is always 4:2:0.
    # AVIF: libaom through Pillow's AVIF plugin, 4:2:0, speed AVIF_SPEED = 5 (~0.4 s a Kodak image on 2 cores).
    #   On Kodak at 0.33 bpp speed 6 (Pillow's default) is 0.23 dB worse and speed 8 0.7 dB; speed 4 gained
    #   nothing measurable on a 6-image subset (within bpp-matching noise) and is slower still.
    _check_image(img_uint8)
    _check_codec(codec)
    return _encode(img_uint8, codec, quality, AVIF_SPEED)


def _encode(img: np.ndarray, codec: str, quality: float, avif_speed: int) -> bytes:
    """encode() without the input checks, AVIF speed given."""
    if codec == "jpeg2000":
        if not float(quality) >= 1.0:
            raise NodecodeError(f"jpeg2000 compression ratio must be >= 1, got {quality}")
    else:
        lo, hi = QUALITY_RANGE[codec]
        if quality != int(quality) or not lo <= quality <= hi:
            raise NodecodeError(f"{codec} quality must be an integer in {lo}..{hi}, got {quality}")
    im = Image.fromarray(img, "RGB")
    buf = io.BytesIO()
    if codec == "jpeg":
        im.save(buf, "JPEG", quality=int(quality), subsampling="4:2:0", optimize=True)
    elif codec == "jpeg2000":
        im.save(buf, "JPEG2000", no_jp2=True, irreversible=True, mct=1,
                quality_mode="rates", quality_layers=[float(quality)])
    elif codec == "webp":
        im.save(buf, "WEBP", quality=int(quality), method=6)
    else:
        im.save(buf, "AVIF", quality=int(quality), speed=avif_speed, subsampling="4:2:0")
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """Decode any of the codecs' bytes (format sniffed) to an RGB uint8 (H, W, 3) array."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise NodecodeError(f"cannot decode image bytes: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def bits_per_pixel(data: bytes, height: int, width: int) -> float:
    """Real rate of a file: len(data) * 8 / (H * W)."""
    return len(data) * 8 / (height * width)


def _closest(cache: dict, target: float):
    """The cached (quality, (data, bpp)) whose bpp is closest to target; ties go to the smaller file."""
    return min(cache.items(), key=lambda kv: (abs(kv[1][1] - target), kv[1][1]))


def _search_int(at, lo: int, hi: int, target: float, start: int | None = None) -> None:
    """Fill at()'s cache so it holds the adjacent qualities whose bpp straddle target (bpp ~non-decreasing in q)."""
    if start is None:
        if at(lo) >= target or at(hi) <= target:  # unreachable target: the extreme file is the answer
            return
    else:  # gallop out from the hint (1, 2, 4, ... steps) until the target is bracketed, then bisect
        q = min(max(start, lo), hi)
        up = at(q) < target
        step = 1
        while True:
            nq = min(q + step, hi) if up else max(q - step, lo)
            if nq == q:
                return  # ran into the end of the range: unreachable target
            if (at(nq) >= target) == up:
                lo, hi = (q, nq) if up else (nq, q)
                break
            q, step = nq, step * 2
    while hi - lo > 1:  # invariant: at(lo) < target <= at(hi)
        mid = (lo + hi) // 2
        if at(mid) < target:
            lo = mid
        else:
            hi = mid


def _match_int(img: np.ndarray, codec: str, target: float):
    """The integer quality whose file is closest to target bpp (AVIF: hinted by a fast-speed search first)."""
    h, w = img.shape[:2]

    def cached_encoder(speed: int):
        cache: dict[int, tuple[bytes, float]] = {}

        def at(q: int) -> float:
            if q not in cache:
                data = _encode(img, codec, q, speed)
                cache[q] = (data, bits_per_pixel(data, h, w))
            return cache[q][1]
        return at, cache

    lo, hi = QUALITY_RANGE[codec]
    start = None
    if codec == "avif" and AVIF_HINT_SPEED != AVIF_SPEED:  # fast encodes find the neighbourhood, ~3 slow ones refine
        at_fast, fast = cached_encoder(AVIF_HINT_SPEED)
        _search_int(at_fast, lo, hi, target)
        start = _closest(fast, target)[0]
    at, cache = cached_encoder(AVIF_SPEED)
    _search_int(at, lo, hi, target, start)
    q, (data, bpp) = _closest(cache, target)
    return data, bpp, q


def _match_j2k(img: np.ndarray, target: float, rel_tol: float = 0.002, max_iter: int = 12):
    """Search the JPEG 2000 compression ratio (ratio *= bpp / target steps, bisection fallback) for target bpp."""
    h, w = img.shape[:2]
    cache: dict[float, tuple[bytes, float]] = {}

    def at(r: float) -> float:
        if r not in cache:
            data = _encode(img, "jpeg2000", r, avif_speed=0)  # (unused for JPEG 2000)
            cache[r] = (data, bits_per_pixel(data, h, w))
        return cache[r][1]

    rmin, rmax = J2K_RATIO_RANGE
    r = min(max(24.0 / target, rmin), rmax)
    lo, hi = rmin, rmax  # bracket on the ratio: bpp(lo) >= target >= bpp(hi) (bpp falls as the ratio grows)
    for _ in range(max_iter):
        b = at(r)
        if abs(b - target) <= rel_tol * target:
            break
        if b > target:
            lo = max(lo, r)
        else:
            hi = min(hi, r)
        nxt = r * b / target  # bpp ~ 24 / ratio (+ headers): scale the ratio by the miss
        if not lo < nxt < hi:
            nxt = math.sqrt(lo * hi)
        if hi / lo < 1.0005 or nxt in cache:
            break
        r = nxt
    for end in (rmin, rmax):  # a target outside the reachable range: consider the extreme file too
        if (end == rmin and lo == rmin) or (end == rmax and hi == rmax):
            if abs(_closest(cache, target)[1][1] - target) > rel_tol * target:
                at(end)
    q, (data, bpp) = _closest(cache, target)
    return data, bpp, q


def match_bpp(img: np.ndarray, codec: str, target_bpp: float) -> tuple[bytes, float, float]:
    """The codec's file closest in real bpp to target_bpp: (data, bpp, quality); unreachable targets give the extreme file."""
    _check_image(img)
    _check_codec(codec)
    if not target_bpp > 0:
        raise NodecodeError(f"target bpp must be positive, got {target_bpp}")
    if codec == "jpeg2000":
        return _match_j2k(img, target_bpp)
    return _match_int(img, codec, target_bpp)
