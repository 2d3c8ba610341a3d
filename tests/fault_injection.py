"""A test-only mitmproxy script, loaded after aupguard's (`aupguard run --script`), that injects faults.

Requests whose path starts with /fault-classify make the classifier raise; /fault-page makes the
block page fail to render; /fault-writer makes queuing the incident fail. Nothing here ships.
"""

from aupguard import blockpage, classify, incidents

_matches = classify.Classifier.matches
_render = blockpage.render
_submit = incidents.IncidentWriter.submit


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


classify.Classifier.matches = matches
blockpage.render = render
incidents.IncidentWriter.submit = submit
