"""Grad-CAM heatmaps (Selvaraju et al., ICCV 2017) on every Keras backend.

The model is cut in two at a spatial layer: ``features`` (input -> activations ``A``, shape
``(n, h, w, C)``) and ``head`` (``A`` -> class scores). The gradient of the class score with
respect to ``A``, averaged over ``h`` and ``w``, weighs the channels; the ReLU of the weighted
channel sum is the map, upsampled to the input size and scaled to [0, 1] per image.

The score is the class logit (before the softmax) when the model ends in a softmax ``Dense``
layer, else the log-probability. Only the ``_gradient_*`` functions use a backend's own API;
everything else is ``keras.ops`` and numpy.

A heatmap shows where the score is sensitive to the last convolutional features; it is not
proof of what the model relies on (Adebayo et al., NeurIPS 2018), and it is coarse (the
resolution of that layer, e.g. 5 x 5 for CompactNet at 160 px).
"""

from __future__ import annotations

import io

import keras
import numpy as np

from covidxray.data.lungviews import FULL
from covidxray.errors import CovidXrayError

#: Images per forward/backward pass.
HEATMAP_BATCH = 16
#: Layers that make a model "convolutional" for Grad-CAM.
_CONV_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D,
               keras.layers.Conv2DTranspose)
_SEPARATOR = "/"
#: The longest side, in pixels, of the film in a heatmap figure (:func:`heatmap_figure`); a smaller
#: film is shown at its own size.
FIGURE_SIDE = 512
#: The one line every heatmap figure carries.
NOTICE = "For research and teaching only: not a medical device, never for diagnosis."
COLORMAP = "jet"  # blue: cold, red: hot
HEAT_ALPHA = 0.4  # the colour's share in every pixel of the film it covers
BOX_COLOR = "#ff00ff"  # the lung crop's box (magenta: not a colour of the heatmap's)


# --- finding the layer ---------------------------------------------------------------------

def _walk(model, prefix=()):
    """``(path, layer)`` for every layer, nested models' layers in place of the nested model."""
    for layer in model.layers:
        path = (*prefix, layer.name)
        if isinstance(layer, keras.Model):
            yield from _walk(layer, path)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield path, layer


def _is_spatial(layer) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # a layer called more than once has no single output
        return False


def find_target_layer(model) -> str:
    """Name of the last layer with a 4-D (spatial) output after a convolution.

    A layer inside a nested model (the ``keras.applications`` backbones) is named by its path,
    e.g. ``"densenet121/relu"``; :func:`grad_cam` accepts either form.
    """
    candidate = None
    for path, layer in reversed(list(_walk(model))):
        if candidate is None and _is_spatial(layer):
            candidate = path
        if candidate is not None and isinstance(layer, _CONV_TYPES):
            return _SEPARATOR.join(candidate)
    raise CovidXrayError(
        f"model {model.name!r} has no convolutional layer for Grad-CAM; heatmaps need a model with "
        "Conv2D layers (every model in `covidxray models` has them), or run predict without --heatmaps"
    )


def _resolve(model, layer: str) -> list[str]:
    """The path of ``layer`` (a path, or a plain name searched in nested models too)."""
    if _SEPARATOR in layer:
        path = layer.split(_SEPARATOR)
        found = [p for p, _ in _walk(model) if list(p) == path]
    else:
        found = [list(p) for p, _ in _walk(model) if p[-1] == layer]
    if not found:
        raise CovidXrayError(f"model {model.name!r} has no layer {layer!r} for Grad-CAM; "
                             f"omit the layer to use {find_target_layer(model)!r}")
    return list(found[0])


# --- cutting the model in two --------------------------------------------------------------

def _split(model, path: list[str], end):
    """``(features, head)``: lists of models to apply in turn, cut at ``path`` inside ``model``.

    ``end`` is the tensor of ``model``'s graph where the head stops.
    """
    layer = model.get_layer(path[0])
    if len(path) == 1:
        return [keras.Model(model.inputs, layer.output)], [keras.Model(layer.output, end)]
    node = layer._inbound_nodes[0]  # the nested model's call in the outer graph
    before = keras.Model(model.inputs, node.input_tensors)
    after = keras.Model(node.output_tensors, end)
    features, head = _split(layer, path[1:], layer.outputs)
    return [before, *features], [*head, after]


def _scorer(model):
    """``(end, to_score)``: where the head stops, and how its output becomes class scores."""
    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax:
        def logits(x):
            z = keras.ops.matmul(x, last.kernel)
            return z + last.bias if last.use_bias else z
        return last.input, logits
    return model.outputs, lambda p: keras.ops.log(keras.ops.maximum(p, 1e-12))


def _chain(models, x):
    for part in models:
        x = part(x, training=False)  # preprocessing layers would augment with training=True
    return x


# --- gradients: the only backend-specific code ----------------------------------------------

def _gradient_tensorflow(score):
    import tensorflow as tf

    def gradient(activations, weights):
        activations = tf.convert_to_tensor(activations)
        with tf.GradientTape() as tape:
            tape.watch(activations)
            value = score(activations, weights)
        return tape.gradient(value, activations)
    return gradient


def _gradient_jax(score):
    import jax

    return jax.grad(score)


def _gradient_torch(score):
    import torch

    def gradient(activations, weights):
        activations = keras.ops.convert_to_tensor(activations).detach().requires_grad_(True)
        with torch.enable_grad():
            (result,) = torch.autograd.grad(score(activations, weights), activations)
        return result
    return gradient


def _gradient(score):
    """``(a, w) -> d score(a, w) / d a`` with the autodiff of the Keras backend in use."""
    backend = keras.backend.backend()
    gradient = {"tensorflow": _gradient_tensorflow, "jax": _gradient_jax, "torch": _gradient_torch}.get(backend)
    if gradient is None:
        raise CovidXrayError(f"Grad-CAM needs the tensorflow, jax or torch Keras backend, not {backend!r}")
    return gradient(score)


# --- Grad-CAM ------------------------------------------------------------------------------

def _input_batch(model, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == len(model.input_shape) - 1:
        images = images[..., None]
    if images.shape[1:] != tuple(model.input_shape[1:]):
        raise CovidXrayError(f"images of shape {images.shape[1:]} do not fit model {model.name!r}, "
                             f"which takes {tuple(model.input_shape[1:])}; resize them to the model's input size")
    return images.astype(np.float32)  # as predict_arrays: values in [0, 255]


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Scale each map to a maximum of 1; an all-zero (or non-finite) map stays zero."""
    maps = np.nan_to_num(np.maximum(maps, 0), nan=0.0, posinf=0.0)
    peak = maps.max(axis=(1, 2), keepdims=True)
    scaled = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
    return np.clip(scaled, 0, 1).astype(np.float32)


def grad_cam(model, images, class_indices=None, layer: str | None = None) -> np.ndarray:
    """Grad-CAM maps ``(n, H, W)`` float32 in [0, 1] at the model's input size.

    ``images``: ``(n, H, W, 1)`` (or ``(n, H, W)``) uint8 or float in [0, 255], as the model takes
    them. ``class_indices``: the class per image (an int for all); None means the predicted one.
    ``layer``: the layer to explain (default :func:`find_target_layer`).
    """
    images = _input_batch(model, images)
    n, height, width = images.shape[:3]
    if class_indices is not None:
        class_indices = np.broadcast_to(np.asarray(class_indices, dtype=int), (n,))
        classes = model.output_shape[-1]
        if n and (class_indices.min() < 0 or class_indices.max() >= classes):
            raise CovidXrayError(f"class indices must be in 0..{classes - 1}")
    path = _resolve(model, layer) if layer else find_target_layer(model).split(_SEPARATOR)
    end, to_score = _scorer(model)
    features, head = _split(model, path, end)

    def score(activations, one_hot):  # summed over the batch: images do not interact
        return keras.ops.sum(to_score(_chain(head, activations)) * one_hot)

    gradient = _gradient(score)
    maps = []
    for start in range(0, n, HEATMAP_BATCH):
        batch = keras.ops.convert_to_tensor(images[start:start + HEATMAP_BATCH])
        activations = keras.ops.stop_gradient(_chain(features, batch))
        if class_indices is None:
            chosen = keras.ops.argmax(to_score(_chain(head, activations)), axis=-1)
        else:
            chosen = keras.ops.convert_to_tensor(class_indices[start:start + HEATMAP_BATCH])
        gradients = gradient(activations, keras.ops.one_hot(chosen, model.output_shape[-1]))
        weights = keras.ops.mean(gradients, axis=(1, 2), keepdims=True)
        cam = keras.ops.relu(keras.ops.sum(weights * activations, axis=-1, keepdims=True))
        cam = keras.ops.image.resize(cam, (height, width), interpolation="bilinear")
        maps.append(keras.ops.convert_to_numpy(cam)[..., 0])
    if not maps:
        return np.zeros((0, height, width), dtype=np.float32)
    return _normalise(np.concatenate(maps).astype(np.float32))


# --- drawing ---------------------------------------------------------------------------------

def fit_side(image: np.ndarray, side: int = FIGURE_SIDE) -> np.ndarray:
    """A 2-D uint8 ``image`` resized (aspect kept) so that its longest side is at most ``side``; never enlarged."""
    from PIL import Image

    image = np.asarray(image)
    if max(image.shape) <= side:
        return image
    scale = side / max(image.shape)
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _grayscale(picture) -> np.ndarray:
    gray = np.squeeze(np.asarray(picture, dtype=np.float32))
    if gray.ndim != 2:
        raise CovidXrayError(f"a heatmap is drawn over a grayscale image (H, W), not shape {np.shape(picture)}")
    return gray


def draw_heatmap(axes, picture, heatmap, *, box=FULL, outline=None, crop: bool = False):
    """Draw one Grad-CAM heatmap on matplotlib ``axes``: the grayscale film ``picture`` (2-D, in
    [0, 255]), the ``heatmap`` (values in [0, 1]) blended over the part of it the model saw (``box``:
    fractions ``(x0, y0, x1, y1)`` of the film), the lungs' outline in white (``outline``: a bool mask
    in the heatmap's pixels) and, where ``crop``, the box drawn. Returns the heatmap's image, for a colour
    bar. Every heatmap covidxray draws goes through here: ``predict --heatmaps``, ``pred.png`` and the
    web page."""
    from matplotlib.patches import Rectangle

    picture = _grayscale(picture)
    height, width = picture.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    extent = (x0 * width - 0.5, x1 * width - 0.5, y1 * height - 0.5, y0 * height - 0.5)  # pixel edges, as imshow's
    axes.imshow(picture, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
    heat = axes.imshow(np.clip(np.nan_to_num(np.asarray(heatmap, np.float32)), 0, 1), cmap=COLORMAP, vmin=0, vmax=1,
                       alpha=HEAT_ALPHA, extent=extent, interpolation="bilinear")
    if outline is not None and np.asarray(outline).any():
        axes.contour(np.asarray(outline, np.float32), levels=[0.5], colors="white", linewidths=1.2, extent=extent,
                     origin="upper")
    if crop and tuple(box) != FULL:
        axes.add_patch(Rectangle((extent[0], extent[3]), extent[1] - extent[0], extent[2] - extent[3], fill=False,
                                 edgecolor=BOX_COLOR, linewidth=2, linestyle="--", label="the model's lung crop"))
    axes.set(xlim=(-0.5, width - 0.5), ylim=(height - 0.5, -0.5), xticks=[], yticks=[])
    return heat


def heat_colorbar(figure, heat, axes) -> None:
    """The heatmap's colour scale beside ``axes`` (one or several), labelled with what it means; its
    colours unblended (over the film they are mixed with its gray, :data:`HEAT_ALPHA`)."""
    from matplotlib.cm import ScalarMappable

    bar = figure.colorbar(ScalarMappable(heat.norm, heat.cmap), ax=axes, shrink=0.8, ticks=[0, 0.5, 1])
    bar.ax.set_yticklabels(["0 low", "0.5", "1 high"])
    bar.set_label("Grad-CAM: how much the class score\nrises with the last features (per image)", fontsize=8)


def heatmap_figure(picture, heatmap, *, label: str, probability: float, box=FULL, outline=None, crop: bool = False,
                   name: str | None = None, note: str | None = None):
    """A heatmap that stands on its own: the whole film (longest side :data:`FIGURE_SIDE` px at most,
    :func:`fit_side` it first), the heatmap over what the model saw (:func:`draw_heatmap`), the lung
    crop's box when the model crops (``crop``), a title with the predicted class and its probability
    (``name``: the file; ``note``: one more line, e.g. a flag), a colour bar and :data:`NOTICE`."""
    from matplotlib.figure import Figure

    height, width = _grayscale(picture).shape
    dpi = 100
    figure = Figure(figsize=(max(width / dpi, 3.2) + 1.6, max(height / dpi, 2.4) + 1.1), dpi=dpi, layout="constrained")
    axes = figure.subplots()
    heat = draw_heatmap(axes, picture, heatmap, box=box, outline=outline, crop=crop)
    title = f"predicted: {label} ({100 * probability:.1f}%)"
    if name:
        title = f"{name}\n{title}"
    if note:
        title += f"\n{note}"
    axes.set_title(title, fontsize=10)
    if crop and tuple(box) != FULL:
        axes.legend(loc="lower center", fontsize=7, framealpha=0.7)
    heat_colorbar(figure, heat, axes)
    figure.supxlabel(NOTICE, fontsize=7, color="#9a3b00")
    return figure


def figure_png(figure) -> bytes:
    """``figure`` as RGB PNG bytes, zlib level 1 (a third faster than ``savefig``'s RGBA at level 6,
    about as large)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
