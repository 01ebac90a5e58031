"""cameras.toml: names, credentials from the environment, every source and gate option per camera, command-line
defaults, retention, and clear errors."""

from __future__ import annotations

from datetime import timedelta

import pytest

from edgecap.errors import InputError
from edgecap.runtime import OPTION_KEYS, RetentionConfig, camera_spec, load_config
from edgecap.sources import SourceConfig, mask_url


def load_cameras(path, env=None, **kw):
    return load_config(path, env=env, **kw).cameras

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
    assert front.name == "front" and front.source.interval_s == 2.0 and front.gate.max_interval_s == 60
    assert front.url.startswith("rtsp://admin:") and front.url.endswith("@10.0.0.5:554/stream1")
    assert password not in front.url  # percent-encoded in the URL ...
    assert "p%40ss" in front.url and password not in mask_url(front.url) and "***" in mask_url(front.url)
    assert yard.source.interval_s == 0.5 and yard.gate.changed_share == 0.02 and yard.gate.embedding_distance == 0.05


@pytest.mark.parametrize("text,env,fragment", [
    (GOOD, {"CAM_USER": "a"}, "CAM_PASS"),                                      # variable not set
    ('[[camera]]\nname="x"\nurl="rtsp://u:secret@h/s"\n', {}, "holds a password"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\ncolour="red"\n', {}, "unknown key"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\ninterval=0\n', {}, "interval must be a positive number"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\ninterval="fast"\n', {}, "interval must be a number, got 'fast'"),
    # bug 6: a truthy string read as True, and unknown tables were ignored
    ('[[camera]]\nname="x"\nurl="a.mp4"\nrealtime="false"\n', {}, "realtime must be true or false"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\nrealtime=1\n', {}, "realtime must be true or false"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\n[alerts]\nx=1\n', {}, "unknown table(s) or key(s) alerts"),
    ('camera_interval = 2\n[[camera]]\nname="x"\nurl="a.mp4"\n', {}, "unknown table(s) or key(s) camera_interval"),
    ('[defaults]\nread_timout=3\n[[camera]]\nname="x"\nurl="a.mp4"\n', {}, "unknown key(s) read_timout"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\nqueue_size=0\n', {}, "queue_size must be an int >= 1"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\nqueue_size=2.5\n', {}, "queue_size must be an integer"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\nreconnect_min=9\nreconnect_max=3\n', {}, "must not exceed"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\nchanged_share=1.5\n', {}, "changed_share must be a number from 0 to 1"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\nread_timeout=inf\n', {}, "read_timeout must be a number"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\n[retention]\ndays=-1\n', {}, "days must be > 0"),
    ('[[camera]]\nname="x"\nurl="a.mp4"\n[retention]\nweeks=2\n', {}, "[retention] accepts days, max_gb"),
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


def test_every_source_and_gate_option_is_settable_per_camera(tmp_path):
    p = tmp_path / "cameras.toml"
    p.write_text('[defaults]\nread_timeout = 9\n\n[[camera]]\nname = "a"\nurl = "rtsp://h/s"\nopen_timeout = 7\n'
                 'reconnect_min = 0.5\nreconnect_max = 20\nauth_backoff = 90\nqueue_size = 4\nmax_reconnects = 3\n'
                 'realtime = true\ncell_delta = 12\nsettle_samples = 0\n\n[[camera]]\nname = "b"\nurl = "b.mp4"\n')
    a, b = load_cameras(p)
    assert (a.source.read_timeout_s, a.source.open_timeout_s, a.source.reconnect_min_s, a.source.reconnect_max_s,
            a.source.auth_backoff_s, a.source.queue_size, a.source.max_reconnects, a.source.realtime) == \
        (9.0, 7.0, 0.5, 20.0, 90.0, 4, 3, True)
    assert (a.gate.cell_delta, a.gate.settle_samples) == (12.0, 0)
    assert b.source.read_timeout_s == 9.0 and b.source == SourceConfig("b", "b.mp4", read_timeout_s=9.0)
    # every field of the records has a key: a new source option is settable without touching the loader
    assert {"interval", "read_timeout", "queue_size", "max_reconnects", "changed_share", "settle_samples"} <= \
        set(OPTION_KEYS)


def test_command_line_options_are_defaults_that_the_file_overrides(tmp_path):
    # --interval, --max-interval and --realtime used to be ignored for --config cameras
    p = tmp_path / "cameras.toml"
    p.write_text('[[camera]]\nname = "a"\nurl = "a.mp4"\n\n[[camera]]\nname = "b"\nurl = "b.mp4"\ninterval = 5\n')
    a, b = load_cameras(p, defaults={"interval": 2.0, "realtime": True, "max_interval": 12.0})
    assert (a.source.interval_s, a.source.realtime, a.gate.max_interval_s) == (2.0, True, 12.0)
    assert (b.source.interval_s, b.source.realtime) == (5.0, True)
    p.write_text('[defaults]\ninterval = 3\n[[camera]]\nname = "a"\nurl = "a.mp4"\n')
    assert load_cameras(p, defaults={"interval": 2.0})[0].source.interval_s == 3.0


def test_retention_from_the_file_overrides_the_command_line(tmp_path):
    p = tmp_path / "cameras.toml"
    p.write_text('[[camera]]\nname = "a"\nurl = "a.mp4"\n[retention]\nmax_gb = 0.5\n')
    keep = load_config(p, retention=RetentionConfig(older_than=timedelta(days=7))).retention
    assert keep.older_than == timedelta(days=7) and keep.max_bytes == 500_000_000 and keep.enabled
    p.write_text('[[camera]]\nname = "a"\nurl = "a.mp4"\n[retention]\ndays = 30\n')
    assert load_config(p, retention=RetentionConfig(older_than=timedelta(days=7))).retention.older_than == \
        timedelta(days=30)
    assert load_config(p).retention.max_bytes is None


def test_camera_spec_checks_types_with_one_line():
    with pytest.raises(InputError, match=r"^camera 'x': interval must be a number, got True$"):
        camera_spec("x", "a.mp4", {"interval": True})


def test_a_prompt_per_camera_overrides_the_command_line(tmp_path):
    p = tmp_path / "cameras.toml"
    p.write_text('[[camera]]\nname = "a"\nurl = "a.mp4"\nprompt = "<OD>"\n\n[[camera]]\nname = "b"\nurl = "b.mp4"\n')
    a, b = load_cameras(p, defaults={"prompt": "a photography of"})
    assert (a.prompt, b.prompt) == ("<OD>", "a photography of")
    p.write_text('[[camera]]\nname = "a"\nurl = "a.mp4"\nprompt = 3\n')
    with pytest.raises(InputError, match="prompt must be a string, got 3"):
        load_cameras(p)
