import numpy as np

from hasten.embedded.shapes import data as shapes_data


def test_classes_are_shape_by_colour():
    assert shapes_data.NUM_CLASSES >= 12
    assert len(set(shapes_data.CLASS_NAMES)) == shapes_data.NUM_CLASSES
    assert shapes_data.CLASS_NAMES[0] == "red circle"


def test_batch_shape_range_and_determinism():
    a, la = shapes_data.make_batch(seed=3, batch_size=16)
    b, lb = shapes_data.make_batch(seed=3, batch_size=16)
    c, _ = shapes_data.make_batch(seed=4, batch_size=16)
    assert a.shape == (16, 3, 32, 32) and a.dtype == np.float32
    assert a.min() >= -1 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert np.abs(a - c).max() > 0.5


def test_shape_is_drawn_in_the_class_colour():
    labels = np.arange(shapes_data.NUM_CLASSES)
    images, _ = shapes_data.make_batch(seed=0, batch_size=len(labels), labels=labels)
    palette = np.asarray(list(shapes_data.COLOURS.values())) * 2 - 1
    for image, label in zip(images, labels):
        colour = palette[label % len(shapes_data.COLOURS)]
        distance = np.abs(image - colour[:, None, None]).max(0)  # (H, W)
        # The shape covers a real area (tens of pixels) in (nearly) its class colour.
        assert (distance < 0.25).sum() >= 30, shapes_data.CLASS_NAMES[label]


def test_stream_is_resumable():
    first = shapes_data.batches(seed=5, batch_size=4)
    next(first)
    second_of_first = next(first)
    resumed = next(shapes_data.batches(seed=5, batch_size=4, start=1))
    np.testing.assert_array_equal(second_of_first[0], resumed[0])
