import numpy as np
import pytest

from rtpca_jax.data import camera as c


def test_quaternion_matrix_closed_forms():
    np.testing.assert_allclose(c.quat_to_matrix([1, 0, 0, 0]), np.eye(3))
    # 90 degrees about z: (cos 45, 0, 0, sin 45) maps x to y
    r = c.quat_to_matrix([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    np.testing.assert_allclose(r @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    for cam in c.h36m_cameras("S1"):
        np.testing.assert_allclose(cam.rotation.T @ cam.rotation, np.eye(3), atol=1e-6)
        assert np.isclose(np.linalg.det(cam.rotation), 1.0, atol=1e-6)


def test_world_camera_round_trip_and_camera_centre_maps_to_origin():
    cam = c.h36m_cameras("S9")[2]
    x = np.random.default_rng(0).normal(size=(10, 17, 3))
    np.testing.assert_allclose(c.camera_to_world(cam.to_camera(x), cam.rotation, cam.translation), x, atol=1e-10)
    np.testing.assert_allclose(cam.to_camera(cam.translation), 0, atol=1e-12)
    # distances are preserved
    np.testing.assert_allclose(np.linalg.norm(cam.to_camera(x) - cam.to_camera(x[:, :1]), axis=-1),
                               np.linalg.norm(x - x[:, :1], axis=-1), atol=1e-10)


def test_h36m_cameras_look_at_the_capture_centre():
    """Each camera's optical axis passes near the middle of the capture area,
    4-7.5 m away, with world up (+z) pointing up in the image (y down)."""
    for subject in ("S1", "S5", "S11"):
        for cam in c.h36m_cameras(subject):
            p = cam.to_camera(np.array([0.0, 0.0, 1.0]))
            assert 4.0 < p[2] < 7.5
            assert np.hypot(p[0], p[1]) < 1.5
            assert cam.to_camera(np.array([0.0, 0.0, 2.0]))[1] < p[1]


def test_normalisation_hand_computed_and_round_trip():
    # centre of a 1000x1002 image: x -> 0, y -> 501/1000*2 - 1.002 = 0
    np.testing.assert_allclose(c.normalize_screen(np.array([500.0, 501.0]), 1000, 1002), [0, 0], atol=1e-12)
    np.testing.assert_allclose(c.normalize_screen(np.array([0.0, 0.0]), 640, 480), [-1, -0.75])
    np.testing.assert_allclose(c.normalize_screen(np.array([640.0, 480.0]), 640, 480), [1, 0.75])
    uv = np.random.default_rng(0).uniform(0, 1000, (5, 2))
    np.testing.assert_allclose(c.image_coordinates(c.normalize_screen(uv, 1000, 1002), 1000, 1002), uv)


def test_projection_pinhole_and_distortion_closed_form():
    f, cx, cy = 2.0, 0.1, -0.05
    intr = np.array([f, f, cx, cy, 0, 0, 0, 0, 0])
    x = np.array([[0.3, -0.2, 2.0]])
    np.testing.assert_allclose(c.project(x, intr), [[f * 0.15 + cx, f * -0.1 + cy]])
    # k1 = 0.1, p = (0.01, 0.02): xd = x (1 + k1 r2 + p1 x + p2 y) + p r2
    intr = np.array([1, 1, 0, 0, 0.1, 0, 0, 0.01, 0.02])
    u, v = 0.15, -0.1
    r2 = u * u + v * v
    s = 1 + 0.1 * r2 + 0.01 * u + 0.02 * v
    np.testing.assert_allclose(c.project(x, intr), [[u * s + 0.01 * r2, v * s + 0.02 * r2]], rtol=1e-12)


def test_pixel_intrinsics_agree_with_normalised_projection():
    cam = c.h36m_intrinsic_cameras()[0]
    x = np.array([[0.2, 0.1, 3.0]])
    u = cam.focal[0] * 0.2 / 3.0 + cam.center[0]
    v = cam.focal[1] * 0.1 / 3.0 + cam.center[1]
    pinhole = c.project(x, cam.intrinsics, distortion=False)
    np.testing.assert_allclose(pinhole, c.normalize_screen(np.array([[u, v]]), cam.res_w, cam.res_h), rtol=1e-6)


def test_look_at_points_z_at_target_and_keeps_up_up():
    r = c.look_at([5.0, 0.0, 1.5], [0.0, 0.0, 1.5])
    x = c.world_to_camera(np.array([[0.0, 0.0, 1.5], [0.0, 0.0, 2.5]]), r, np.array([5.0, 0.0, 1.5]))
    np.testing.assert_allclose(x[0], [0, 0, 5], atol=1e-12)
    assert x[1, 1] < 0  # world up is image up (y down)


def test_unknown_subject_raises():
    with pytest.raises(ValueError, match="S2"):
        c.h36m_cameras("S2")
