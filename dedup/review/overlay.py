"""A pair's two images aligned by the transform verification fits (ORB keypoints, RANSAC: search/local_features.py),
shown as one picture: the first image laid over the second at half strength, and their difference. One capture,
edited, blends sharp and its difference is dark but for the edit (a caption, a border); two shots of one scene show
ghosts where the subject moved, and light up there in the difference."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dedup.search import local_features
from dedup.search.relations import ALIGNED, best_alignment, fitted_affine

GAP = 8  # pixels between the two panels
OUTSIDE = 0.3  # the second image's brightness where the first does not reach


def aligned_pair(first: Image.Image, second: Image.Image) -> Image.Image | None:
    """The blend and the difference side by side, in the second image's frame at the size keypoints are matched
    (the affine transform that fits the inliers, as relations measures the overlap: a stretched copy lines up); None where the two do not align (fewer than relations.ALIGNED inliers, the mirror image tried too)."""
    import cv2

    first, second = first.convert("RGB"), second.convert("RGB")
    aligned, _, mirrored = best_alignment(
        local_features.features(first, mirrored=True), local_features.features(second), ALIGNED
    )
    if aligned.inliers < ALIGNED or aligned.matrix is None:
        return None
    source = _as_matched(first.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else first)
    target = _as_matched(second).astype(np.float32)
    size = (target.shape[1], target.shape[0])
    inverse = _refined(source, target, cv2.invertAffineTransform(fitted_affine(aligned)))
    backwards = cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(source, inverse, size, flags=cv2.INTER_LINEAR | backwards).astype(np.float32)
    inside = cv2.warpAffine(np.ones(source.shape[:2], np.uint8), inverse, size, flags=cv2.INTER_NEAREST | backwards) > 0
    blend = np.where(inside[..., None], (warped + target) / 2, target * OUTSIDE)
    # blurred first, so that resampling's one-pixel shifts at edges do not light up the difference
    moved = np.abs(
        cv2.GaussianBlur(warped.mean(axis=2), (0, 0), 1.5) - cv2.GaussianBlur(target.mean(axis=2), (0, 0), 1.5)
    )
    difference = np.where(inside, np.clip(moved * 2, 0, 255), 0)
    panels = np.zeros((size[1], 2 * size[0] + GAP, 3), np.uint8) + 255
    panels[:, : size[0]] = blend.astype(np.uint8)
    panels[:, size[0] + GAP :] = difference.astype(np.uint8)[..., None]
    picture = Image.fromarray(panels)
    _note(picture, f"{aligned.inliers} keypoints agree" + (", mirrored" if mirrored else ""))
    return picture


def _refined(source: np.ndarray, target: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """The affine map from the second image's pixels to the first's, refined from the keypoints' fit by dense
    alignment of the gray levels (ECC): keypoints place it within a pixel or two, and fine texture (a mesh, leaves)
    lights up the difference at that much. Unchanged where ECC does not converge."""
    import cv2

    first = cv2.cvtColor(source, cv2.COLOR_RGB2GRAY).astype(np.float32)
    second = cv2.cvtColor(target.astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32)
    start = inverse.astype(np.float32)
    try:
        _, refined = cv2.findTransformECC(
            second,
            first,
            start.copy(),
            cv2.MOTION_AFFINE,
            (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-5),
            np.full(first.shape, 255, np.uint8),  # every pixel of the first image counts
            5,
        )
    except cv2.error:
        return start
    moved = np.abs(refined[:, 2] - start[:, 2]).max()
    return refined if moved < 0.1 * max(source.shape[:2]) else start  # a jump that far is a wrong optimum


def _as_matched(image: Image.Image) -> np.ndarray:
    """RGB pixels at the size local_features matches keypoints at (its points are in these pixels)."""
    scale = local_features.MAX_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return np.asarray(image)


def _note(picture: Image.Image, text: str) -> None:
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default(size=12)
    left, top, right, bottom = draw.textbbox((4, 4), text, font=font)
    draw.rectangle((left - 3, top - 3, right + 3, bottom + 3), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 255), font=font)


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
