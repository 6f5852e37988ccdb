"""Init step of the amvad StatefulSet: write this pod's service config with its shard of the cameras.

Pod ``amvad-N`` (ordinal N from POD_NAME) of AMVAD_SHARDS replicas keeps camera i of CAMERAS when
``i % AMVAD_SHARDS == N``; the result goes to OUT as an `amvad serve --config` file.
Usage: POD_NAME=amvad-1 AMVAD_SHARDS=2 python shard.py CAMERAS OUT
"""

import os
import sys

import yaml


def main(cameras_path: str, out_path: str) -> None:
    pod = os.environ["POD_NAME"]
    ordinal_text = pod.rsplit("-", 1)[-1]
    if not ordinal_text.isdigit():
        sys.exit(f"POD_NAME={pod!r}: expected a StatefulSet pod name ending in -<ordinal>")
    ordinal, shards = int(ordinal_text), int(os.environ["AMVAD_SHARDS"])
    if not 0 <= ordinal < shards:
        sys.exit(f"pod ordinal {ordinal} is outside AMVAD_SHARDS={shards}: keep it equal to replicas")
    with open(cameras_path) as f:
        cameras = (yaml.safe_load(f) or {}).get("cameras") or []
    mine = [cam for i, cam in enumerate(cameras) if i % shards == ordinal]
    with open(out_path, "w") as f:
        yaml.safe_dump({"cameras": mine}, f)
    print(f"{pod}: {len(mine)} of {len(cameras)} cameras: {', '.join(c['id'] for c in mine)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
