"""aupguard as a mitmproxy script:

    mitmdump -s addons/webfilter.py --set aupguard_policy=config/policy.yaml --set aupguard_db=var/incidents.db

`aupguard run` loads this same file; see README.md for the options it adds.
"""

from aupguard.proxy.feedback import FeedbackApp
from aupguard.proxy.wiring import addons as aupguard_addons

# aupguard's own first: they declare the options FeedbackApp reads, and decide every request before
# FeedbackApp answers the block page's forms on the reserved host.
addons = [*aupguard_addons(), FeedbackApp()]
