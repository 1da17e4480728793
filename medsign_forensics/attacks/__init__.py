"""The attack library: named, parametrised image transformations shared by training and evaluation.

Every attack has two forms that speak of the same transformation under the same name:

* :meth:`Attack.exact` works on a numpy image (float32, (H, W) in [0, 1]; ``grey`` also takes (H, W, 3)) with
  the real tools: Pillow's JPEG codec and resamplers, OpenCV's Gaussian blur, integer rounding. Evaluation
  uses it.
* :meth:`Attack.differentiable` works on a torch batch (B, C, H, W) and passes gradients, straight-through
  (``x + (f(x) - x).detach()``) where the real operation has none (JPEG, rounding). Training uses it.

Storing an image is an attack too: :mod:`.codec` holds the toolkit's one quantiser and its one JPEG round trip,
and every file writer, cache and baseline goes through them. That module needs only numpy and Pillow, and this
``__init__`` imports nothing, so that low layers (file output, the phantom renderer, DICOM) can use the codec
without loading torch. Names and parsing: :mod:`.library`; the attacks: :mod:`.photometric`,
:mod:`.geometric`, :mod:`.storage`, composed by :class:`.base.Compose`.
"""
