"""One engine for every command: `classify`, `explain` and the running proxy decide alike (issue 11.3)."""

from __future__ import annotations

import json

import requests

from conftest import aupguard, start_proxy, verdicts, wait_for_status, with_list_root, write_policy


def test_classify_explain_and_the_proxy_agree_with_an_exemption_active(tmp_path, origin):
    local_games = with_list_root(tmp_path / "lists")

    (tmp_path / "lists" / "games").mkdir(parents=True)
    (tmp_path / "lists" / "games" / "domains").write_text("127.0.0.1\n")  # the game is the loopback origin
    policy = write_policy(tmp_path / "policy.yaml", local_games)
    store = tmp_path / "var" / "exemptions.db"  # where the proxy (AUPGUARD_DATA=tmp/var) reads its exemptions
    game = origin.url("/game")
    # Identified as the proxy identifies the request: by its client address, at the same moment.
    asked = ("--config", str(policy), "--ip", "127.0.0.1", "--store", str(store))

    def actions() -> tuple[str, str]:
        (classified,) = verdicts(aupguard("classify", *asked, stdin=game + "\n").stdout)
        explained = json.loads(aupguard("explain", game, *asked, "--format", "json").stdout)
        return classified["action"], explained["action"]

    running = start_proxy(tmp_path, policy)
    try:
        assert requests.get(game, proxies=running.proxies, timeout=15).status_code == 403
        assert actions() == ("block", "block")
        aupguard("exempt", "add", "--config", str(policy), "--store", str(store), "--group", "pupils",
                 "--site", "127.0.0.1", "--until", "+1h", "--by", "Ms Khan", "--reason", "games lesson")  # fmt: skip
        wait_for_status(running, game, 200)  # the proxy honours it...
        assert actions() == ("allow", "allow")  # ...and so do classify and explain, from the same store
    finally:
        running.stop()
