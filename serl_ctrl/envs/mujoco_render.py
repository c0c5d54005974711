"""Headless MuJoCo rendering that does not depend on import order.

``mujoco.Renderer`` picks its OpenGL platform once, when ``mujoco`` is first imported, from
``MUJOCO_GL``; a program (or a test) that imported mujoco before setting it gets GLFW, which needs
a display. This renderer chooses its own headless context (``MUJOCO_GL`` if it names ``egl`` or
``osmesa``, else EGL with OSMesa as the fallback) and draws with the plain ``mjr_*`` calls.
Shadows are off in our models: on a CPU the default 4096 shadow map costs ~25x the frame time.
"""

from __future__ import annotations

import os

import mujoco
import numpy as np

_CONTEXT_CLASS = None


def _gl_context_class():
    """The first headless GL context class that imports: MUJOCO_GL's choice, then EGL, OSMesa."""
    global _CONTEXT_CLASS
    if _CONTEXT_CLASS is not None:
        return _CONTEXT_CLASS
    wanted = os.environ.get("MUJOCO_GL", "").lower()
    order = [wanted] if wanted in ("egl", "osmesa") else []
    order += [p for p in ("egl", "osmesa") if p not in order]
    errors = []
    for platform in order:
        try:
            if platform == "egl":
                from mujoco.egl import GLContext
            else:
                from mujoco.osmesa import GLContext
            ctx = GLContext(16, 16)  # prove that a context can actually be made
            ctx.free()
            _CONTEXT_CLASS = GLContext
            return GLContext
        except Exception as exc:  # noqa: BLE001 - try the next platform, report all at the end
            errors.append(f"{platform}: {exc}")
    raise RuntimeError(
        "no headless OpenGL for MuJoCo rendering (" + "; ".join(errors) + "). "
        "Install libegl1 + libegl-mesa0 or libosmesa6 (scripts/install.sh does), or set MUJOCO_GL."
    )


class OffscreenRenderer:
    """Renders RGB images of one model from named cameras, at one size."""

    def __init__(self, model: mujoco.MjModel, width: int, height: int) -> None:
        if width > model.vis.global_.offwidth or height > model.vis.global_.offheight:
            raise ValueError(
                f"render size {width}x{height} exceeds the model's offscreen buffer "
                f"{model.vis.global_.offwidth}x{model.vis.global_.offheight}"
            )
        self.width, self.height = width, height
        self._gl = _gl_context_class()(width, height)
        self._gl.make_current()
        self._scene = mujoco.MjvScene(model, maxgeom=1000)
        self._option = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._pixels = np.empty((height, width, 3), dtype=np.uint8)
        self._model = model

    def render(self, data: mujoco.MjData, camera_id: int) -> np.ndarray:
        self._gl.make_current()
        self._camera.fixedcamid = camera_id
        mujoco.mjv_updateScene(self._model, data, self._option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        mujoco.mjr_render(self._rect, self._scene, self._context)
        mujoco.mjr_readPixels(self._pixels, None, self._rect, self._context)
        return np.flipud(self._pixels).copy()  # OpenGL rows run bottom-up

    def close(self) -> None:
        if self._context is not None:
            self._gl.make_current()
            self._context.free()
            self._context = None
        if self._gl is not None:
            self._gl.free()
            self._gl = None
