"""`lit download` and `lit models` with a registry file of one's own."""

import hashlib
import json


def test_download_model_from_a_registry_file(tmp_path, ckpt, cli):
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    reg = tmp_path / "models.json"
    reg.write_text(json.dumps([{"name": "tiny-cli", "url": ckpt.as_uri(), "filename": "tiny.pt", "sha256": digest}]))
    env = {"LIT_REGISTRY": str(reg), "LIT_CACHE": str(tmp_path / "cache")}
    proc = cli("download", "tiny-cli", "--quiet", env=env)
    assert proc.stdout.strip().endswith("tiny.pt") and (tmp_path / "cache" / "tiny.pt").is_file()
    assert "tiny-cli" in cli("models", env=env).stdout
    bad = cli("download", "no-such-thing", ok=False, env=env)
    assert bad.returncode == 2 and "unknown name" in bad.stderr
