"""Start, kill and restart Debian's mosquitto on a free loopback port, and a subscriber that records messages.

    with Mosquitto() as broker:            # 127.0.0.1:<free port>, generated config, persistence in a temp dir
        with Recorder(broker.port, "edgecap/#") as rec:
            ...
            rec.wait_for(lambda msgs: len(msgs) >= 3, timeout=60)
        broker.stop(); broker.start()      # SIGTERM (state saved), then the same port again; kill(): SIGKILL

``mqtt_skip_or_fail()`` skips a test when mosquitto or paho-mqtt is missing, or fails it when
EDGECAP_REQUIRE_MQTT=1 (CI: .ci/run installs mosquitto through .ci/mqtt-deps).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_ENV = "EDGECAP_REQUIRE_MQTT"
_LIVE: set["Mosquitto"] = set()


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)


def mqtt_skip_or_fail() -> None:
    """Skip (or fail, with EDGECAP_REQUIRE_MQTT=1) unless mosquitto and paho-mqtt 2.x are installed."""
    why = None
    if mosquitto_binary() is None:
        why = "mosquitto not installed (apt-get install mosquitto, or run .ci/mqtt-deps as root)"
    else:
        try:
            import paho.mqtt.client as mqtt
            if not hasattr(mqtt, "CallbackAPIVersion"):
                why = "paho-mqtt is older than 2.0 (pip install 'edgecap[mqtt]')"
        except ImportError:
            why = "paho-mqtt not installed (pip install 'edgecap[mqtt]')"
    if why is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {why}")
    pytest.skip(why)


def wait_until(check: Callable[[], bool], timeout: float = 120.0) -> bool:
    """Poll ``check`` (bounded) until it is true; True if it came true in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def edgecap_process(*args: str, **popen: object) -> subprocess.Popen:
    """``python -m edgecap ARGS`` on this checkout's code, as a separate process (to be killed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "export"),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "edgecap", *args], env=env, text=True, **popen)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A mosquitto process on 127.0.0.1 only; killed at interpreter exit at the latest."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="edgecap-mosquitto-"))
        self.config = self._dir / "mosquitto.conf"
        # persistence, saved every second and at stop() (SIGTERM): the sessions of subscribers that connected with
        # clean_session=False outlive a restart, even after kill(), so messages published before they reconnect
        # are queued for them
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                               f"persistence_location {self._dir}/\nautosave_interval 1\n"
                               f"max_queued_messages 100000\n"
                               # as root, mosquitto would switch to its own user, who cannot write this directory
                               + ("user root\n" if os.geteuid() == 0 else "") +
                               f"log_dest file {self._dir / 'mosquitto.log'}\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Mosquitto:
        binary = mosquitto_binary()
        assert binary, "mosquitto not installed"
        self.proc = subprocess.Popen([binary, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded: the port accepts once mosquitto listens
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}; log: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def saved(self) -> bool:
        """True once mosquitto has written its persistence file (the sessions so far survive a kill)."""
        return (self._dir / "mosquitto.db").exists()

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its state and exits (a broker taken down for maintenance)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        _LIVE.discard(self)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        _LIVE.discard(self)

    def log(self) -> str:
        path = self._dir / "mosquitto.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)


@atexit.register
def _kill_all() -> None:
    for broker in list(_LIVE):
        broker.kill()


class Recorder:
    """Subscribes to ``topic`` with QoS 1 and keeps every message (topic, payload text, retain) in order. Its
    session is persistent (clean_session=False): messages published while it is away (a broker restart) are
    queued for it by the broker."""

    _count = 0

    def __init__(self, port: int, topic: str = "#"):
        import paho.mqtt.client as mqtt

        Recorder._count += 1

        self.messages: list[tuple[str, str, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"rec-{os.getpid()}-{Recorder._count}",
                                   clean_session=False)
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 2)
        self._client.connect_async("127.0.0.1", port, keepalive=10)

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload.decode("utf-8", "replace"), bool(msg.retain)))
            self._cond.notify_all()

    def __enter__(self) -> Recorder:
        self._client.loop_start()
        assert self._subscribed.wait(30), "subscriber did not connect"
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def on(self, topic: str) -> list[str]:
        with self._cond:
            return [p for t, p, _ in self.messages if t == topic]

    def wait_for(self, done: Callable[[list[tuple[str, str, bool]]], bool], timeout: float = 60.0) -> bool:
        """Wait (bounded, woken by each message) until ``done(messages)``; True if it came true."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done(list(self.messages)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
            return True
