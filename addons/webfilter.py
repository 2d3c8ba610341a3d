"""aupguard as a mitmproxy script:

    mitmdump -s addons/webfilter.py --set aupguard_policy=config/policy.yaml --set aupguard_db=var/incidents.db

`aupguard run` loads this same file; see README.md for the options it adds.
"""

from aupguard.proxy.addon import AupGuard
from aupguard.proxy.feedback import FeedbackApp

# AupGuard first: it declares the options FeedbackApp reads, and decides every request before
# FeedbackApp answers the block page's forms on the reserved host.
addons = [AupGuard(), FeedbackApp()]
