"""The streaming runtime: sources -> change gate -> cross-camera batches -> caption backend -> scene events -> sinks.

`Runtime` runs cameras into event sinks; `stream` yields the events instead, with no storage.
"""

from .backend import CaptionBackend, EmbeddingBackend
from .config import (OPTION_KEYS, CameraSpec, RetentionConfig, SiteConfig, camera_spec, check_source,
                     default_camera_name, load_config, specs_for_sources)
from .gate import ChangeGate, GateConfig
from .pipeline import FRAME_AGE_WINDOW, RunOptions, RunStats, Runtime
from .scenes import OpenScene, SceneTracker

__all__ = ["FRAME_AGE_WINDOW", "OPTION_KEYS", "CameraSpec", "CaptionBackend", "ChangeGate", "EmbeddingBackend",
           "GateConfig", "OpenScene", "RetentionConfig", "RunOptions", "RunStats", "Runtime", "SceneTracker",
           "SiteConfig", "camera_spec", "check_source", "default_camera_name", "load_config",
           "specs_for_sources"]
