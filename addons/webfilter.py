"""aupguard as a mitmproxy script:

    mitmdump -s addons/webfilter.py --set aupguard_policy=config/policy.yaml --set aupguard_db=var/incidents.db

`aupguard run` loads this same file; see README.md for the options it adds.
"""

from aupguard.addon import AupGuard

addons = [AupGuard()]
