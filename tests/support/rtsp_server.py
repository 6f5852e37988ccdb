"""A looping H.264 RTSP test server (GStreamer's RTSP server), run with the system python that has gi:

    /usr/bin/python3 tests/service/rtsp_server.py --frames DIR --port 8554 [--fps 10]

serves ``rtsp://127.0.0.1:PORT/cam`` over TCP from DIR/%03d.jpg and prints READY once listening.
"""

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", required=True, help="folder with 000.jpg, 001.jpg, ...")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fps", type=int, default=10)
    args = p.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f'( multifilesrc location="{args.frames}/%03d.jpg" index=0 loop=true '
        f'caps="image/jpeg,framerate={args.fps}/1" ! jpegdec ! videoconvert ! video/x-raw,format=I420 ! '
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} ! "
        f"rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        sys.exit(1)
    print("READY", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
