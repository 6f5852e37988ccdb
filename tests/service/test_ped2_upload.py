"""Target: Ped2 test clips uploaded as H.264 MP4 to a real server running the bundled model get one
score per decoded frame, and the causal scores over the clips holding both normal and anomalous
frames reach ROC AUC >= 0.90."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from amvad.training.data import find_clips, load_labels
from amvad.training.roc import roc_auc
from tests.support.servers import start_service, stop_process
from tests.support.synthetic import ped2_or_skip


def ped2_mp4(folder, out) -> int:
    import av
    files = sorted(folder.glob("*.jpg"))
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 360, 240, "yuv420p"
        for f in files:
            rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return len(files)


@pytest.mark.integration
@pytest.mark.slow
def test_ped2_uploads_reach_causal_auc_target(tmp_path):
    root = ped2_or_skip()
    clips = find_clips(root, "testing")
    lengths = [len(list(c.path.glob("*.jpg"))) for c in clips]
    labels = load_labels(root, "testing", clips, lengths)
    mixed = [(c, lab) for c, lab in zip(clips, labels) if 0 < lab.sum() < len(lab)]
    svc = start_service(tmp_path, "ped2", {"limits": {"max_upload_mb": 10, "max_clip_seconds": 60}})
    try:
        all_scores, all_labels = [], []
        for clip, lab in mixed:
            n = ped2_mp4(clip.path, tmp_path / f"{clip.name}.mp4")
            with open(tmp_path / f"{clip.name}.mp4", "rb") as fh:
                r = svc.http.post("/v1/clips", params={"wait": "true"},
                                  files={"file": (f"{clip.name}.mp4", fh, "video/mp4")})
            assert r.status_code == 200, r.text
            scores = r.json()["result"]["scores"]
            assert len(scores) == n  # one entry per decoded frame, warm-up frames are null
            warm = r.json()["result"]["warmup_frames"]
            assert all(s is None for s in scores[:warm]) and all(s is not None for s in scores[warm:])
            all_scores.append(np.array(scores[warm:], dtype=float))
            all_labels.append(lab[warm:])
        auc = roc_auc(np.concatenate(all_labels), np.concatenate(all_scores))
        print(f"causal AUC over {len(mixed)} mixed Ped2 clips uploaded as H.264: {auc:.4f}")
        assert auc >= 0.90
    finally:
        svc.http.close()
        stop_process(svc.proc)
