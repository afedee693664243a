"""Camera geometry: world <-> camera, projection with distortion, screen
normalisation, and the public Human3.6M / HumanEva-I camera parameters.

Conventions (those of the standard VideoPose3D files):

* A camera has an orientation ``R`` (camera-to-world rotation, 3x3) and a
  position ``t`` in world coordinates (metres).  ``world_to_camera(X) =
  R^T (X - t)``; camera axes are x right, y down, z forward.
* Quaternions are ``(w, x, y, z)``.
* Normalised screen coordinates: ``u' = u / w * 2 - 1``, ``v' = v / w * 2 - h / w``
  (x maps to [-1, 1], aspect ratio kept).
* Intrinsics vectors are ``[fx, fy, cx, cy, k1, k2, k3, p1, p2]`` in normalised
  screen units (focal lengths ``f / w * 2``, centre normalised as above), so
  :func:`project` gives normalised screen coordinates directly.
* Distortion is Human3.6M's model: with ``x = X / Z``, ``r2 = |x|^2``,
  ``radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3``, ``tan = p1 x + p2 y``:
  ``x_d = x (radial + tan) + p r2``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def quat_to_matrix(q) -> np.ndarray:
    """Rotation matrix of a unit quaternion ``(w, x, y, z)``."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def world_to_camera(x: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """``x[..., 3]`` world -> camera frame: ``R^T (x - t)``."""
    return (np.asarray(x) - translation) @ rotation


def camera_to_world(x: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    return np.asarray(x) @ rotation.T + translation


def normalize_screen(uv: np.ndarray, w: int, h: int) -> np.ndarray:
    """Pixels -> normalised screen coordinates (x in [-1, 1], aspect kept)."""
    uv = np.asarray(uv)
    return uv / w * 2 - np.array([1.0, h / w], dtype=uv.dtype)


def image_coordinates(xy: np.ndarray, w: int, h: int) -> np.ndarray:
    """Normalised screen coordinates -> pixels."""
    xy = np.asarray(xy)
    return (xy + np.array([1.0, h / w], dtype=xy.dtype)) * w / 2


def project(x_cam: np.ndarray, intrinsics: np.ndarray, distortion: bool = True) -> np.ndarray:
    """Camera-frame points ``[..., 3]`` -> 2D with the 9-vector ``intrinsics``."""
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    f, c, k, p = intrinsics[0:2], intrinsics[2:4], intrinsics[4:7], intrinsics[7:9]
    z = np.clip(x_cam[..., 2:3], 1e-6, None)
    xy = x_cam[..., :2] / z
    if distortion:
        r2 = np.sum(xy ** 2, axis=-1, keepdims=True)
        radial = 1 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3
        tan = np.sum(p * xy, axis=-1, keepdims=True)
        xy = xy * (radial + tan) + p * r2
    return (f * xy + c).astype(x_cam.dtype)


@dataclasses.dataclass(frozen=True)
class Camera:
    """A camera in pixel units plus its pose in the world (metres)."""

    res_w: int
    res_h: int
    focal: tuple[float, float]
    center: tuple[float, float]
    radial: tuple[float, float, float] = (0.0, 0.0, 0.0)
    tangential: tuple[float, float] = (0.0, 0.0)
    rotation: np.ndarray | None = None  # camera-to-world, 3x3
    translation: np.ndarray | None = None  # camera position, metres

    @property
    def intrinsics(self) -> np.ndarray:
        """``[fx, fy, cx, cy, k1, k2, k3, p1, p2]`` in normalised screen units."""
        f = np.asarray(self.focal) / self.res_w * 2
        c = normalize_screen(np.asarray(self.center, dtype=np.float64), self.res_w, self.res_h)
        return np.concatenate([f, c, self.radial, self.tangential]).astype(np.float32)

    def to_camera(self, x_world: np.ndarray) -> np.ndarray:
        if self.rotation is None:
            raise ValueError("camera has no extrinsics")
        return world_to_camera(x_world, self.rotation, self.translation)

    def project(self, x_cam: np.ndarray) -> np.ndarray:
        """Camera-frame points -> normalised screen coordinates."""
        return project(x_cam, self.intrinsics)


def look_at(position, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world rotation of a camera at ``position`` looking at ``target``
    (x right, y down, z forward; world ``up`` maps to image up)."""
    position, target, up = (np.asarray(a, dtype=np.float64) for a in (position, target, up))
    forward = target - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=1)


# ----------------------------------------------------------------------------
# Public Human3.6M camera parameters (pixels, millimetres), cameras
# 54138969, 55011271, 58860488, 60457274 in the order of the dataset files.

_H36M_INTRINSICS = (
    # res_w, res_h, focal, center, radial (k1, k2, k3), tangential (p1, p2)
    (1000, 1002, (1145.0494384765625, 1143.7811279296875), (512.54150390625, 515.4514770507812),
     (-0.20709891617298126, 0.24777518212795258, -0.0030751503072679043),
     (-0.0009756988729350269, -0.00142447161488235)),
    (1000, 1000, (1149.6756591796875, 1147.5916748046875), (508.8486328125, 508.0649108886719),
     (-0.1942136287689209, 0.2404085397720337, 0.006819975562393665),
     (-0.0016190266469493508, -0.0027408944442868233)),
    (1000, 1000, (1149.1407470703125, 1148.7989501953125), (519.8158569335938, 501.40264892578125),
     (-0.2083381861448288, 0.25548800826072693, -0.0024604974314570427),
     (0.0014843869721516967, -0.0007599993259645998)),
    (1000, 1002, (1145.5113525390625, 1144.77392578125), (514.9682006835938, 501.88201904296875),
     (-0.198384091258049, 0.21832367777824402, -0.008947807364165783),
     (-0.0005872055771760643, -0.0018133620033040643)),
)

# subject -> per camera (orientation quaternion w, x, y, z; position in mm)
_H36M_EXTRINSICS = {
    "S1": (
        ((0.1407056450843811, -0.1500701755285263, -0.755240797996521, 0.6223280429840088),
         (1841.1070556640625, 4955.28466796875, 1563.4454345703125)),
        ((0.6157187819480896, -0.764836311340332, -0.14833825826644897, 0.11794740706682205),
         (1761.278564453125, -5078.0068359375, 1606.2650146484375)),
        ((0.14651472866535187, -0.14647851884365082, 0.7653023600578308, -0.6094175577163696),
         (-1846.7777099609375, 5215.04638671875, 1491.972412109375)),
        ((0.5834008455276489, -0.7853162288665771, 0.14548823237419128, -0.14749594032764435),
         (-1794.7896728515625, -3722.698974609375, 1574.8927001953125)),
    ),
    "S5": (
        ((0.1467377245426178, -0.162370964884758, -0.7551892995834351, 0.6178938746452332),
         (2097.3916015625, 4880.94482421875, 1605.732421875)),
        ((0.6159758567810059, -0.7626792192459106, -0.15728192031383514, 0.1189815029501915),
         (2031.7008056640625, -5167.93310546875, 1612.923095703125)),
        ((0.14291371405124664, -0.12907841801643372, 0.7678384780883789, -0.6110143065452576),
         (-1620.5948486328125, 5171.65869140625, 1496.43701171875)),
        ((0.5920479893684387, -0.7814217805862427, 0.1274748593568802, -0.15036417543888092),
         (-1637.1737060546875, -3867.3173828125, 1547.033203125)),
    ),
    "S6": (
        ((0.1337897777557373, -0.15692396461963654, -0.7571090459823608, 0.6198879480361938),
         (1935.4517822265625, 4950.24560546875, 1618.0838623046875)),
        ((0.6147197484970093, -0.7628812789916992, -0.16174767911434174, 0.11819244921207428),
         (1969.803955078125, -5128.73876953125, 1632.77880859375)),
        ((0.1529948115348816, -0.13529130816459656, 0.7646096348762512, -0.6112781167030334),
         (-1769.596435546875, 5185.361328125, 1476.993408203125)),
        ((0.5916101336479187, -0.7804774045944214, 0.12832270562648773, -0.1561593860387802),
         (-1721.668701171875, -3884.13134765625, 1540.4879150390625)),
    ),
    "S7": (
        ((0.1435241848230362, -0.1631336808204651, -0.7548328638076782, 0.6188824772834778),
         (1974.512939453125, 4926.3544921875, 1597.8326416015625)),
        ((0.6141672730445862, -0.7638262510299683, -0.1596645563840866, 0.1177929937839508),
         (1937.0584716796875, -5119.7900390625, 1631.5665283203125)),
        ((0.14550060033798218, -0.12874816358089447, 0.7660516500473022, -0.6127139329910278),
         (-1741.8111572265625, 5208.24951171875, 1464.8245849609375)),
        ((0.5912848114967346, -0.7821764349937439, 0.12445473670959473, -0.15196487307548523),
         (-1734.7105712890625, -3832.42138671875, 1548.5830078125)),
    ),
    "S8": (
        ((0.14110587537288666, -0.15589867532253265, -0.7561917304992676, 0.619644045829773),
         (2150.65185546875, 4896.1611328125, 1611.9046630859375)),
        ((0.6169601678848267, -0.7647668123245239, -0.14846350252628326, 0.11158157885074615),
         (2219.965576171875, -5148.453125, 1613.0440673828125)),
        ((0.1471444070339203, -0.13377119600772858, 0.7670128345489502, -0.6100369691848755),
         (-1571.2215576171875, 5137.0185546875, 1498.1761474609375)),
        ((0.5927824378013611, -0.7825870513916016, 0.12147816270589828, -0.14631995558738708),
         (-1476.913330078125, -3896.7412109375, 1547.97216796875)),
    ),
    "S9": (
        ((0.15540587902069092, -0.15548215806484222, -0.7532095313072205, 0.6199594736099243),
         (2044.45849609375, 4935.1171875, 1481.2275390625)),
        ((0.618784487247467, -0.7634735107421875, -0.14132238924503326, 0.11933968216180801),
         (1990.959716796875, -5123.810546875, 1568.8048095703125)),
        ((0.13357827067375183, -0.1367100477218628, 0.7689454555511475, -0.6100738644599915),
         (-1670.9921875, 5211.98583984375, 1528.387939453125)),
        ((0.5879399180412292, -0.7823407053947449, 0.1427614390850067, -0.14794869720935822),
         (-1696.04345703125, -3827.099853515625, 1591.4127197265625)),
    ),
    "S11": (
        ((0.15232472121715546, -0.15442320704460144, -0.7547563314437866, 0.6191070079803467),
         (2098.440185546875, 4926.5546875, 1500.278564453125)),
        ((0.6189449429512024, -0.7600917220115662, -0.15300633013248444, 0.1255258321762085),
         (2083.182373046875, -4912.1728515625, 1561.07861328125)),
        ((0.14943228662014008, -0.15650227665901184, 0.7681233882904053, -0.6026304364204407),
         (-1609.8153076171875, 5177.3359375, 1537.896728515625)),
        ((0.5894251465797424, -0.7818877100944519, 0.13991211354732513, -0.14715361595153809),
         (-1590.738037109375, -3854.1689453125, 1578.017578125)),
    ),
}

# HumanEva-I: 640x480 colour cameras C1-C3; only extrinsics are public in the
# standard files' toolchain (2D comes with the files).
_HUMANEVA_EXTRINSICS = {
    "S1": (
        ((0.424207, -0.4983646, -0.5802981, 0.4847012), (4062.227, 663.2477, 1528.397)),
        ((0.6503354, -0.7481602, -0.0919284, 0.0941766), (844.8131, -3805.2092, 1504.9929)),
        ((0.0664734, -0.0690535, 0.7416416, -0.6639132), (-797.67377, 3916.3174, 1433.6602)),
    ),
    "S2": (
        ((0.4214752, -0.4961493, -0.5838273, 0.4851187), (4112.9121, 626.4929, 1545.2988)),
        ((0.6501393, -0.7476588, -0.0954617, 0.0959808), (923.5740, -3877.9243, 1504.5518)),
        ((0.0699353, -0.0712403, 0.7421637, -0.662742), (-781.4915, 3838.8853, 1444.9929)),
    ),
    "S3": (
        ((0.424207, -0.4983646, -0.5802981, 0.4847012), (4062.2271, 663.2477, 1528.3970)),
        ((0.6503354, -0.7481602, -0.0919284, 0.0941766), (844.8131, -3805.2092, 1504.9929)),
        ((0.0664734, -0.0690535, 0.7416416, -0.6639132), (-797.6738, 3916.3174, 1433.6602)),
    ),
}


def h36m_intrinsic_cameras() -> list[Camera]:
    """The four Human3.6M cameras without extrinsics (shared by all subjects)."""
    return [Camera(w, h, f, c, k, p) for (w, h, f, c, k, p) in _H36M_INTRINSICS]


def h36m_cameras(subject: str) -> list[Camera]:
    """The four Human3.6M cameras of ``subject`` (S1, S5-S9, S11)."""
    if subject not in _H36M_EXTRINSICS:
        raise ValueError(
            f"no Human3.6M camera extrinsics for subject {subject!r}; known: {sorted(_H36M_EXTRINSICS)}"
        )
    return [
        dataclasses.replace(cam, rotation=quat_to_matrix(q), translation=np.asarray(t) / 1000.0)
        for cam, (q, t) in zip(h36m_intrinsic_cameras(), _H36M_EXTRINSICS[subject])
    ]


def humaneva_cameras(subject: str) -> list[Camera]:
    """HumanEva-I cameras C1-C3 of ``subject`` ('S1'..'S3', with or without the
    ``Train/``/``Validate/`` prefix). Focal length and centre are unknown to the
    standard files; a nominal pinhole (f = image width) is recorded."""
    base = subject.split("/")[-1]
    if base not in _HUMANEVA_EXTRINSICS:
        raise ValueError(
            f"no HumanEva-I camera extrinsics for subject {subject!r}; known: {sorted(_HUMANEVA_EXTRINSICS)}"
        )
    return [
        Camera(640, 480, (640.0, 640.0), (320.0, 240.0), rotation=quat_to_matrix(q),
               translation=np.asarray(t) / 1000.0)
        for q, t in _HUMANEVA_EXTRINSICS[base]
    ]
