"""cameras.toml: names, credentials from the environment, gate thresholds, and clear errors."""

from __future__ import annotations

import pytest

from edgecap.runtime.config import load_cameras
from edgecap.errors import InputError
from edgecap.sources import mask_url

GOOD = """
[defaults]
interval = 2.0
max_interval = 60

[[camera]]
name = "front"
url = "rtsp://10.0.0.5:554/stream1"
username_env = "CAM_USER"
password_env = "CAM_PASS"

[[camera]]
name = "yard"
url = "clips/yard.mp4"
interval = 0.5
changed_share = 0.02
embedding_distance = 0.05
"""


def test_cameras_with_env_credentials(tmp_path):
    p = tmp_path / "cameras.toml"
    p.write_text(GOOD)
    password = "p@ss:w/rd%"
    cams = load_cameras(p, env={"CAM_USER": "admin", "CAM_PASS": password})
    front, yard = cams
    assert front.name == "front" and front.interval_s == 2.0 and front.gate.max_interval_s == 60
    assert front.url.startswith("rtsp://admin:") and front.url.endswith("@10.0.0.5:554/stream1")
    assert password not in front.url  # percent-encoded in the URL ...
    assert "p%40ss" in front.url and password not in mask_url(front.url) and "***" in mask_url(front.url)
    assert yard.interval_s == 0.5 and yard.gate.changed_share == 0.02 and yard.gate.embedding_distance == 0.05


@pytest.mark.parametrize("text,env,fragment", [
    (GOOD, {"CAM_USER": "a"}, "CAM_PASS"),                                      # variable not set
    ('[[camera]]\nname="x"\nurl="rtsp://u:secret@h/s"\n', {}, "holds a password"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\ncolour="red"\n', {}, "unknown key"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\ninterval=0\n', {}, "interval must be > 0"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\ninterval="fast"\n', {}, "must be numbers"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\n[[camera]]\nname="x"\nurl="b.mp4"\n', {}, "duplicate camera"),
    ("[[camera]\n", {}, "not valid TOML"),
    ("[defaults]\ninterval=1\n", {}, "at least one [[camera]]"),
    ('[[camera]]\nurl="a.mp4"\n', {}, "needs string keys"),
])
def test_bad_configs_fail_with_one_line(tmp_path, text, env, fragment):
    p = tmp_path / "cameras.toml"
    p.write_text(text)
    with pytest.raises(InputError) as exc:
        load_cameras(p, env=env)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)
    assert "secret" not in str(exc.value)


def test_missing_config(tmp_path):
    with pytest.raises(InputError, match="camera config not found"):
        load_cameras(tmp_path / "nope.toml")
