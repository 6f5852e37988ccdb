"""Service settings (YAML + environment) and URL checks: credentials never leak into errors."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from amvad.service.config import CameraConfig, load_settings
from amvad.service.security import RedactingFilter, UrlError, redact, validate_url


def test_yaml_then_env_then_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("model: a.onnx\nport: 9000\nlimits: {max_upload_mb: 5, max_clip_seconds: 30}\n"
                   "cameras: [{id: gate, url: 'rtsp://u:pw@10.0.0.2/s'}]\n")
    monkeypatch.setenv("AMVAD_LIMITS__MAX_UPLOAD_MB", "7")
    monkeypatch.setenv("AMVAD_API_KEY", "key-from-env")
    s = load_settings(cfg, port=9100, host=None)
    assert (s.model, s.port, s.host) == ("a.onnx", 9100, "127.0.0.1")
    assert s.limits.max_upload_mb == 7 and s.limits.max_clip_seconds == 30  # nested merge keeps YAML
    assert s.api_key.get_secret_value() == "key-from-env" and "key-from-env" not in repr(s)
    assert s.cameras[0].url.get_secret_value() == "rtsp://u:pw@10.0.0.2/s" and "pw" not in repr(s.cameras)


def test_unknown_keys_and_bad_camera_urls_are_errors_without_the_password(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("cameras: [{id: gate, url: 'ftp://admin:hunter2@cam/x'}]\nportt: 1\n")
    with pytest.raises(ValueError) as err:
        load_settings(cfg)
    assert "portt" in str(err.value) and "scheme 'ftp' is not allowed" in str(err.value)
    assert "hunter2" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize("url, message", [
    ("", "non-empty"), ("rtsp://", "needs a host"), ("rtsp://h:notaport/x", "malformed"),
    ("javascript:alert(1)", "not allowed"), ("file://", "needs a path"), ("rtsp://a b/c", "whitespace")])
def test_validate_url_rejects(url, message):
    with pytest.raises(UrlError, match=message):
        validate_url(url)


def test_camera_ids_are_restricted():
    with pytest.raises(ValidationError):
        CameraConfig(id="../etc", url="rtsp://h/x")
    assert CameraConfig(id="cam-1.a", url="file:///v.mp4").id == "cam-1.a"


def test_redact_everywhere(caplog):
    text = "cannot open rtsp://admin:s3cret@10.0.0.1:554/live and 'http://u:p@x/y' ok rtsp://h/x"
    assert redact(text) == "cannot open rtsp://***@10.0.0.1:554/live and 'http://***@x/y' ok rtsp://h/x"
    log = logging.getLogger("amvad.test")
    log.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        log.info("camera url %s", "rtsp://admin:s3cret@h/x")
    assert "s3cret" not in caplog.text and "rtsp://***@h/x" in caplog.text


def test_loopback_detection_for_the_no_key_warning():
    from amvad.service.server import is_loopback
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
