"""The streaming runtime: sources -> change gate -> cross-camera batches -> caption backend -> scene events -> sinks."""

from .config import CameraSpec, camera_from_values, load_cameras
from .gate import ChangeGate, GateConfig
from .pipeline import FRAME_AGE_WINDOW, RunOptions, RunStats, Runtime, default_camera_name
from .scenes import OpenScene, SceneTracker

__all__ = ["FRAME_AGE_WINDOW", "CameraSpec", "camera_from_values", "load_cameras", "ChangeGate", "GateConfig", "OpenScene", "RunOptions", "RunStats", "Runtime",
           "SceneTracker", "default_camera_name"]
