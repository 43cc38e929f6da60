"""A self-contained HTML page that plays a 360 video and lets a person look around by dragging.

The page has no external scripts and no network access: the MP4 is embedded as a base64 data URI
and a plain 2D canvas renders the perspective view (no WebGL, so it works everywhere, headless
browsers included). Each output pixel blends its 4 nearest ERP pixels, found in a table that is
rebuilt only when the view changes, so a frame costs one `getImageData` and one gather.

Angles follow the project's conventions (docs: viewpoint-map.md §1-2): yaw turns right, pitch looks
up, the ERP centre column is the front. The initial view can be set in the URL:
`viewer.html#yaw=90&pitch=10&fov=75`.
"""

from __future__ import annotations

import base64
import html
import os
import re

import cv2
import numpy as np

from viewpoint_jax.common.fileio import atomic_write_text

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  html, body { margin: 0; height: 100%; background: #000; overflow: hidden; }
  #view { width: 100%; height: 100%; display: block; cursor: grab; touch-action: none; }
  #view.dragging { cursor: grabbing; }
  #hud { position: fixed; left: 10px; bottom: 8px; color: #ddd; font: 12px sans-serif;
         text-shadow: 0 0 3px #000; user-select: none; pointer-events: none; }
</style>
</head>
<body>
<canvas id="view"></canvas>
<div id="hud">__TITLE__ &middot; drag to look around &middot; wheel to zoom &middot;
space to pause <span id="angles"></span></div>
<video id="pano" muted loop playsinline autoplay preload="auto" style="display:none"
       src="data:video/mp4;base64,__VIDEO__"></video>
<img id="poster" alt="" style="display:none" src="data:image/jpeg;base64,__POSTER__">
<script>
(() => {
  "use strict";
  const MAX_RENDER_WIDTH = 960;  // render below screen size; CSS scales the canvas up
  const video = document.getElementById("pano");
  const poster = document.getElementById("poster");  // first frame, shown until the video plays
  const canvas = document.getElementById("view");
  const context = canvas.getContext("2d");
  const source = document.createElement("canvas");
  const sourceContext = source.getContext("2d", { willReadFrequently: true });
  const angles = document.getElementById("angles");
  const view = { yaw: 0, pitch: 0, fov: 90 };
  for (const part of location.hash.slice(1).split("&")) {
    const [key, value] = part.split("=");
    if (key in view && isFinite(parseFloat(value))) view[key] = parseFloat(value);
  }
  let lookup = null;   // per view pixel: its 4 ERP source pixels and bilinear weights
  let image = null;    // ImageData of the view

  function clampView() {
    view.pitch = Math.max(-89.9, Math.min(89.9, view.pitch));
    view.fov = Math.max(20, Math.min(130, view.fov));
    view.yaw = ((view.yaw + 180) % 360 + 360) % 360 - 180;
    lookup = null;
  }

  function resize() {
    const scale = Math.min(1, MAX_RENDER_WIDTH / Math.max(1, innerWidth));
    canvas.width = Math.max(1, Math.round(innerWidth * scale));
    canvas.height = Math.max(1, Math.round(innerHeight * scale));
    image = context.createImageData(canvas.width, canvas.height);
    lookup = null;
  }

  // Pinhole camera (fov is horizontal): pixel (i, j) looks along
  // f forward + (j + 0.5 - w/2) right + (h/2 - i - 0.5) up; lon = atan2(x, z), lat = asin(y).
  // Each view pixel blends 4 ERP pixels (bilinear; columns wrap, rows clamp).
  function buildLookup(erpWidth, erpHeight) {
    const w = canvas.width, h = canvas.height, rad = Math.PI / 180;
    const psi = view.yaw * rad, phi = view.pitch * rad;
    const f = (w / 2) / Math.tan(view.fov * rad / 2);
    const cy = Math.cos(psi), sy = Math.sin(psi), cp = Math.cos(phi), sp = Math.sin(phi);
    const fx = cp * sy, fy = sp, fz = cp * cy;     // forward
    const rx = cy, rz = -sy;                       // right (horizontal)
    const ux = -sp * sy, uy = cp, uz = -sp * cy;   // up
    lookup = { top: new Int32Array(w * h), bottom: new Int32Array(w * h),
               left: new Int32Array(w * h), right: new Int32Array(w * h),
               wx: new Float32Array(w * h), wy: new Float32Array(w * h) };
    for (let i = 0; i < h; i++) {
      const b = h / 2 - i - 0.5;
      for (let j = 0; j < w; j++) {
        const a = j + 0.5 - w / 2, k = i * w + j;
        const x = f * fx + a * rx + b * ux, y = f * fy + b * uy, z = f * fz + a * rz + b * uz;
        const lon = Math.atan2(x, z), lat = Math.atan2(y, Math.hypot(x, z));
        const col = (lon / (2 * Math.PI) + 0.5) * erpWidth - 0.5;   // pixel centres
        const row = (0.5 - lat / Math.PI) * erpHeight - 0.5;
        const c0 = Math.floor(col), r0 = Math.floor(row);
        lookup.wx[k] = col - c0;
        lookup.wy[k] = row - r0;
        lookup.left[k] = ((c0 % erpWidth) + erpWidth) % erpWidth;
        lookup.right[k] = (((c0 + 1) % erpWidth) + erpWidth) % erpWidth;
        lookup.top[k] = Math.min(erpHeight - 1, Math.max(0, r0)) * erpWidth;
        lookup.bottom[k] = Math.min(erpHeight - 1, Math.max(0, r0 + 1)) * erpWidth;
      }
    }
    const deg = (v) => v.toFixed(0) + "°";
    angles.textContent = `(yaw ${deg(view.yaw)}, pitch ${deg(view.pitch)}, fov ${deg(view.fov)})`;
  }

  function draw() {
    const playing = video.readyState >= 2 && video.videoWidth > 0;
    const frame = playing ? video : (poster.complete && poster.naturalWidth > 0 ? poster : null);
    if (frame) {
      const W = playing ? video.videoWidth : poster.naturalWidth;
      const H = playing ? video.videoHeight : poster.naturalHeight;
      if (source.width !== W || source.height !== H) {
        source.width = W; source.height = H; lookup = null;
      }
      sourceContext.drawImage(frame, 0, 0, W, H);
      const erp = sourceContext.getImageData(0, 0, W, H).data;
      if (!lookup) buildLookup(W, H);
      const { top, bottom, left, right, wx, wy } = lookup;
      const out = image.data;
      for (let k = 0, o = 0; k < wx.length; k++, o += 4) {
        const p00 = (top[k] + left[k]) * 4, p01 = (top[k] + right[k]) * 4;
        const p10 = (bottom[k] + left[k]) * 4, p11 = (bottom[k] + right[k]) * 4;
        const ax = wx[k], ay = wy[k];
        for (let c = 0; c < 3; c++) {
          const upper = erp[p00 + c] + ax * (erp[p01 + c] - erp[p00 + c]);
          const lower = erp[p10 + c] + ax * (erp[p11 + c] - erp[p10 + c]);
          out[o + c] = upper + ay * (lower - upper);
        }
        out[o + 3] = 255;
      }
      context.putImageData(image, 0, 0);
      document.body.dataset.rendered = "true";
    }
    requestAnimationFrame(draw);
  }

  let drag = null;
  canvas.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, yaw: view.yaw, pitch: view.pitch };
    canvas.setPointerCapture(e.pointerId);
    canvas.classList.add("dragging");
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const degreesPerPixel = view.fov / canvas.clientWidth;  // grab the scene and move it
    view.yaw = drag.yaw - (e.clientX - drag.x) * degreesPerPixel;
    view.pitch = drag.pitch + (e.clientY - drag.y) * degreesPerPixel;
    clampView();
  });
  const endDrag = () => { drag = null; canvas.classList.remove("dragging"); };
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    view.fov *= Math.exp(e.deltaY * 0.001);
    clampView();
  }, { passive: false });
  addEventListener("keydown", (e) => {
    const keys = { ArrowLeft: [-5, 0], ArrowRight: [5, 0], ArrowUp: [0, 5], ArrowDown: [0, -5] };
    const step = keys[e.key];
    if (step) { view.yaw += step[0]; view.pitch += step[1]; clampView(); }
    if (e.key === " ") { video.paused ? video.play() : video.pause(); e.preventDefault(); }
  });
  addEventListener("resize", resize);
  clampView();
  resize();
  video.play().catch(() => {});  // muted autoplay is allowed; if refused, the poster shows
  requestAnimationFrame(draw);
})();
</script>
</body>
</html>
"""


def viewer_html(video_mp4: bytes, first_frame: np.ndarray, title: str = "360 video") -> str:
    """The page (a string) for an equirectangular MP4 given as bytes.

    `first_frame` (RGB uint8 `(H, W, 3)`) is embedded as a JPEG poster: the page shows it until
    the video can play, and keeps showing it where the browser cannot decode H.264.
    """
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(first_frame, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode the poster frame of shape {first_frame.shape}")
    fills = {
        "__TITLE__": html.escape(title),
        "__POSTER__": base64.b64encode(jpeg.tobytes()).decode("ascii"),
        "__VIDEO__": base64.b64encode(video_mp4).decode("ascii"),
    }
    # One pass over the template: a placeholder inside a fill (a title "__VIDEO__") stays text.
    return re.sub("|".join(fills), lambda match: fills[match.group(0)], _PAGE)


def write_viewer(
    path: str | os.PathLike, video_mp4: bytes, first_frame: np.ndarray, title: str = "360 video"
) -> None:
    """Writes the viewer page for an equirectangular MP4 (bytes) to `path`, atomically."""
    atomic_write_text(path, viewer_html(video_mp4, first_frame, title))
