"""A test-only mitmproxy script, loaded after aupguard's (`aupguard run --script`), that injects faults.

Requests whose path starts with /fault-classify make the classifier raise; /fault-page makes the
block page fail to render; /fault-writer makes queuing the incident fail; /fault-inspect makes the
circumvention inspection (after the list lookup) raise. Nothing here ships.
"""

from aupguard import blockpage, circumvention, classify, incidents

_matches = classify.Classifier.matches
_render = blockpage.render
_submit = incidents.IncidentWriter.submit
_inspect = circumvention.inspect_request


def matches(self, url):
    if url.path.startswith(("/fault-classify", "/fault-page", "/fault-writer")):
        raise RuntimeError("injected classifier fault")
    return _matches(self, url)


def render(**values):
    if "/fault-page" in values["url"]:
        raise RuntimeError("injected block page fault")
    return _render(**values)


def submit(self, incident):
    if "/fault-writer" in incident.url:
        raise RuntimeError("injected writer fault")
    return _submit(self, incident)


def inspect_request(url, *args):
    if url.path.startswith("/fault-inspect"):
        raise RuntimeError("injected inspection fault")
    return _inspect(url, *args)


classify.Classifier.matches = matches
circumvention.inspect_request = inspect_request
blockpage.render = render
incidents.IncidentWriter.submit = submit
