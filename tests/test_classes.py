from stream.classes import FLIPPED_Y_CLASS, GESTURE_CLASSES, MIRRORED_CLASS


def test_mirror_and_flip_are_involutions_that_keep_names_consistent():
    for table in (MIRRORED_CLASS, FLIPPED_Y_CLASS):
        assert sorted(table) == list(range(len(GESTURE_CLASSES)))
        assert all(table[table[k]] == k for k in range(len(table)))
    for k, name in enumerate(GESTURE_CLASSES):
        mirrored = GESTURE_CLASSES[MIRRORED_CLASS[k]]
        if "right" in name:
            assert "left" in mirrored
        if name.endswith(" clockwise") and "counter" not in name:
            assert "counter-clockwise" in mirrored
