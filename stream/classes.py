"""The 11 DVS128 Gesture classes, in the data set's order (file label k+1 is index k here).

Left and right are the subject's own (the subject faces the camera); clockwise is as seen by the
camera. Mirroring a recording left-right (x -> width-1-x) turns each class into ``MIRRORED_CLASS[k]``:
a right-hand wave becomes a left-hand wave, and a mirrored clockwise circle turns counter-clockwise,
so "right arm clockwise" becomes "left arm counter-clockwise".
"""

from __future__ import annotations

GESTURE_CLASSES: tuple[str, ...] = (
    "hand clapping",
    "right hand wave",
    "left hand wave",
    "right arm clockwise",
    "right arm counter-clockwise",
    "left arm clockwise",
    "left arm counter-clockwise",
    "arm roll",
    "air drums",
    "air guitar",
    "other gestures",
)

MIRRORED_CLASS: tuple[int, ...] = (0, 2, 1, 6, 5, 4, 3, 7, 8, 9, 10)

# Flipping y (upside down) keeps left/right but reverses the sense of rotation.
FLIPPED_Y_CLASS: tuple[int, ...] = (0, 1, 2, 4, 3, 6, 5, 7, 8, 9, 10)

NO_GESTURE = "no gesture"
