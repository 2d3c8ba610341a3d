"""Take mitmproxy's idle default addons out of its event chain: a cheaper request, no feature lost.

mitmproxy hands every event of a request (requestheaders, request, responseheaders, response)
to every addon in its chain, one coroutine and context manager each, whether or not the
addon handles it: with mitmdump's ~37 addons that is a large share of the CPU a proxied
request costs (benchmarks/README.md, "Proxy overhead"). The addons below do nothing at all
unless one of their options is set; `prune_idle` removes those whose options all still have
mitmproxy's defaults when the proxy starts. Setting one later (a script changing options
at run time) would have no effect, so `options_of` lets the addon warn about it. Of the
addons that stay, most handle no flow event at all: `mitm_internals.HandlerTable` hands each
event only to the addons that handle it.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

# Addon name (as mitmproxy registers it) -> the options without which it does nothing.
IDLE_UNLESS_SET: dict[str, tuple[str, ...]] = {
    "anticache": ("anticache",),
    "anticomp": ("anticomp",),
    "blocklist": ("block_list",),
    "mapremote": ("map_remote",),
    "maplocal": ("map_local",),
    "modifybody": ("modify_body",),
    "modifyheaders": ("modify_headers",),
    "stickyauth": ("stickyauth",),
    "stickycookie": ("stickycookie",),
    "serverplayback": ("server_replay",),
    "save": ("save_stream_file",),
    "savehar": ("hardump",),
    "upstreamauth": ("upstream_auth",),
    # Strips Alt-Svc only for reverse proxies: idle while every mode is the regular one (checked below).
    "updatealtsvc": ("keep_alt_svc_header", "mode"),
    # Prints flows; with flow_detail 0 (aupguard's setting) it prints nothing.
    "dumper": ("flow_detail",),
    # DNS flows exist only in mitmproxy's dns/local/wireguard modes, and these handle nothing else
    # (dns_request, dns_response): idle while every mode is the regular one.
    "dnsresolver": ("mode",),
    "stripdnshttpsrecords": ("mode",),
    # Their only hook is `running` (they still get it: mitmproxy hands an event to the chain as it
    # was when the event began), and with no flow file to read or replay it does nothing.
    # Removing an addon leaves its commands registered (readfile.reading stays callable).
    "keepserving": ("keepserving", "rfile", "client_replay", "server_replay"),
    "readfilestdin": ("rfile", "readfile_filter"),
}


def prune_idle(master) -> list[str]:
    """Remove the idle addons from `master`'s chain; returns the names removed."""
    options = master.options
    removed = []
    for name, option_names in IDLE_UNLESS_SET.items():
        addon = master.addons.get(name)
        if addon is None or not all(_idle(options, option) for option in option_names):
            continue
        try:
            master.addons.remove(addon)  # runs its `done` hook, as mitmproxy does at shutdown
        except Exception:  # an addon changed in a later mitmproxy: it simply stays
            log.exception("aupguard: could not leave out the idle mitmproxy addon %s", name)
            continue
        removed.append(name)
    if removed:
        log.info("aupguard: idle mitmproxy addons left out of the event chain: %s", ", ".join(removed))
    return removed


def _idle(options, name: str) -> bool:
    if name not in options:
        return True
    if name == "mode":
        return all(spec.split(":", 1)[0].split("@", 1)[0] == "regular" for spec in options.mode)
    if name == "flow_detail":
        return options.flow_detail == 0
    return not options.has_changed(name)


def options_of(removed: list[str]) -> frozenset[str]:
    """The options that would need a removed addon: changing one at run time has no effect."""
    return frozenset(option for name in removed for option in IDLE_UNLESS_SET[name] if option != "mode")


def freeze_startup_objects() -> None:
    """Move everything built at start (policy, index metadata, compiled patterns, mitmproxy's own
    state) out of the garbage collector's sight: its full collections then walk only what
    requests allocate, instead of pausing the event loop over the whole heap (the latency tail)."""
    gc.collect()
    gc.freeze()
