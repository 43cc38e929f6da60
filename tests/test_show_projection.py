"""tools/show_projection.py --diagram: the labelled picture of docs/viewpoint-map.md.

The diagram's colours say which cube face each map pixel shows, so the picture is checked against
the layout of the spec (docs/viewpoint-map.md section 3) with face centres written out here.
"""

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from viewpoint_jax import geometry

TOOL = Path(__file__).resolve().parents[1] / "tools" / "show_projection.py"
MAP_SIZE = 128

# Face centres of the world frame (x right, y up, z forward), spec section 2.
FACE_CENTRES = {
    "F": (0, 0, 1),
    "R": (1, 0, 0),
    "B": (0, 0, -1),
    "L": (-1, 0, 0),
    "U": (0, 1, 0),
    "D": (0, -1, 0),
}
# Subregion of each 2 x 2 grid position, spec section 3.
GRID = {(0, 0): "F", (0, 1): "R", (1, 1): "B", (1, 0): "L"}


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("show_projection", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def diagram(tool):
    return tool.viewpoint_diagram(MAP_SIZE)


def classify(tool, image: np.ndarray, tolerance: float = np.inf) -> np.ndarray:
    """Name of the nearest diagram colour of every pixel: a face, "letter" or "grid"; "" where
    that colour is farther than `tolerance` (blends along lines and letters)."""
    names = [*tool.FACE_COLOURS, "letter", "grid"]
    palette = np.array([*tool.FACE_COLOURS.values(), tool.LETTER_COLOUR, tool.GRID_COLOUR])
    distance = np.linalg.norm(image[..., None, :].astype(float) - palette, axis=-1)
    labels = np.array(names)[np.argmin(distance, axis=-1)]
    return np.where(distance.min(axis=-1) <= tolerance, labels, "")


def majority_face(labels: np.ndarray) -> str:
    faces = labels[np.isin(labels, list(FACE_CENTRES))]
    values, counts = np.unique(faces, return_counts=True)
    return str(values[np.argmax(counts)])


def test_cli_writes_the_diagram_png(tool, diagram, tmp_path):
    png = tmp_path / "viewpoint-map.png"
    assert tool.run_tool(diagram=str(png), map_size=MAP_SIZE) == 0
    written = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(written, diagram["viewpoint_map"])
    assert diagram["faces"].shape == (6, MAP_SIZE, MAP_SIZE, 3)
    assert diagram["erp"].shape == (2 * MAP_SIZE, 4 * MAP_SIZE, 3)


def test_cli_rejects_mixed_modes(tool, tmp_path):
    with pytest.raises(tool.UserError, match="--diagram takes the PNG path"):
        tool.run_tool(diagram=str(tmp_path / "a.png"), out=str(tmp_path))
    with pytest.raises(tool.UserError, match="exactly one of"):
        tool.run_tool(diagram=str(tmp_path / "a.png"), scene="room")
    with pytest.raises(tool.UserError, match="--out is required"):
        tool.run_tool(scene="room")


def test_each_subregion_centre_shows_its_face_and_letter(tool, diagram):
    labels = classify(tool, diagram["viewpoint_map"])
    r = MAP_SIZE // 2
    k = MAP_SIZE // 16
    for (row, col), face in GRID.items():
        centre = labels[
            row * r + r // 2 - k : row * r + r // 2 + k, col * r + r // 2 - k : col * r + r // 2 + k
        ]
        assert majority_face(centre) == face, (row, col)
        assert (centre == "letter").mean() > 0.1, f"no letter {face} at its subregion centre"
    # The layout the package reports agrees.
    for face, (rows, cols) in geometry.subregion_slices(MAP_SIZE).items():
        assert GRID[(rows.start // r, cols.start // r)] == face


def test_map_centre_is_down_and_corners_are_up(tool, diagram):
    labels = classify(tool, diagram["viewpoint_map"])
    m, k = MAP_SIZE, MAP_SIZE // 8
    centre = labels[m // 2 - k : m // 2 + k, m // 2 - k : m // 2 + k]
    assert majority_face(centre) == "D"
    assert (centre == "letter").mean() > 0.1  # the D drawn whole in the middle
    for corner in (labels[:k, :k], labels[:k, -k:], labels[-k:, :k], labels[-k:, -k:]):
        assert majority_face(corner) == "U"
        assert (corner == "letter").mean() > 0.05  # one of U's four letters in every corner


def test_colours_follow_the_directions_of_the_map(tool, diagram):
    """Every face-coloured pixel shows the face its direction (spec geometry) points into."""
    labels = classify(tool, diagram["viewpoint_map"], tolerance=24)
    d = np.asarray(geometry.viewpoint_directions(MAP_SIZE), np.float64)
    centres = np.array(list(FACE_CENTRES.values()), np.float64)
    want = np.array(list(FACE_CENTRES))[np.argmax(d @ centres.T, axis=-1)]
    painted = np.isin(labels, list(FACE_CENTRES))  # pure face colours, no blends with lines
    assert painted.mean() > 0.6
    # Only bilinear blends of two faces along their shared edge may disagree.
    assert (labels[painted] == want[painted]).mean() > 0.995


def letter_mask_upright(tool, image: np.ndarray, theta_deg: float) -> np.ndarray:
    """Letter pixels of the centre of a square crop, turned back by theta (spec: the face is
    turned counter-clockwise by theta), cropped to their bounding box."""
    size = image.shape[0]
    turn = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), -theta_deg, 1.0)
    upright = cv2.warpAffine(image, turn, (size, size), flags=cv2.INTER_NEAREST)
    letter = (
        classify(tool, upright[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4]) == "letter"
    )
    rows, cols = np.nonzero(letter)
    return letter[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


@pytest.mark.parametrize("face", ["F", "B", "L", "D"])
def test_letters_are_turned_by_theta(tool, diagram, face):
    """Each letter, turned back by its subregion's theta, reads upright and unmirrored (stem on
    the left; F's bar at the top, L's foot at the bottom). D lies in F's subregion's frame."""
    vp = diagram["viewpoint_map"]
    theta = {sub.face: sub.theta_deg for sub in geometry.SUBREGIONS}
    if face == "D":  # the map centre, without the subregion borders that cross it
        r = MAP_SIZE // 2
        vp = vp.copy()
        vp[r - 1 : r + 1] = vp[:, r - 1 : r + 1] = tool.GRID_COLOUR
        crop, theta_deg = vp[r // 2 : r // 2 + r, r // 2 : r // 2 + r], theta["F"]
    else:
        rows, cols = geometry.subregion_slices(MAP_SIZE)[face]
        crop, theta_deg = vp[rows, cols], theta[face]
    letter = letter_mask_upright(tool, crop, theta_deg)
    h, w = letter.shape
    assert letter[:, : w // 3].sum() > 1.3 * letter[:, w - w // 3 :].sum()  # stem on the left
    top, bottom = letter[: h // 5].sum(), letter[h - h // 5 :].sum()
    if face == "F":
        assert top > 1.5 * bottom
    if face == "L":
        assert bottom > 1.5 * top
