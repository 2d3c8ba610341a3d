"""A test-only mitmproxy script, loaded after aupguard's (`aupguard run --script`), that injects faults.

Requests whose path starts with /fault-classify make the classifier raise; /fault-page makes the
block page fail to render; /fault-writer makes queuing the incident fail; /fault-inspect makes the
circumvention inspection (after the list lookup) raise; /fault-hook, and a CONNECT to a host starting
"fault-hook.", make aupguard's own hook fail around the engine. Nothing here ships.
"""

from aupguard.core import circumvention, classify, engine
from aupguard.proxy import blockpage
from aupguard.store import incidents

_matches = classify.Classifier.matches
_render = blockpage.render
_submit = incidents.IncidentWriter.submit
_inspect = circumvention.inspect_request
_check_request = engine.Engine.check_request
_check_connect = engine.Engine.check_connect


def matches(self, url):
    if url.path.startswith(("/fault-classify", "/fault-page", "/fault-writer")):
        raise RuntimeError("injected classifier fault")
    return _matches(self, url)


def render(**values):
    if "/fault-page" in values["url"]:
        raise RuntimeError("injected block page fault")
    return _render(**values)


def submit(self, incident, *args):
    if "/fault-writer" in incident.url:
        raise RuntimeError("injected writer fault")
    return _submit(self, incident, *args)


def inspect_request(url, *args):
    if url.path.startswith("/fault-inspect"):
        raise RuntimeError("injected inspection fault")
    return _inspect(url, *args)


def check_request(self, scheme, names, port, path, *args, **kwargs):
    if path.startswith("/fault-hook"):
        raise RuntimeError("injected hook fault")
    return _check_request(self, scheme, names, port, path, *args, **kwargs)


def check_connect(self, host, *args, **kwargs):
    if host.startswith("fault-hook."):
        raise RuntimeError("injected CONNECT fault")
    return _check_connect(self, host, *args, **kwargs)


classify.Classifier.matches = matches
engine.Engine.check_request = check_request
engine.Engine.check_connect = check_connect
circumvention.inspect_request = inspect_request
blockpage.render = render
incidents.IncidentWriter.submit = submit
