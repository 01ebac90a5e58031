"""Procedural surveillance-camera scenes for training and evaluating edgecap's captioner.

No pretrained captioner can be downloaded where edgecap is built, so the project
trains its own small captioner on synthetic scenes.  This module is the
generator.  A scene has a background (street, parking lot or hallway), a time
of day (day or night) and zero to three objects (person, car, truck, bicycle,
dog), each with one of six colours and at most one object per horizontal slot
(left, centre or right third of the frame).  Everything is drawn with numpy
only (no OpenCV, PIL or torch), so rendering is cheap enough to pre-render tens
of thousands of training images.

Main entry points:

* :func:`random_spec` samples a :class:`SceneSpec` (the ground truth);
* :func:`render_spec` draws a spec, the ``seed`` controlling only nuisance
  variation (jitter, scale, clutter, lighting, sensor noise);
* :func:`render_scene` is ``render_spec(random_spec(seed), seed=seed)``;
* :meth:`SceneSpec.caption` writes the caption from a small fixed grammar,
  :func:`parse_caption` reads any caption variant (or a model's approximation
  of one) back, and :func:`attribute_scores` / :func:`attribute_accuracy` grade
  captions per attribute;
* :func:`render_clip` writes a video (several camera cuts plus objects entering
  and leaving) together with its ground-truth timeline.

Modules, one job each: :mod:`.spec` (vocabulary, specs, caption grammar),
:mod:`.painter` (drawing primitives), :mod:`.backgrounds`, :mod:`.sprites`
(objects), :mod:`.scene` (still images), :mod:`.clip` (videos) and
:mod:`.grading` (caption parser and grader).

Held-out seed rule: seeds ``>= HELD_OUT_SEED_START`` (10**9) are reserved for
held-out evaluation.  Training data must only use seeds below it; evaluation
scripts draw seeds from ``HELD_OUT_SEED_START`` upwards (see
:func:`is_held_out_seed`).  Every random choice is made with
``numpy.random.default_rng`` seeded from the caller's seed (never the global
RNG), so the same seed and overrides always give byte-identical images and
identical specs.
"""

from .clip import ClipSegment, pick_video_codec, render_clip
from .grading import ParsedCaption, ParsedObject, attribute_accuracy, attribute_scores, parse_caption
from .scene import render_scene, render_spec
from .spec import (ATTRIBUTES, BACKGROUNDS, COLOUR_RGB, COLOURS, HELD_OUT_SEED_START, KINDS, N_CAPTION_VARIANTS,
                   POSITIONS, TIMES_OF_DAY, SceneObject, SceneSpec, is_held_out_seed, random_spec)

__all__ = [
    "KINDS",
    "COLOURS",
    "POSITIONS",
    "BACKGROUNDS",
    "TIMES_OF_DAY",
    "HELD_OUT_SEED_START",
    "N_CAPTION_VARIANTS",
    "COLOUR_RGB",
    "SceneObject",
    "SceneSpec",
    "ClipSegment",
    "ParsedObject",
    "ParsedCaption",
    "is_held_out_seed",
    "random_spec",
    "render_spec",
    "render_scene",
    "render_clip",
    "pick_video_codec",
    "parse_caption",
    "attribute_scores",
    "attribute_accuracy",
    "ATTRIBUTES",
]
