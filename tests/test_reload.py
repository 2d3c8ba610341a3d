"""A running proxy picks up policy changes by itself and on SIGHUP, and keeps serving the old policy on a broken one."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import requests

from conftest import start_proxy, with_list_root, write_htpasswd, write_policy


def eventually(check, timeout: float = 20.0, interval: float = 0.3):
    """Retry `check` until it returns a true value; the proxy polls its files every 2 s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def status(proxy, url: str, proxies: dict | None = None) -> int:
    return requests.get(url, proxies=proxies or proxy.proxies, timeout=15).status_code


def localhost_is_games(tmp_path: Path):
    """The local origin, listed as an online game: blocked for pupils, allowed for staff."""
    (tmp_path / "lists" / "games").mkdir(parents=True, exist_ok=True)
    (tmp_path / "lists" / "games" / "domains").write_text("localhost\n")

    edit = with_list_root(tmp_path / "lists")

    return edit


def test_policy_reloads_on_change_and_sighup_and_survives_a_broken_edit(tmp_path, origin):
    listed = localhost_is_games(tmp_path)

    def pupils_only(policy):
        listed(policy)
        del policy["groups"]["sixth_form"]  # so that "games" appears once, in the pupils' blocks

    path = write_policy(tmp_path / "policy.yaml", pupils_only)
    blocking = path.read_text()
    assert blocking.count("  - games\n") == 1
    # Same size, so only SIGHUP (not the poll, which also looks at the modification time) can notice it.
    lifted = blocking.replace("  - games\n", "  - drugs\n")
    assert len(lifted) == len(blocking)
    proxy = start_proxy(tmp_path, path)
    url = origin.url("/play", host="localhost")
    try:
        assert status(proxy, url) == 403

        before = os.stat(path)
        path.write_text(lifted)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        time.sleep(5)  # two polls
        assert status(proxy, url) == 403, "the poll must not have seen a change with the same size and time"
        proxy.process.send_signal(signal.SIGHUP)
        assert eventually(lambda: status(proxy, url) == 200), "SIGHUP did not reload the policy"

        path.write_text(blocking)  # an ordinary edit: noticed by the poll
        assert eventually(lambda: status(proxy, url) == 403), "the edited policy was not reloaded"

        broken = blocking.replace("  - games\n", "  - gamez\n")
        path.write_text(broken)
        line = broken[: broken.index("- gamez")].count("\n") + 1
        assert eventually(lambda: "unknown category 'gamez'" in proxy.log.read_text())
        log = proxy.log.read_text()
        assert f"{path}:{line}: groups." in log and "the previous policy stays in force" in log
        assert status(proxy, url) == 403  # still serving, with the last good policy

        path.write_text(lifted)  # and a fixed file is taken up again
        assert eventually(lambda: status(proxy, url) == 200)
    finally:
        proxy.stop()


def test_groups_from_the_mis_export_through_proxy_login(tmp_path, origin):
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"sam.smith": "correct horse", "ms.teacher": "battery staple"})
    export = tmp_path / "mis.csv"
    export.write_text("Login,Filter group\nsam.smith,pupils\nMS.Teacher,staff\n")
    listed = localhost_is_games(tmp_path)

    def with_export(policy):
        listed(policy)
        policy["identity"]["user_files"] = [
            {"path": str(export), "user_column": "Login", "group_column": "Filter group"}
        ]

    proxy = start_proxy(
        tmp_path, write_policy(tmp_path / "policy.yaml", with_export), extra=("--proxyauth", f"@{htpasswd}")
    )
    url = origin.url("/play", host="localhost")

    def as_user(user: str, password: str) -> dict:
        return {"http": f"http://{user}:{password.replace(' ', '%20')}@127.0.0.1:{proxy.port}"}

    try:
        assert status(proxy, url, as_user("ms.teacher", "battery staple")) == 200  # staff by the export
        assert status(proxy, url, as_user("sam.smith", "correct horse")) == 403  # pupils by the export
        # Sam moves to the sixth form... the export is watched like the policy file.
        export.write_text("Login,Filter group\nsam.smith,staff\nMS.Teacher,staff\n")
        assert eventually(lambda: status(proxy, url, as_user("sam.smith", "correct horse")) == 200)
        export.write_text("Login,Filter group\nsam.smith,Year 12\n")  # a group the policy lacks: kept as it was
        assert eventually(lambda: "unknown group 'Year 12'" in proxy.log.read_text())
        assert f"{export}:2: unknown group" in proxy.log.read_text()
        assert status(proxy, url, as_user("sam.smith", "correct horse")) == 200
    finally:
        proxy.stop()
