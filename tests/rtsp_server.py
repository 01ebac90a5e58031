#!/usr/bin/python3
"""A small RTSP test server on loopback: GStreamer's gst-rtsp-server streaming a live H.264 test pattern.

Runs under the *system* Python (Debian's python3-gi, gir1.2-gst-rtsp-server-1.0 and the GStreamer plugins; see
.ci/rtsp-deps), not the project's venv, so the tests start it as a subprocess (tests/rtsp.py). One shared media per
path: every client sees the same live stream, as with a camera.

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --path /cam --user admin --password 'p@ss' --fps 10

Prints ``READY rtsp://127.0.0.1:PORT/PATH`` (never the password) on stdout once the socket listens, and exits on
SIGTERM or SIGINT. With --user, clients need Basic credentials; wrong ones get a real ``401 Unauthorized``.
Exit status 3: GStreamer or the RTSP server bindings are missing; 4: the port could not be bound.
"""

from __future__ import annotations

import argparse
import base64
import signal
import sys


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, required=True, help="TCP port (0 is refused: the caller must know it)")
    p.add_argument("--path", default="/cam", help="mount point, e.g. /cam (default)")
    p.add_argument("--user", default=None, help="require Basic auth with this user name")
    p.add_argument("--password", default=None, help="... and this password (plain text, not %%-encoded)")
    p.add_argument("--fps", type=int, default=10, help="frames per second (default 10)")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--gop", type=int, default=None, help="frames between key frames (default: fps / 2)")
    p.add_argument("--pattern", default="ball", help="videotestsrc pattern (default: ball, a moving object)")
    args = p.parse_args(argv)
    if args.port <= 0 or not args.path.startswith("/") or args.fps <= 0:
        p.error("--port must be > 0, --path must start with '/', --fps must be > 0")
    if (args.user is None) != (args.password is None):
        p.error("--user and --password go together")
    return args


def _launch_line(args: argparse.Namespace) -> str:
    gop = args.gop or max(1, args.fps // 2)
    return (f"( videotestsrc is-live=true pattern={args.pattern} "
            f"! video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1 "
            f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bframes=0 "
            f"! rtph264pay name=pay0 pt=96 config-interval=1 )")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as exc:
        print(f"rtsp_server: GStreamer RTSP bindings unavailable: {exc}", file=sys.stderr, flush=True)
        return 3
    Gst.init(None)

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(_launch_line(args))
    factory.set_shared(True)  # one encoder for all clients, like a camera
    factory.set_eos_shutdown(False)

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        basic = base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
        auth.add_basic(basic, token)
        server.set_auth(auth)
        # only the "viewer" role may see and play the stream; anonymous clients get 401
        factory.add_role_from_structure(Gst.Structure.new_from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))

    server.get_mount_points().add_factory(args.path, factory)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"rtsp_server: cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        return 4
    # periodically drop sessions whose clients vanished (killed readers), as a long-running camera would
    GLib.timeout_add_seconds(2, lambda: (server.get_session_pool().cleanup(), True)[1])
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, lambda *_: (loop.quit(), False)[1])
    print(f"READY rtsp://{args.host}:{server.get_bound_port()}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
