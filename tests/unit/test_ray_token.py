"""Where a study finds the token of a Ray cluster with token authentication, in Ray's own order:
RAY_AUTH_TOKEN, then the file RAY_AUTH_TOKEN_PATH names, then ~/.ray/auth_token. (Against a real
`ray start` cluster: tests/integration/test_cluster_token.py.)"""

from __future__ import annotations

from study import preflight


def test_the_token_is_taken_in_rays_order(tmp_path, monkeypatch):
    home = tmp_path / "home" / ".ray" / "auth_token"
    home.parent.mkdir(parents=True)
    named = tmp_path / "named_token"
    monkeypatch.setattr(preflight, "TOKEN_FILE", home)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert preflight.ray_token() == (None, "")
    home.write_text("from-home\n")
    assert preflight.ray_token() == ("from-home", str(home))
    named.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert preflight.ray_token() == ("from-path", str(named))
    monkeypatch.setenv("RAY_AUTH_TOKEN", " from-env ")
    assert preflight.ray_token() == ("from-env", "RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    assert preflight.ray_token() == ("from-home", str(home))  # a path that names no file is passed over
